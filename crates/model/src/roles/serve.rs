//! `blipserve serve` and `blipserve worker`: the HTTP API and an in-process pool of model
//! replicas in one process. A worker is the same service as the inference tier behind
//! `blipserve gateway`; only its role (in `/v1/info` and the start-up line) differs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use blipserve_api::behaviors::{Behavior, Catalogue};
use blipserve_api::camera::{CameraArgs, Cameras};
use blipserve_api::cloudwatch::{CloudwatchArgs, Publisher};
use blipserve_api::grpc::GrpcArgs;
use blipserve_api::http::{self as api_http, ConnectionMetrics};
use blipserve_api::info::{Batching, ModelInfo, ReplicaPlacement, ServeInfo};
use blipserve_api::metrics::{Registry, RequestMetrics};
use blipserve_api::otel::OtelArgs;
use blipserve_api::roles::cores;
use blipserve_api::settings::{
    ConfigFile, ConnectionArgs, KeyArgs, LimitsArgs, LimitsInfo, ListenArgs, LogArgs, RequestLimits, ShutdownArgs,
};
use clap::Args;

use super::ModelArgs;
use crate::device::{placement, Host, Slot};
use crate::engine::{Engine, EngineConfig, EngineMetrics};
use crate::http::{self, AppState};
use crate::infer::{Infer, Parts};
use crate::model::{Manifest, Preprocessor, QuestionTokenizer};

/// The file's tables that are not flags.
pub const SECTIONS: &[&str] = &["behaviors"];

/// Every flag may also be set in the --config file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of these settings (same names, '_' for '-'; `[cloudwatch]` for the
    /// --cloudwatch-* flags) and [behaviors.NAME] tables (question, threshold) adding to the catalogue
    #[arg(long, env = "BLIPSERVE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    /// Model replicas, each on its own thread with --threads intra-op threads [default: cuda, one
    /// per visible GPU; neuron, one per visible NeuronCore (more is refused); cpu, cores / threads]
    #[arg(long, env = "BLIPSERVE_REPLICAS")]
    pub replicas: Option<usize>,

    /// Most frames a replica answers in one batch (bigger batches add latency for little gain on CPU)
    #[arg(long, env = "BLIPSERVE_MAX_BATCH_FRAMES", default_value_t = 8)]
    pub max_batch_frames: usize,

    /// Longest a free replica waits for more frames to fill a batch, in microseconds (small against a
    /// frame's inference time)
    #[arg(long, env = "BLIPSERVE_MAX_WAIT_US", default_value_t = 2_000)]
    pub max_wait_us: u64,

    /// Frames that may wait for a replica; beyond that requests get 429 at once (a client retries
    /// elsewhere instead of timing out)
    #[arg(long, env = "BLIPSERVE_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,

    /// Frames one camera may have waiting for a replica; a newer frame supersedes its oldest
    /// waiting one (409 `superseded`). 0: no bound but the queue's (frames of different cameras
    /// are batched in turn either way)
    #[arg(long, env = "BLIPSERVE_CAMERA_QUEUE_LIMIT", default_value_t = 0)]
    pub camera_queue_limit: usize,

    /// Reuse and rate limits for named cameras (`serve`; a worker leaves them to its gateway,
    /// and only batches by camera)
    #[command(flatten)]
    pub camera: CameraArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,

    #[command(flatten)]
    pub otel: OtelArgs,

    /// Failed batches in a row (across replicas) after which /ready turns 503 `inference_failing`
    /// until a replica's self-check forward pass succeeds (a bad NeuronCore or driver fails fast, and
    /// would otherwise draw more traffic)
    #[arg(
        long,
        env = "BLIPSERVE_UNHEALTHY_AFTER_FAILED_BATCHES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub unhealthy_after_failed_batches: u32,

    #[command(flatten)]
    pub limits: LimitsArgs,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub cloudwatch: CloudwatchArgs,
}

/// Which tier this process is: the whole service, or the inference tier behind a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Worker => "worker",
        }
    }
}

/// How long the last CloudWatch delivery may take at exit.
const PUBLISH_ON_EXIT: Duration = Duration::from_secs(5);

pub fn run(args: ServeArgs, role: Role) -> anyhow::Result<()> {
    args.log.init();
    let file = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let behaviors = Catalogue::with(file.section::<BTreeMap<String, Behavior>>("behaviors")?)?;
    let model_dir = args.model.model.clone();
    let load = args.model.load_options(args.limits.image_limits());
    let choice = args.model.device;
    let host = Host::detect(choice, (cores() / args.model.threads(1)).max(1))?;
    let slots = placement::plan(choice, args.replicas, &host)?;
    let replicas = slots.len();
    let threads = args.model.threads(replicas);
    let limits = args.limits.request_limits();
    let engine_config = EngineConfig {
        model_dir: model_dir.clone(),
        load: load.clone(),
        slots,
        threads_per_replica: threads,
        max_batch_frames: args.max_batch_frames.max(1),
        max_questions: limits.max_questions,
        max_wait: Duration::from_micros(args.max_wait_us),
        queue_capacity: args.queue_capacity.max(1),
        per_camera_queue: args.camera_queue_limit,
        unhealthy_after_failed_batches: args.unhealthy_after_failed_batches,
    };

    let admission = engine_config.queue_capacity + replicas * engine_config.max_batch_frames;

    // What the facade needs of the model before the replicas load it.
    let manifest = Manifest::read(&model_dir).with_context(|| format!("model {}", model_dir.display()))?;
    manifest.shapes()?;
    let tokenizer = QuestionTokenizer::load(&model_dir, &manifest.tokens, manifest.max_question_len)?;
    let preprocessor = Preprocessor::new(&manifest.preprocess, load.image_limits);
    let info = describe(role, &manifest, &args, (&engine_config, &host), &limits);
    let placed_on = placement_summary(&info);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let registry = Registry::default();
        let engine_metrics = EngineMetrics::new(&registry);
        let publisher = match args.cloudwatch.settings(load.device.backend()).await? {
            Some(settings) => {
                eprintln!(
                    "blipserve: publishing to CloudWatch namespace {} every {} s (group {}, backend {})",
                    settings.namespace,
                    settings.interval.as_secs(),
                    settings.group,
                    settings.backend
                );
                let depth = engine_metrics.queue_depth.clone();
                Some(Publisher::start(settings, &registry, Arc::new(move || depth.get())).await?)
            }
            None => None,
        };
        let (engine, loaded) = Engine::start(engine_config, engine_metrics);
        let parts = Parts {
            model_id: manifest.model_id.clone(),
            tokenizer,
            preprocessor,
            engine,
            behaviors,
            limits,
            max_new_tokens: manifest.generate.max_length - 1,
            preprocess_permits: 2 * cores(),
            admission,
        };
        let connections = (args.connections.limits(), ConnectionMetrics::new(&registry));
        let tally = publisher.as_ref().map(Publisher::tally);
        // Where requests first arrive: behind a gateway, the gateway reuses and rate-limits.
        let cameras = match role {
            Role::Serve => {
                Some(Arc::new(Cameras::new(args.camera.settings()?, load.image_limits, &registry, tally.clone())?))
            }
            Role::Worker => None,
        };
        let otel = args.otel.start(&format!("blipserve-{}", role.name()))?;
        let state = Arc::new(AppState {
            infer: Infer::new(parts, &registry)?,
            requests: RequestMetrics::new(&registry, tally),
            cameras,
            registry,
            draining: Arc::new(AtomicBool::new(false)),
            api_keys: args.keys.api_keys.clone(),
            info,
            otel: otel.clone(),
        });
        let addr = args.listen.addr();
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        eprintln!(
            "blipserve: listening on http://{bound} ({}, model {}, {replicas} replica(s) on {})",
            role.name(),
            manifest.model_id,
            placed_on
        );
        // A replica that fails to load stops the service through the normal shutdown path
        // (drain, final CloudWatch publication), and the process exits non-zero.
        let load_failure = Arc::new(Mutex::new(None));
        let stop = {
            let load_failure = load_failure.clone();
            async move {
                match loaded.await {
                    Ok(Ok(())) => eprintln!("blipserve: ready"),
                    Ok(Err(e)) => {
                        eprintln!("blipserve: a model replica failed to load: {e}");
                        *load_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                    Err(_) => {}
                }
                std::future::pending::<()>().await
            }
        };
        let shutdown = (state.draining.clone(), args.shutdown.shutdown());
        let grpc = args.grpc.start(args.listen.listen, Arc::new(http::Grpc(state.clone())), &otel, shutdown).await?;
        let app = http::router(state.clone());
        api_http::serve(listener, app, state.draining.clone(), args.shutdown.shutdown(), connections, stop).await?;
        grpc.finish().await;
        if let Some(publisher) = publisher {
            // The last interval's counts, so a group scaling in sees this instance's final load.
            publisher.shutdown(PUBLISH_ON_EXIT).await;
        }
        otel.shutdown(PUBLISH_ON_EXIT);
        if let Some(e) = load_failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            anyhow::bail!("a model replica failed to load: {e}");
        }
        eprintln!("blipserve: stopped");
        anyhow::Ok(())
    })
}

/// `GET /v1/info`'s fixed part: the model, where it runs, batching and limits.
fn describe(
    role: Role,
    manifest: &Manifest,
    args: &ServeArgs,
    (engine, host): (&EngineConfig, &Host),
    limits: &RequestLimits,
) -> ServeInfo {
    ServeInfo {
        version: env!("CARGO_PKG_VERSION"),
        role: role.name(),
        model: ModelInfo {
            id: manifest.model_id.clone(),
            dir: engine.model_dir.display().to_string(),
            source: manifest.source.clone(),
            target: manifest.target.clone(),
            dtype: manifest.dtype.clone(),
            precision: manifest.precision().to_string(),
            quantization: manifest.quantization.clone(),
            static_shapes: manifest.static_shapes,
            torch: manifest.torch_version.clone(),
            transformers: manifest.transformers_version.clone(),
        },
        device: args.model.device.to_string(),
        replicas: engine.slots.len(),
        placement: engine
            .slots
            .iter()
            .enumerate()
            .map(|(replica, slot)| replica_placement(replica, slot, host))
            .collect(),
        threads_per_replica: engine.threads_per_replica,
        batching: Batching {
            max_batch_frames: engine.max_batch_frames,
            max_wait_us: engine.max_wait.as_micros() as u64,
            queue_capacity: engine.queue_capacity,
            camera_queue_limit: engine.per_camera_queue,
        },
        cameras: match role {
            Role::Serve => args.camera.settings().ok().map(|s| (&s).into()),
            Role::Worker => None,
        },
        limits: LimitsInfo::new(limits, &engine.load.image_limits, Some(manifest.max_question_len)),
        auth: !args.keys.api_keys.is_empty(),
        ready: false,
        queue_depth: 0,
    }
}

fn replica_placement(replica: usize, slot: &Slot, host: &Host) -> ReplicaPlacement {
    ReplicaPlacement {
        replica,
        device: slot.device.to_string(),
        neuron_core: slot.neuron_core.map(|core| core.id),
        visible_cores: slot.neuron_core.map(|_| host.neuron_source.clone()),
    }
}

/// Where the replicas run, for the start-up line: "neuron cores 4, 5", "cuda:0, cuda:1", "cpu".
fn placement_summary(info: &ServeInfo) -> String {
    let cores: Vec<String> = info.placement.iter().filter_map(|p| p.neuron_core).map(|c| c.to_string()).collect();
    if !cores.is_empty() {
        return format!("neuron core{} {}", if cores.len() > 1 { "s" } else { "" }, cores.join(", "));
    }
    let mut devices: Vec<&str> = info.placement.iter().map(|p| p.device.as_str()).collect();
    devices.dedup();
    devices.join(", ")
}
