//! `blipserve serve` and `blipserve worker`: the HTTP API and an in-process pool of model
//! replicas in one process. A worker is the same service as the inference tier behind
//! `blipserve gateway`; only its role (in `/v1/info` and the start-up line) differs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use blipserve::behaviors::Catalogue;
use blipserve::cloudwatch::Publisher;
use blipserve::config::{self, FileConfig, RequestLimits};
use blipserve::engine::{Engine, EngineConfig};
use blipserve::http::{self, AppState, Shutdown};
use blipserve::metrics::Metrics;
use blipserve::model::{Manifest, Preprocessor, QuestionTokenizer};

use super::cloudwatch::CloudwatchArgs;
use super::ModelArgs;

/// Flags left unset fall back to the --config file, then to the defaults shown.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// TOML file with any of these settings (same names, '_' for '-') and a [behaviors.NAME] table
    #[arg(long, env = "BLIPSERVE_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1; use 0.0.0.0 behind a load balancer]
    #[arg(long, env = "BLIPSERVE_LISTEN")]
    listen: Option<IpAddr>,

    /// Port to listen on [default: 8080]
    #[arg(long, env = "BLIPSERVE_PORT")]
    port: Option<u16>,

    /// Model replicas, each on its own thread with --threads intra-op threads [default: cores / threads]
    #[arg(long, env = "BLIPSERVE_REPLICAS")]
    replicas: Option<usize>,

    /// Most frames a replica answers in one batch [default: 8]
    #[arg(long, env = "BLIPSERVE_MAX_BATCH_FRAMES")]
    max_batch_frames: Option<usize>,

    /// Longest a free replica waits for more frames to fill a batch, in microseconds [default: 2000]
    #[arg(long, env = "BLIPSERVE_MAX_WAIT_US")]
    max_wait_us: Option<u64>,

    /// Frames that may wait for a replica; beyond that requests get 429 at once [default: 64]
    #[arg(long, env = "BLIPSERVE_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,

    /// Deadline of one detect request, in milliseconds; past it the client gets 504 [default: 10000]
    #[arg(long, env = "BLIPSERVE_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,

    /// Largest request body in bytes [default: 16777216]
    #[arg(long, env = "BLIPSERVE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,

    /// Most questions (free text plus behaviours) per frame [default: 16]
    #[arg(long, env = "BLIPSERVE_MAX_QUESTIONS")]
    max_questions: Option<usize>,

    /// Longest question in characters [default: 256]
    #[arg(long, env = "BLIPSERVE_MAX_QUESTION_CHARS")]
    max_question_chars: Option<usize>,

    /// After SIGTERM/SIGINT, how long /ready reports draining before the listener closes, in ms [default: 0]
    #[arg(long, env = "BLIPSERVE_DRAIN_DELAY_MS")]
    drain_delay_ms: Option<u64>,

    /// After the listener closes, how long in-flight requests may take, in seconds [default: 30]
    #[arg(long, env = "BLIPSERVE_SHUTDOWN_GRACE_S")]
    shutdown_grace_s: Option<u64>,

    /// Bearer API keys accepted on /v1/detect (comma-separated); none: no authentication [default: none]
    #[arg(long = "api-key", env = "BLIPSERVE_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    api_keys: Vec<String>,

    /// Log format: text or json (RUST_LOG sets the level) [default: text]
    #[arg(long, env = "BLIPSERVE_LOG_FORMAT")]
    log_format: Option<String>,

    #[command(flatten)]
    cloudwatch: CloudwatchArgs,
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

/// A flag (or its environment twin) beats the configuration file, which beats the default.
pub(super) fn setting<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

pub fn run(args: ServeArgs, role: Role, init_logging: fn(bool)) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let log_format = args.log_format.clone().or(file.log_format.clone()).unwrap_or_else(|| "text".into());
    anyhow::ensure!(log_format == "text" || log_format == "json", "--log-format must be text or json");
    init_logging(log_format == "json");

    let model_dir = args.model.model_dir(&file);
    let load = args.model.load_options(&file)?;
    let threads = args.model.threads(&file);
    let replicas = setting(args.replicas, file.replicas, (super::cores() / threads).max(1)).max(1);
    let limits = RequestLimits {
        max_body_bytes: setting(args.max_body_bytes, file.max_body_bytes, config::DEFAULT_MAX_BODY_BYTES),
        max_questions: setting(args.max_questions, file.max_questions, config::DEFAULT_MAX_QUESTIONS).max(1),
        max_question_chars: setting(
            args.max_question_chars,
            file.max_question_chars,
            config::DEFAULT_MAX_QUESTION_CHARS,
        )
        .max(1),
        request_timeout: Duration::from_millis(setting(
            args.request_timeout_ms,
            file.request_timeout_ms,
            config::DEFAULT_REQUEST_TIMEOUT_MS,
        )),
    };
    let engine_config = EngineConfig {
        model_dir: model_dir.clone(),
        load: load.clone(),
        replicas,
        threads_per_replica: threads,
        max_batch_frames: setting(args.max_batch_frames, file.max_batch_frames, config::DEFAULT_MAX_BATCH_FRAMES)
            .max(1),
        max_wait: Duration::from_micros(setting(args.max_wait_us, file.max_wait_us, config::DEFAULT_MAX_WAIT_US)),
        queue_capacity: setting(args.queue_capacity, file.queue_capacity, config::DEFAULT_QUEUE_CAPACITY).max(1),
    };
    let shutdown = Shutdown {
        drain_delay: Duration::from_millis(setting(
            args.drain_delay_ms,
            file.drain_delay_ms,
            config::DEFAULT_DRAIN_DELAY_MS,
        )),
        grace: Duration::from_secs(setting(
            args.shutdown_grace_s,
            file.shutdown_grace_s,
            config::DEFAULT_SHUTDOWN_GRACE_S,
        )),
    };
    let api_keys: Vec<String> =
        if args.api_keys.is_empty() { file.api_keys.clone().unwrap_or_default() } else { args.api_keys.clone() };
    // An empty or padded key (e.g. from a trailing comma) is a typo no client could match.
    anyhow::ensure!(
        api_keys.iter().all(|k| !k.is_empty() && k.trim() == k),
        "an API key is empty or has surrounding spaces (check --api-key / BLIPSERVE_API_KEYS for a stray comma)"
    );
    let behaviors = Catalogue::with(file.behaviors.clone())?;
    let addr = config::socket_addr(args.listen, args.port, &file);

    // What the HTTP layer needs of the model, without loading the parts (the replicas do).
    let manifest = Manifest::read(&model_dir).with_context(|| format!("model {}", model_dir.display()))?;
    manifest.shapes()?;
    let tokenizer = QuestionTokenizer::load(&model_dir, &manifest.tokens, manifest.max_question_len)?;
    let preprocessor = Preprocessor::new(&manifest.preprocess, load.image_limits);
    // A catalogue question the model cannot take is a configuration error, not a client's.
    for (name, behavior) in behaviors.iter() {
        tokenizer.encode(&behavior.question).with_context(|| format!("behavior {name:?}"))?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let publisher = match args.cloudwatch.settings(file.cloudwatch.as_ref(), load.device).await? {
            Some(settings) => {
                eprintln!(
                    "blipserve: publishing to CloudWatch namespace {} every {} s (group {}, backend {})",
                    settings.namespace,
                    settings.interval.as_secs(),
                    settings.group,
                    settings.backend
                );
                Some(Publisher::start(settings, metrics.tally.clone(), metrics.clone()).await?)
            }
            None => None,
        };
        let (engine, loaded) = Engine::start(engine_config.clone(), metrics.clone());
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "role": role.name(),
            "model": {
                "id": manifest.model_id, "dir": model_dir, "source": manifest.source, "target": manifest.target,
                "dtype": manifest.dtype, "static_shapes": manifest.static_shapes,
                "torch": manifest.torch_version, "transformers": manifest.transformers_version,
            },
            "device": load.device.to_string(),
            "replicas": replicas,
            "threads_per_replica": threads,
            "batching": {
                "max_batch_frames": engine_config.max_batch_frames,
                "max_wait_us": engine_config.max_wait.as_micros() as u64,
                "queue_capacity": engine_config.queue_capacity,
            },
            "limits": {
                "max_body_bytes": limits.max_body_bytes, "max_questions": limits.max_questions,
                "max_question_chars": limits.max_question_chars, "max_question_tokens": manifest.max_question_len,
                "request_timeout_ms": limits.request_timeout.as_millis() as u64,
                "max_image_side": load.image_limits.max_width, "max_image_pixels": load.image_limits.max_pixels,
            },
            "auth": !api_keys.is_empty(),
        });
        let draining = Arc::new(AtomicBool::new(false));
        let state = Arc::new(AppState {
            engine,
            tokenizer,
            preprocessor,
            behaviors,
            limits,
            metrics,
            draining: draining.clone(),
            api_keys,
            model_id: manifest.model_id.clone(),
            max_new_tokens: manifest.generate.max_length - 1,
            info,
            preprocess_permits: Arc::new(tokio::sync::Semaphore::new(2 * super::cores())),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        eprintln!(
            "blipserve: listening on http://{bound} ({}, model {}, {replicas} replica(s) on {})",
            role.name(),
            manifest.model_id,
            load.device
        );
        tokio::spawn(async move {
            match loaded.await {
                Ok(Ok(())) => eprintln!("blipserve: ready"),
                Ok(Err(e)) => {
                    eprintln!("blipserve: a model replica failed to load: {e}");
                    std::process::exit(1);
                }
                Err(_) => {}
            }
        });
        http::serve(listener, http::router(state), draining, shutdown).await?;
        if let Some(publisher) = publisher {
            // The last interval's counts, so a group scaling in sees this instance's final load.
            publisher.shutdown(PUBLISH_ON_EXIT).await;
        }
        eprintln!("blipserve: stopped");
        anyhow::Ok(())
    })
}
