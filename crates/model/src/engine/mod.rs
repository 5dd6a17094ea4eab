//! The inference engine: a bounded queue, a batcher thread, and one OS thread per model replica.
//!
//! libtorch calls block, so none of this runs on the async runtime. A request's frame (already
//! preprocessed) and questions become a [`Job`]; the batcher groups jobs that arrive while the
//! replicas are busy (up to `max_batch_frames`, waiting at most `max_wait` for more) and hands
//! each group to an idle replica, which encodes the frames in one batch and answers every
//! question. A full queue is refused at once ([`SubmitError::QueueFull`]); jobs whose client has
//! gone or whose deadline has passed are dropped before inference.

mod batcher;
pub mod health;
mod queue;
mod worker;

pub use worker::set_memory_release;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blipserve_api::metrics::Registry;
use prometheus::{Histogram, IntCounterVec, IntGauge};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::device::{Device, Slot};
use crate::model::{Answer, AnswerMode, LoadOptions, Pixels, Question};

/// What the engine reports to Prometheus.
#[derive(Clone)]
pub struct EngineMetrics {
    /// Frames waiting for a replica: the one count of the queue's depth.
    pub queue_depth: IntGauge,
    /// Frames per batch handed to a replica.
    pub batch_frames: Histogram,
    /// Work dropped before inference: `cancelled` (client gone), `expired` (deadline passed) or
    /// `superseded` (a newer frame of the same camera took its place).
    pub dropped: IntCounterVec,
    /// 1 while inference is failing (see [`health`]).
    pub inference_failing: IntGauge,
    /// Times inference was found failing.
    pub inference_failures: prometheus::IntCounter,
}

impl EngineMetrics {
    pub fn new(registry: &Registry) -> EngineMetrics {
        EngineMetrics {
            queue_depth: registry.gauge("queue_depth", "Frames waiting for a model replica"),
            batch_frames: registry.histogram(
                "batch_frames",
                "Frames per inference batch",
                Some(&[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]),
            ),
            dropped: registry.counter_vec("dropped_total", "Frames dropped before inference", &["reason"]),
            inference_failing: registry
                .gauge("inference_failing", "1 while batches keep failing, until a self-check passes"),
            inference_failures: registry
                .counter("inference_failing_total", "Times inference was found failing (failed batches in a row)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    /// Load options every replica shares; each replica's device comes from its slot.
    pub load: LoadOptions,
    /// Where each replica runs: one replica per slot.
    pub slots: Vec<Slot>,
    pub threads_per_replica: usize,
    pub max_batch_frames: usize,
    /// Most questions a frame may carry: with `max_batch_frames`, the warm-up's batch shape.
    pub max_questions: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
    /// Frames one camera may have waiting (a newer one supersedes the oldest); 0: no bound.
    pub per_camera_queue: usize,
    /// Failed batches in a row after which inference counts as failing.
    pub unhealthy_after_failed_batches: u32,
}

/// One frame and its questions, waiting for a replica.
pub struct Job {
    pub pixels: Pixels,
    pub questions: Vec<Question>,
    pub mode: AnswerMode,
    pub deadline: Instant,
    pub enqueued: Instant,
    /// The camera that sent the frame: its lane in the queue.
    pub camera: Option<Arc<str>>,
    pub reply: oneshot::Sender<Result<JobResult, EngineError>>,
}

#[derive(Debug)]
pub struct JobResult {
    pub answers: Vec<Answer>,
    pub queued: Duration,
    pub inference: Duration,
    pub batch: BatchOf,
}

/// The batch that answered a job: which replica ran it, its number there, and what it held.
#[derive(Debug, Clone, Copy)]
pub struct BatchOf {
    pub replica: usize,
    /// Counts the replica's batches from 1.
    pub number: u64,
    pub frames: usize,
    pub questions: usize,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the inference queue is full")]
    QueueFull,
    #[error("the engine is shutting down")]
    ShuttingDown,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the request's deadline passed before a model replica was free")]
    Expired,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("a newer frame from the same camera replaced this one in the queue")]
    Superseded,
}

/// Handle to the running engine. Dropping it closes the queue; replicas finish what they hold.
pub struct Engine {
    queue: Arc<queue::FairQueue>,
    loaded: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    replicas: usize,
    capacity: usize,
    metrics: EngineMetrics,
    health: Arc<health::InferenceHealth>,
    /// The cores CPU replicas' batches and frames being decoded take in turn; `None` on an
    /// accelerator, whose replicas leave the cores to decoding.
    cores: Option<Arc<Semaphore>>,
}

/// What a frame waiting for a core to be decoded on counts as, if it stops waiting.
struct WaitingForCore<'a> {
    dropped: &'a IntCounterVec,
    reason: Option<&'static str>,
}

impl Drop for WaitingForCore<'_> {
    fn drop(&mut self) {
        if let Some(reason) = self.reason {
            self.dropped.with_label_values(&[reason]).inc();
        }
    }
}

impl Engine {
    /// Starts the replicas (CPU replicas share one loaded model, others load their own; each
    /// warms up) and the batcher.
    /// Returns at once; `loaded` reports when every replica is ready, or the first load error.
    pub fn start(config: EngineConfig, metrics: EngineMetrics) -> (Engine, oneshot::Receiver<Result<(), String>>) {
        let queue = Arc::new(queue::FairQueue::new(config.queue_capacity, config.per_camera_queue));
        let loaded = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let (idle_tx, idle_rx) = mpsc::channel::<usize>();
        let replicas = config.slots.len();
        let load_report = worker::LoadReport::new(replicas, loaded.clone(), failed.clone(), loaded_tx);
        let health = Arc::new(health::InferenceHealth::new(
            config.unhealthy_after_failed_batches,
            metrics.inference_failing.clone(),
            metrics.inference_failures.clone(),
        ));
        let weights = Arc::new(worker::SharedWeights::default());
        // A CPU replica's batch runs on its intra-op threads, which meet at the end of every
        // operator. Where the replicas' threads take every core, a frame decoded at the same time
        // takes one of them from a batch and the batch's other threads wait for it at each of those
        // barriers, so decoding beside a batch cost more than decoding before it (2 cores, one
        // 2-thread int8 replica, two clients: served frames/s 4 % higher, median of 5 alternating
        // pairs of servers, once decodes waited; with one client a batch took 330–360 ms, with
        // two, the next frame decoded beside it, up to 440). So a batch takes a core per thread
        // and a decode takes one, in the order they asked (tokio's semaphore is fair: a batch
        // waiting for every core is not overtaken by later decodes); where the replicas leave
        // cores free, decodes run beside the batches as before. A batch forms once it has its
        // cores, and a decode gives its core back once the frame is queued, so the frames
        // decoded after a batch go into the next one together: with two clients, batches of
        // one frame had been the rule (the first frame decoded went alone, then the batch waited
        // for the second frame's core anyway), and a base-size bfloat16 frame takes 24 % more time
        // alone than in pairs on an AMX CPU (served frames/s 22–26 % higher with two
        // clients; int8 4–11 %, float32 4–10 %).
        let total = blipserve_api::roles::cores();
        let cores = config.slots.iter().any(|slot| slot.device == Device::Cpu).then(|| Arc::new(Semaphore::new(total)));
        // A core per intra-op thread; all of them if there are more threads than cores.
        let batch_cores = config.threads_per_replica.clamp(1, total) as u32;
        let workers: Vec<mpsc::Sender<worker::Batch>> = (0..replicas)
            .map(|id| {
                let shared = worker::Shared {
                    idle: idle_tx.clone(),
                    report: load_report.clone(),
                    health: health.clone(),
                    weights: weights.clone(),
                };
                worker::spawn(id, &config, shared, metrics.clone())
            })
            .collect();
        batcher::Batcher {
            config: config.clone(),
            jobs: queue.clone(),
            idle: idle_rx,
            workers,
            metrics: metrics.clone(),
            cores: cores.clone().map(|cores| (cores, batch_cores)),
        }
        .spawn();
        let engine =
            Engine { queue, loaded, failed, replicas, capacity: config.queue_capacity, metrics, health, cores };
        (engine, loaded_rx)
    }

    /// Queues a job, or refuses it at once when the queue is full. A job it supersedes (its
    /// camera's oldest waiting frame) is answered [`EngineError::Superseded`].
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.inc();
        match self.queue.push(job) {
            Ok(None) => Ok(()),
            Ok(Some(superseded)) => {
                self.metrics.queue_depth.dec();
                self.metrics.dropped.with_label_values(&["superseded"]).inc();
                let _ = superseded.reply.send(Err(EngineError::Superseded));
                Ok(())
            }
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(e)
            }
        }
    }

    /// Every replica has loaded its model and run a real forward pass.
    pub fn is_loaded(&self) -> bool {
        !self.failed.load(Ordering::SeqCst) && self.loaded.load(Ordering::SeqCst) == self.replicas
    }

    /// Batches keep failing: not ready until a self-check passes.
    pub fn inference_failing(&self) -> bool {
        self.health.is_failing()
    }

    /// Loaded, and inference works.
    pub fn is_ready(&self) -> bool {
        self.is_loaded() && !self.inference_failing()
    }

    /// A job submitted now would be refused (callers check before costly preprocessing).
    pub fn queue_is_full(&self) -> bool {
        self.queue_depth() >= self.capacity
    }

    pub fn queue_depth(&self) -> usize {
        self.metrics.queue_depth.get().max(0) as usize
    }

    /// On the CPU, a core no batch holds, to decode a frame on, taken in turn with the replicas'
    /// batches (see [`Engine::start`]) until `deadline`; `None` when the replicas run on an
    /// accelerator. A frame whose client leaves while it waits counts as dropped (cancelled), one
    /// whose deadline passes as dropped (expired), as in the queue.
    pub async fn core_for_decoding(&self, deadline: Instant) -> Result<Option<OwnedSemaphorePermit>, EngineError> {
        let Some(cores) = &self.cores else { return Ok(None) };
        let mut waiting = WaitingForCore { dropped: &self.metrics.dropped, reason: Some("cancelled") };
        let taken = tokio::time::timeout_at(deadline.into(), cores.clone().acquire_owned()).await;
        waiting.reason = taken.is_err().then_some("expired");
        // The semaphore is never closed.
        Ok(taken.map_err(|_| EngineError::Expired)?.ok())
    }
}

impl Drop for Engine {
    /// Closes the queue: the batcher hands out what is queued, then stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}
