//! Compile slots: how many compiles the wrappers run at once, each under a lease.

use std::sync::{Condvar, Mutex};

use super::{lock, HEARTBEAT};

/// Compile slots: at most `max` wrappers compile at once.
pub(super) struct Slots {
    pub(super) max: usize,
    pub(super) used: Mutex<usize>,
    pub(super) freed: Condvar,
}

impl Slots {
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes a slot, calling `heartbeat` every [`HEARTBEAT`] while waiting (without holding
    /// the lock); `false` from it gives up (the wrapper is gone).
    pub(super) fn acquire(&self, mut heartbeat: impl FnMut() -> bool) -> bool {
        loop {
            {
                let used = lock(&self.used);
                let (mut used, _) = self
                    .freed
                    .wait_timeout_while(used, HEARTBEAT, |used| *used >= self.max)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *used < self.max {
                    *used += 1;
                    return true;
                }
            }
            if !heartbeat() {
                return false;
            }
        }
    }

    pub(super) fn release(&self) {
        let mut used = lock(&self.used);
        *used = used.saturating_sub(1);
        self.freed.notify_one();
    }

    pub(super) fn in_use(&self) -> usize {
        *lock(&self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn slots_bound_concurrency_and_give_up_when_the_caller_leaves() {
        let slots = Slots::new(1);
        assert!(slots.acquire(|| true));
        assert_eq!(slots.in_use(), 1);
        let mut beats = 0;
        assert!(!slots.acquire(|| {
            beats += 1;
            beats < 2
        }));
        assert_eq!(beats, 2);
        slots.release();
        assert!(slots.acquire(|| false));
    }
}
