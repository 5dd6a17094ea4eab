//! What the request path records between two publications: counts and statistic sets, behind a
//! lock held for a few additions, so recording never waits on the network.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// SampleCount, Sum, Minimum and Maximum of some values: what CloudWatch calls a statistic set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatSet {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl StatSet {
    pub fn add(&mut self, value: f64) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
    }
}

/// One interval's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    pub overloaded: u64,
    pub latency_ms: StatSet,
    pub queue_depth: StatSet,
    /// Answers taken from a camera's stored answers instead of the model.
    pub reused_answers: u64,
}

/// The figures of the interval in progress.
#[derive(Debug, Default)]
pub struct Tally {
    current: Mutex<Snapshot>,
}

impl Tally {
    /// One detect request answered with `status` after `latency`.
    pub fn record(&self, status: u16, latency: Duration) {
        let mut s = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests += 1;
        if status >= 500 {
            s.errors += 1;
        }
        if status == 429 {
            s.overloaded += 1;
        }
        s.latency_ms.add(latency.as_secs_f64() * 1e3);
    }

    /// Answers of one frame taken from its camera's stored answers.
    pub fn record_reused(&self, answers: u64) {
        if answers > 0 {
            self.current.lock().unwrap_or_else(PoisonError::into_inner).reused_answers += answers;
        }
    }

    /// One sample of the queue's depth.
    pub fn sample_queue(&self, depth: i64) {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).queue_depth.add(depth.max(0) as f64);
    }

    /// Ends the interval: returns its figures and starts the next one at zero.
    pub fn take(&self) -> Snapshot {
        std::mem::take(&mut *self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_counted_once_each() {
        let tally = Tally::default();
        tally.record(200, Duration::from_millis(30));
        tally.record(429, Duration::from_millis(1));
        tally.record(503, Duration::from_millis(10));
        tally.sample_queue(3);
        let first = tally.take();
        assert_eq!((first.requests, first.errors, first.overloaded), (3, 1, 1));
        assert_eq!(first.latency_ms.count, 3);
        assert!((first.latency_ms.sum - 41.0).abs() < 1e-9);
        assert_eq!((first.latency_ms.min, first.latency_ms.max), (1.0, 30.0));
        assert_eq!(first.queue_depth, StatSet { count: 1, sum: 3.0, min: 3.0, max: 3.0 });
        assert_eq!(tally.take(), Snapshot::default(), "the next interval starts empty");
    }
}
