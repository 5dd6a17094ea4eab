//! A worker's requests and errors over the last minute, in 5-second buckets: what the admin API
//! reports as its error rate.

use std::sync::OnceLock;
use std::time::Instant;

/// The error-rate window: 12 buckets of 5 seconds.
const BUCKET_S: u64 = 5;
const BUCKETS: usize = 12;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn slot(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_secs() / BUCKET_S
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    requests: u64,
    errors: u64,
}

/// Requests and errors of the last minute.
#[derive(Debug, Default)]
pub(super) struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    pub(super) fn record(&mut self, now: Instant, error: bool) {
        let slot = slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, requests: 0, errors: 0 };
        }
        bucket.requests += 1;
        bucket.errors += u64::from(error);
    }

    pub(super) fn totals(&self, now: Instant) -> (u64, u64) {
        let slot = slot(now);
        self.buckets
            .iter()
            .filter(|b| b.slot <= slot && b.slot + BUCKETS as u64 > slot)
            .fold((0, 0), |(r, e), b| (r + b.requests, e + b.errors))
    }
}
