//! A model replica: one OS thread that holds a loaded [`Model`] and answers batches. CPU replicas
//! share one copy of the model ([`SharedWeights`]); a GPU or NeuronCore replica loads its own.
//! While inference is failing ([`super::health`]) a replica whose batch failed stays out of the
//! idle pool and recovers: a self-check forward pass with back-off, and after a few failed checks
//! a reload of its model (its own copy from then on), until inference works again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::health::InferenceHealth;
use super::{BatchOf, EngineConfig, EngineError, EngineMetrics, Job, JobResult};
use crate::device::Device;
use crate::model::{FrameQuestions, LoadError, Model};

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

/// What every replica shares with the engine.
pub(super) struct Shared {
    pub idle: mpsc::Sender<usize>,
    pub report: LoadReport,
    pub health: Arc<InferenceHealth>,
    pub weights: Arc<SharedWeights>,
}

/// A batch for a replica: its jobs and, on the CPU, the cores it runs on (held until it is
/// answered).
pub(super) struct Batch {
    pub jobs: Vec<Job>,
    pub cores: Option<OwnedSemaphorePermit>,
}

/// The one model every CPU replica runs. A TorchScript module's weights are read-only and
/// libtorch runs a module from several threads at once, so each CPU replica adds its threads
/// and activations, not another copy of the weights. The first replica to start loads it; the
/// others wait for it; they warm up in turn, so that their largest batches' activations are not
/// all held at once.
#[derive(Default)]
pub(super) struct SharedWeights {
    model: Mutex<Option<Arc<Model>>>,
    warming: Mutex<()>,
}

impl SharedWeights {
    /// Held while a replica warms up.
    fn warm_up_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.warming.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_or_load(&self, load: impl FnOnce() -> Result<Model, LoadError>) -> Result<Arc<Model>, LoadError> {
        // A replica that panicked while loading leaves nothing behind: the next one loads.
        let mut loaded = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(model) = loaded.as_ref() {
            return Ok(model.clone());
        }
        let model = Arc::new(load()?);
        *loaded = Some(model.clone());
        Ok(model)
    }
}

/// The first pause between self-checks of a failing replica, doubling to the last.
const FIRST_RECHECK: Duration = Duration::from_millis(500);
const LAST_RECHECK: Duration = Duration::from_secs(30);
/// Self-checks that fail in a row before the replica reloads its model.
const RELOAD_AFTER: u32 = 3;
/// A replica idle this long hands the memory its batches freed back to the OS.
const TRIM_WHEN_IDLE: Duration = Duration::from_secs(2);

/// How the process's allocator hands free pages back to the OS, when the binary chose one
/// ([`set_memory_release`]); glibc's `malloc_trim` otherwise.
static RELEASE_FREE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Sets how free heap pages go back to the OS: the binary's allocator knows (src/main.rs: jemalloc's
/// purge). The first call wins; call it before starting the engine.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_FREE_MEMORY.set(release);
}

/// Returns the heap pages libtorch's activations freed to the OS. Allocators keep freed memory
/// (glibc in per-thread arenas, jemalloc as dirty pages until they decay), so each replica would
/// otherwise hold on to its largest batch's activations (the warm-up's, at the largest batch).
/// Called after the warm-up and when a replica has been idle, never between busy batches, which
/// would fault the pages back in.
fn release_free_memory() {
    if let Some(release) = RELEASE_FREE_MEMORY.get() {
        return release();
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the heap to the OS; no allocation in use is
    // touched, and it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn spawn(id: usize, config: &EngineConfig, shared: Shared, metrics: EngineMetrics) -> mpsc::Sender<Batch> {
    let Shared { idle, report, health, weights } = shared;
    let (tx, rx) = mpsc::channel::<Batch>();
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("replica-{id}"))
        .spawn(move || {
            // Intra-op threads are per OS thread in libtorch's OpenMP pool.
            tch::set_num_threads(config.threads_per_replica.max(1) as i32);
            let load = config.load.placed(config.slots[id]);
            let loaded = catch_unwind(AssertUnwindSafe(|| {
                let (model, _turn) = match config.slots[id].device {
                    Device::Cpu => {
                        (weights.get_or_load(|| Model::load(&config.model_dir, &load))?, Some(weights.warm_up_turn()))
                    }
                    _ => (Arc::new(Model::load(&config.model_dir, &load)?), None),
                };
                // Every replica warms up: its own threads, and the shapes it will run.
                model.warm_up(config.max_batch_frames, config.max_questions).map_err(LoadError::SelfCheck)?;
                release_free_memory();
                Ok::<_, LoadError>(model)
            }));
            let mut model = match loaded {
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
            let mut batches = 0;
            let mut trimmed = true;
            loop {
                let Batch { jobs, cores } = match rx.recv_timeout(TRIM_WHEN_IDLE) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !trimmed {
                            release_free_memory();
                            trimmed = true;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                if !jobs.is_empty() {
                    trimmed = false;
                    batches += 1;
                    let failing = run_batch(&model, jobs, &metrics, &health, (id, batches));
                    drop(cores);
                    if failing {
                        recover(id, &mut model, &config, &health);
                    }
                }
                if idle.send(id).is_err() {
                    return;
                }
            }
        })
        .expect("spawn a model replica thread");
    tx
}

/// Answers a batch (`replica`'s `number`th); returns whether inference is now failing. Health is
/// updated before any client hears back, so a load balancer probing `/ready` right after a 500
/// already sees the failed batch counted.
fn run_batch(
    model: &Model,
    batch: Vec<Job>,
    metrics: &EngineMetrics,
    health: &InferenceHealth,
    (replica, number): (usize, u64),
) -> bool {
    let started = Instant::now();
    metrics.batch_frames.observe(batch.len() as f64);
    let mode = batch[0].mode;
    let frames: Vec<FrameQuestions> =
        batch.iter().map(|job| FrameQuestions { pixels: &job.pixels, questions: &job.questions }).collect();
    // A panic inside libtorch bindings must cost this batch, not the replica.
    let result = catch_unwind(AssertUnwindSafe(|| model.answer(&frames, mode)));
    let inference = started.elapsed();
    let of =
        BatchOf { replica, number, frames: batch.len(), questions: batch.iter().map(|job| job.questions.len()).sum() };
    match result {
        Ok(Ok(answers)) => {
            health.succeeded();
            for (job, answers) in batch.into_iter().zip(answers) {
                let queued = started.saturating_duration_since(job.enqueued);
                let _ = job.reply.send(Ok(JobResult { answers, queued, inference, batch: of }));
            }
            false
        }
        Ok(Err(e)) => fail(batch, e.to_string(), health),
        Err(_) => fail(batch, "the model replica panicked".into(), health),
    }
}

/// Until a self-check forward pass succeeds: checks with back-off, reloading the model after
/// [`RELOAD_AFTER`] failed checks in a row. The replica takes no batch meanwhile.
fn recover(id: usize, model: &mut Arc<Model>, config: &EngineConfig, health: &InferenceHealth) {
    let mut pause = FIRST_RECHECK;
    let mut failed_checks = 0;
    while health.is_failing() {
        std::thread::sleep(pause);
        let checked = catch_unwind(AssertUnwindSafe(|| model.self_check()));
        if matches!(checked, Ok(Ok(()))) {
            tracing::warn!(replica = id, "self-check passed");
            health.succeeded();
            return;
        }
        failed_checks += 1;
        tracing::error!(replica = id, failed_checks, "self-check failed");
        if failed_checks >= RELOAD_AFTER {
            let load = config.load.placed(config.slots[id]);
            match catch_unwind(AssertUnwindSafe(|| Model::load(&config.model_dir, &load))) {
                Ok(Ok(reloaded)) => {
                    // Loading runs a forward pass of its own: the model works again.
                    tracing::warn!(replica = id, "model reloaded");
                    *model = Arc::new(reloaded);
                    health.succeeded();
                    return;
                }
                _ => tracing::error!(replica = id, "model reload failed"),
            }
            failed_checks = 0;
        }
        pause = (pause * 2).min(LAST_RECHECK);
    }
}

/// Counts the failed batch, then answers its clients; returns whether inference is now failing.
fn fail(batch: Vec<Job>, message: String, health: &InferenceHealth) -> bool {
    tracing::error!(error = %message, frames = batch.len(), "inference failed");
    let failing = health.failed();
    for job in batch {
        let _ = job.reply.send(Err(EngineError::Inference(message.clone())));
    }
    failing
}
