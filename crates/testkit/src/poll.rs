//! Bounded waiting: the tests wait for something to become true (a metric to reach a value, a
//! process to exit, a server to be ready) by polling with a time limit, never by sleeping a
//! fixed time and hoping; the caller asserts on the outcome.

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms for at most `limit`; whether it became true.
pub fn eventually(limit: Duration, check: impl FnMut() -> bool) -> bool {
    eventually_every(limit, Duration::from_millis(50), check)
}

/// Polls `check` every `interval` for at most `limit` (always at least once); whether it became
/// true.
pub fn eventually_every(limit: Duration, interval: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if check() {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_once_false_when_never() {
        assert!(eventually(Duration::ZERO, || true));
        let mut calls = 0;
        assert!(!eventually_every(Duration::from_millis(30), Duration::from_millis(5), || {
            calls += 1;
            false
        }));
        assert!(calls >= 2);
        let mut n = 0;
        assert!(eventually_every(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            n == 3
        }));
    }
}
