//! Whether inference works, as the load balancer should see it: a replica whose batches keep
//! failing (a bad NeuronCore, a broken driver) fails fast, and least-outstanding-requests routing
//! would send it more traffic. After `threshold` failed batches in a row, across the replicas,
//! the engine reports itself unhealthy (`/ready` 503 `inference_failing`) until a replica's
//! self-check forward pass succeeds.

use std::sync::atomic::{AtomicU32, Ordering};

use prometheus::{IntCounter, IntGauge};

pub struct InferenceHealth {
    threshold: u32,
    failed_in_a_row: AtomicU32,
    /// 1 while inference is failing.
    failing: IntGauge,
    /// Times inference was found failing.
    episodes: IntCounter,
}

impl InferenceHealth {
    pub fn new(threshold: u32, failing: IntGauge, episodes: IntCounter) -> InferenceHealth {
        InferenceHealth { threshold: threshold.max(1), failed_in_a_row: AtomicU32::new(0), failing, episodes }
    }

    /// A batch (or a self-check) answered: inference works.
    pub fn succeeded(&self) {
        self.failed_in_a_row.store(0, Ordering::SeqCst);
        if self.failing.get() != 0 {
            self.failing.set(0);
            tracing::warn!("inference works again: ready");
        }
    }

    /// A batch failed; returns whether inference is now failing.
    pub fn failed(&self) -> bool {
        let n = self.failed_in_a_row.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        if n >= self.threshold && self.failing.get() == 0 {
            self.failing.set(1);
            self.episodes.inc();
            tracing::error!(failed_batches = n, "inference is failing: not ready until a self-check passes");
        }
        self.is_failing()
    }

    pub fn is_failing(&self) -> bool {
        self.failing.get() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_after_the_threshold_until_a_success() {
        let h = InferenceHealth::new(3, IntGauge::new("f", "f").unwrap(), IntCounter::new("e", "e").unwrap());
        assert!(!h.failed() && !h.failed());
        h.succeeded();
        assert!(!h.failed() && !h.failed(), "a success in between starts the count again");
        assert!(h.failed(), "three in a row");
        assert!(h.failed());
        assert_eq!(h.episodes.get(), 1, "one episode, however many failures it has");
        h.succeeded();
        assert!(!h.is_failing());
    }
}
