//! A model replica: one OS thread that owns one loaded [`Model`] and answers batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{EngineConfig, EngineError, EngineMetrics, Job, JobResult};
use crate::model::{FrameQuestions, Model};

/// Where the first load failure, or "all loaded", is reported.
pub(super) type LoadedSender = oneshot::Sender<Result<(), String>>;

/// Tells the engine when every replica has loaded, or the first failure.
#[derive(Clone)]
pub(super) struct LoadReport {
    replicas: usize,
    loaded: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    done: Arc<Mutex<Option<LoadedSender>>>,
}

impl LoadReport {
    pub(super) fn new(replicas: usize, loaded: Arc<AtomicUsize>, failed: Arc<AtomicBool>, done: LoadedSender) -> Self {
        LoadReport { replicas, loaded, failed, done: Arc::new(Mutex::new(Some(done))) }
    }

    fn finish(&self, result: Result<(), String>) {
        let all = match &result {
            Ok(()) => self.loaded.fetch_add(1, Ordering::SeqCst) + 1 == self.replicas,
            Err(_) => {
                self.failed.store(true, Ordering::SeqCst);
                true
            }
        };
        if all {
            if let Some(tx) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(result);
            }
        }
    }
}

pub(super) fn spawn(
    id: usize,
    config: &EngineConfig,
    idle: mpsc::Sender<usize>,
    report: LoadReport,
    metrics: EngineMetrics,
) -> mpsc::Sender<Vec<Job>> {
    let (tx, rx) = mpsc::channel::<Vec<Job>>();
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("replica-{id}"))
        .spawn(move || {
            // Intra-op threads are per OS thread in libtorch's OpenMP pool.
            tch::set_num_threads(config.threads_per_replica.max(1) as i32);
            let loaded = catch_unwind(AssertUnwindSafe(|| Model::load(&config.model_dir, &config.load)));
            let model = match loaded {
                Ok(Ok(model)) => model,
                Ok(Err(e)) => {
                    tracing::error!(replica = id, error = %e, "model replica failed to load");
                    report.finish(Err(e.to_string()));
                    return;
                }
                Err(_) => {
                    report.finish(Err("loading the model panicked".into()));
                    return;
                }
            };
            tracing::info!(replica = id, "model replica ready");
            report.finish(Ok(()));
            if idle.send(id).is_err() {
                return;
            }
            while let Ok(batch) = rx.recv() {
                if !batch.is_empty() {
                    run_batch(&model, batch, &metrics);
                }
                if idle.send(id).is_err() {
                    return;
                }
            }
        })
        .expect("spawn a model replica thread");
    tx
}

fn run_batch(model: &Model, batch: Vec<Job>, metrics: &EngineMetrics) {
    let started = Instant::now();
    metrics.batch_frames.observe(batch.len() as f64);
    let mode = batch[0].mode;
    let frames: Vec<FrameQuestions> =
        batch.iter().map(|job| FrameQuestions { pixels: &job.pixels, questions: &job.questions }).collect();
    // A panic inside libtorch bindings must cost this batch, not the replica.
    let result = catch_unwind(AssertUnwindSafe(|| model.answer(&frames, mode)));
    let inference = started.elapsed();
    let batch_frames = batch.len();
    match result {
        Ok(Ok(answers)) => {
            for (job, answers) in batch.into_iter().zip(answers) {
                let queued = started.saturating_duration_since(job.enqueued);
                let _ = job.reply.send(Ok(JobResult { answers, queued, inference, batch_frames }));
            }
        }
        Ok(Err(e)) => fail(batch, e.to_string()),
        Err(_) => fail(batch, "the model replica panicked".into()),
    }
}

fn fail(batch: Vec<Job>, message: String) {
    tracing::error!(error = %message, frames = batch.len(), "inference failed");
    for job in batch {
        let _ = job.reply.send(Err(EngineError::Inference(message.clone())));
    }
}
