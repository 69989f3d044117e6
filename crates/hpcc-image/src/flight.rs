//! Single flight: a piece of blocking work done once per key however many threads ask for it
//! at once. The first caller does the work; the others wait for it and get its result, its
//! failure included (as text, since errors are not `Clone`). Once done, the key is forgotten,
//! so a later caller (after a failure, say) starts a new attempt.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Why a single-flight call failed.
#[derive(Debug)]
pub enum FlightError<E> {
    /// This caller did the work, and it failed.
    Own(E),
    /// Another caller did the work, and it failed with this message.
    Shared(String),
}

struct Flight<T> {
    result: Mutex<Option<Result<T, String>>>,
    done: Condvar,
}

/// Work in flight, by key.
pub struct SingleFlight<T> {
    flights: Mutex<HashMap<String, Arc<Flight<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> std::fmt::Debug for SingleFlight<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SingleFlight")
    }
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends a flight whatever way its work ends (a panic included), so that waiters never wait
/// forever.
struct Landing<'a, T> {
    flights: &'a Mutex<HashMap<String, Arc<Flight<T>>>>,
    key: &'a str,
    flight: Arc<Flight<T>>,
    result: Option<Result<T, String>>,
}

impl<T> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err("the work panicked".into()));
        lock(self.flights).remove(self.key);
        *lock(&self.flight.result) = Some(result);
        self.flight.done.notify_all();
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key` unless another thread is running it already, in which case
    /// this one waits for that result.
    pub fn run<E: Display>(
        &self,
        key: &str,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, FlightError<E>> {
        let (flight, leader) = {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(flight) => (Arc::clone(flight), false),
                None => {
                    let flight = Arc::new(Flight {
                        result: Mutex::new(None),
                        done: Condvar::new(),
                    });
                    flights.insert(key.to_owned(), Arc::clone(&flight));
                    (flight, true)
                }
            }
        };
        if !leader {
            let mut result = lock(&flight.result);
            while result.is_none() {
                result = flight
                    .done
                    .wait(result)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            return match result.as_ref() {
                Some(Ok(value)) => Ok(value.clone()),
                Some(Err(message)) => Err(FlightError::Shared(message.clone())),
                None => Err(FlightError::Shared("no result".into())),
            };
        }
        let mut landing = Landing {
            flights: &self.flights,
            key,
            flight,
            result: None,
        };
        let outcome = work();
        landing.result = Some(match &outcome {
            Ok(value) => Ok(value.clone()),
            Err(error) => Err(error.to_string()),
        });
        drop(landing);
        outcome.map_err(FlightError::Own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn race(
        flight: &Arc<SingleFlight<u32>>,
        runs: &Arc<AtomicUsize>,
        fail: bool,
    ) -> Vec<Result<u32, String>> {
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (flight, runs, barrier) =
                    (Arc::clone(flight), Arc::clone(runs), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    flight
                        .run("image", || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(300));
                            if fail {
                                Err("disk full")
                            } else {
                                Ok(7)
                            }
                        })
                        .map_err(|error| match error {
                            FlightError::Own(message) => format!("own: {message}"),
                            FlightError::Shared(message) => format!("shared: {message}"),
                        })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect()
    }

    #[test]
    fn concurrent_callers_share_one_run_and_its_failure() {
        let flight = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let results = race(&flight, &runs, false);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|result| *result == Ok(7)), "{results:?}");
        let results = race(&flight, &runs, true);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a new flight after the last one landed"
        );
        assert_eq!(
            results
                .iter()
                .filter(|result| **result == Err("own: disk full".into()))
                .count(),
            1
        );
        assert_eq!(
            results
                .iter()
                .filter(|result| **result == Err("shared: disk full".into()))
                .count(),
            5
        );
        // A later caller retries.
        assert_eq!(flight.run("image", || Ok::<_, String>(8)).ok(), Some(8));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_panicking_leader_releases_its_waiters() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let leader = {
            let flight = Arc::clone(&flight);
            std::thread::spawn(move || {
                flight.run("k", || -> Result<u32, String> {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("boom")
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let waited = flight.run("k", || Ok::<_, String>(1));
        assert!(leader.join().is_err());
        // Either it waited for the panicking flight, or ran its own after it.
        assert!(matches!(waited, Err(FlightError::Shared(_)) | Ok(1)));
    }
}
