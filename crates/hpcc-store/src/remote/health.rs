//! [`Health`]: whether a store is in its cooldown after a failure.
//!
//! A store that timed out once will most likely time out for the next compile too; asking it
//! again would add its deadline to every lookup of a build. So a failure takes it out of
//! service for a cooldown, after which the next call tries it again (and a success keeps it
//! in). The clock is passed in, so tests need not sleep.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A store's state: up, or down until some instant.
#[derive(Debug)]
pub struct Health {
    cooldown: Duration,
    down_until: Mutex<Option<Instant>>,
}

impl Health {
    /// Up, with `cooldown` after each failure.
    pub fn new(cooldown: Duration) -> Health {
        Health {
            cooldown,
            down_until: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `None` if the store may be asked at `now`, else the time left in its cooldown.
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        let mut down_until = self.lock();
        match *down_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                *down_until = None;
                None
            }
            None => None,
        }
    }

    /// Records a failure at `now`: down for the cooldown.
    pub fn failed(&self, now: Instant) {
        *self.lock() = Some(now + self.cooldown);
    }

    /// Records a success: up.
    pub fn succeeded(&self) {
        *self.lock() = None;
    }
}
