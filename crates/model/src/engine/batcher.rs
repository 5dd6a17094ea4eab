//! The batcher thread: waits for an idle replica and a first job, on the CPU for the cores the
//! batch will run on, then gathers the jobs that are waiting (or arrive within `max_wait`) into
//! one batch of at most `max_batch_frames` frames, all in the same answer mode, taken from the
//! queue's camera lanes in turn.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::queue::{FairQueue, Pop};
use super::worker::Batch;
use super::{EngineConfig, EngineError, EngineMetrics, Job};

/// What the batcher thread owns.
pub(super) struct Batcher {
    pub config: EngineConfig,
    pub jobs: Arc<FairQueue>,
    pub idle: mpsc::Receiver<usize>,
    pub workers: Vec<mpsc::Sender<Batch>>,
    pub metrics: EngineMetrics,
    /// On the CPU: the cores batches and frame decodes take in turn, and how many a batch takes.
    pub cores: Option<(Arc<Semaphore>, u32)>,
}

impl Batcher {
    pub(super) fn spawn(self) {
        std::thread::Builder::new().name("batcher".into()).spawn(move || self.run()).expect("spawn the batcher thread");
    }

    fn run(self) {
        let Batcher { config, jobs, idle, workers, metrics, cores } = self;
        let mut take_cores = cores_taker(cores);
        let take = |job: Job| {
            metrics.queue_depth.dec();
            job
        };
        // A job of another answer mode than the batch being built waits for the next batch.
        let mut carried: Option<Job> = None;
        loop {
            let Ok(worker) = idle.recv() else { return };
            let first = match carried.take() {
                Some(job) => job,
                None => match jobs.pop(None) {
                    Pop::Job(job) => take(job),
                    Pop::Empty | Pop::Closed => return, // queue closed: shutting down
                },
            };
            // A batch forms once its cores are free: the frames being decoded meanwhile (each on
            // a core, queued before the core is given back) join it.
            let cores = take_cores();
            let mode = first.mode;
            let mut batch = vec![first];
            let until = Instant::now() + config.max_wait;
            while batch.len() < config.max_batch_frames && carried.is_none() {
                // Returns at once when a job is already waiting.
                match jobs.pop(Some(until)) {
                    Pop::Job(job) if job.mode == mode => batch.push(take(job)),
                    Pop::Job(job) => carried = Some(take(job)),
                    Pop::Empty | Pop::Closed => break,
                }
            }
            let now = Instant::now();
            let (live, dropped): (Vec<Job>, Vec<Job>) =
                batch.into_iter().partition(|job| !job.reply.is_closed() && job.deadline > now);
            for job in dropped {
                if job.reply.is_closed() {
                    metrics.dropped.with_label_values(&["cancelled"]).inc();
                } else {
                    metrics.dropped.with_label_values(&["expired"]).inc();
                    let _ = job.reply.send(Err(EngineError::Expired));
                }
            }
            // An empty batch just hands the replica back to the idle pool.
            if workers[worker].send(Batch { jobs: live, cores }).is_err() {
                tracing::error!(replica = worker, "model replica has stopped");
            }
        }
    }
}

/// Waits for a batch's cores, in turn with the frames being decoded and the other replicas'
/// batches (tokio's semaphore is fair: a batch waiting for every core is not overtaken by later
/// decodes); nothing to wait for off the CPU.
fn cores_taker(cores: Option<(Arc<Semaphore>, u32)>) -> impl FnMut() -> Option<OwnedSemaphorePermit> {
    let waiter = cores.as_ref().and_then(|_| tokio::runtime::Builder::new_current_thread().build().ok());
    move || {
        let (cores, count) = cores.as_ref()?;
        // The semaphore is never closed.
        waiter.as_ref()?.block_on(cores.clone().acquire_many_owned(*count)).ok()
    }
}
