//! `blipserve gateway`: the API tier of a two-tier deployment, in front of pools of
//! `blipserve worker`s.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use blipserve::config::{self, RequestLimits};
use blipserve::gateway::config::GatewayFile;
use blipserve::gateway::{self, Gateway, Settings};
use blipserve::http::{self, Shutdown};
use blipserve::model::ImageLimits;

use super::serve::setting;

pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_EJECT_MS: u64 = 5_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;

/// The pools come from --config; other flags left unset fall back to it, then to the defaults shown.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// TOML file: listen, port, any flag below ('_' for '-'), and the [[pools]] (name, backend = neuron|gpu|cpu,
    /// weight, urls). SIGHUP re-reads it and applies the pools live
    #[arg(long, env = "BLIPSERVE_GATEWAY_CONFIG")]
    config: PathBuf,

    /// Address to listen on [default: 127.0.0.1; use 0.0.0.0 behind a load balancer]
    #[arg(long, env = "BLIPSERVE_LISTEN")]
    listen: Option<IpAddr>,

    /// Port to listen on [default: 8080]
    #[arg(long, env = "BLIPSERVE_PORT")]
    port: Option<u16>,

    /// Bearer key of the admin API (/admin/pools: see and change weights); none: the admin API is off
    #[arg(long, env = "BLIPSERVE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// Bearer API keys accepted on /v1/detect (comma-separated), passed on to the workers; none: no authentication
    #[arg(long = "api-key", env = "BLIPSERVE_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    api_keys: Vec<String>,

    /// Deadline of one detect request, retries included, in milliseconds; the worker is given what is left [default: 10000]
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

    /// Largest accepted image side, in pixels, read from the image's header [default: 8192]
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_SIDE")]
    max_image_side: Option<u32>,

    /// Largest accepted image area, in pixels, read from the image's header [default: 33177600, 8K]
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_PIXELS")]
    max_image_pixels: Option<u64>,

    /// How often every worker's /ready is probed, in ms [default: 2000]
    #[arg(long, env = "BLIPSERVE_HEALTH_INTERVAL_MS")]
    health_interval_ms: Option<u64>,

    /// How long a /ready probe may take before it fails, in ms; two failures in a row take the worker out [default: 1000]
    #[arg(long, env = "BLIPSERVE_HEALTH_TIMEOUT_MS")]
    health_timeout_ms: Option<u64>,

    /// A worker that fails a request (unreachable, or a 5xx other than 504) gets no requests for this long, doubling while it keeps
    /// failing (at most 8×), in ms [default: 5000]
    #[arg(long, env = "BLIPSERVE_EJECT_MS")]
    eject_ms: Option<u64>,

    /// Longest wait for a connection to a worker, in ms [default: 1000]
    #[arg(long, env = "BLIPSERVE_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,

    /// Workers tried for one request: connection errors, 503 and 429 move it to another worker [default: 3]
    #[arg(long, env = "BLIPSERVE_MAX_ATTEMPTS")]
    max_attempts: Option<usize>,

    /// After SIGTERM/SIGINT, how long /ready reports draining before the listener closes, in ms [default: 0]
    #[arg(long, env = "BLIPSERVE_DRAIN_DELAY_MS")]
    drain_delay_ms: Option<u64>,

    /// After the listener closes, how long in-flight requests may take, in seconds [default: 30]
    #[arg(long, env = "BLIPSERVE_SHUTDOWN_GRACE_S")]
    shutdown_grace_s: Option<u64>,

    /// Log format: text or json (RUST_LOG sets the level) [default: text]
    #[arg(long, env = "BLIPSERVE_LOG_FORMAT")]
    log_format: Option<String>,
}

pub fn run(args: GatewayArgs, init_logging: fn(bool)) -> anyhow::Result<()> {
    let file = GatewayFile::read(&args.config)?;
    let log_format = args.log_format.clone().or(file.log_format.clone()).unwrap_or_else(|| "text".into());
    anyhow::ensure!(log_format == "text" || log_format == "json", "--log-format must be text or json");
    init_logging(log_format == "json");

    let defaults = ImageLimits::default();
    let side = setting(args.max_image_side, file.max_image_side, defaults.max_width);
    let ms = Duration::from_millis;
    let settings = Settings {
        limits: RequestLimits {
            max_body_bytes: setting(args.max_body_bytes, file.max_body_bytes, config::DEFAULT_MAX_BODY_BYTES),
            max_questions: setting(args.max_questions, file.max_questions, config::DEFAULT_MAX_QUESTIONS).max(1),
            max_question_chars: setting(
                args.max_question_chars,
                file.max_question_chars,
                config::DEFAULT_MAX_QUESTION_CHARS,
            )
            .max(1),
            request_timeout: ms(setting(
                args.request_timeout_ms,
                file.request_timeout_ms,
                config::DEFAULT_REQUEST_TIMEOUT_MS,
            )),
        },
        image_limits: ImageLimits {
            max_width: side,
            max_height: side,
            max_pixels: setting(args.max_image_pixels, file.max_image_pixels, defaults.max_pixels),
        },
        api_keys: if args.api_keys.is_empty() { file.api_keys.clone().unwrap_or_default() } else { args.api_keys },
        admin_key: args.admin_key,
        health_interval: ms(
            setting(args.health_interval_ms, file.health_interval_ms, DEFAULT_HEALTH_INTERVAL_MS).max(10)
        ),
        health_timeout: ms(setting(args.health_timeout_ms, file.health_timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS).max(1)),
        eject: ms(setting(args.eject_ms, file.eject_ms, DEFAULT_EJECT_MS)),
        connect_timeout: ms(
            setting(args.connect_timeout_ms, file.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS).max(1)
        ),
        max_attempts: setting(args.max_attempts, file.max_attempts, DEFAULT_MAX_ATTEMPTS).max(1),
    };
    anyhow::ensure!(
        settings.api_keys.iter().all(|k| !k.is_empty() && k.trim() == k),
        "an API key is empty or has surrounding spaces (check --api-key / BLIPSERVE_API_KEYS for a stray comma)"
    );
    anyhow::ensure!(
        settings.admin_key.as_deref().is_none_or(|k| !k.is_empty() && k.trim() == k),
        "the admin key is empty or has surrounding spaces (check --admin-key / BLIPSERVE_ADMIN_KEY)"
    );
    let shutdown = Shutdown {
        drain_delay: ms(setting(args.drain_delay_ms, file.drain_delay_ms, config::DEFAULT_DRAIN_DELAY_MS)),
        grace: Duration::from_secs(setting(
            args.shutdown_grace_s,
            file.shutdown_grace_s,
            config::DEFAULT_SHUTDOWN_GRACE_S,
        )),
    };
    let addr = SocketAddr::new(
        args.listen.or(file.listen).unwrap_or(config::DEFAULT_LISTEN),
        args.port.or(file.port).unwrap_or(config::DEFAULT_PORT),
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let gateway = Arc::new(Gateway::new(settings, &file, Some(args.config.clone()))?);
        gateway::spawn_reload_on_sighup(gateway.clone()).context("listening for SIGHUP")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        gateway.probe_all().await;
        let snapshot = gateway.pools.current();
        let pools: Vec<String> = snapshot
            .pools
            .iter()
            .map(|p| {
                format!("{} ({}, weight {}, {} worker(s))", p.name, p.backend.as_str(), p.weight, p.upstreams.len())
            })
            .collect();
        eprintln!(
            "blipserve: listening on http://{bound} (gateway, pools {}; {} worker(s) ready)",
            pools.join(", "),
            snapshot.healthy_workers()
        );
        gateway.spawn_health_checks();
        http::serve(listener, gateway::router(gateway.clone()), gateway.draining.clone(), shutdown).await?;
        eprintln!("blipserve: stopped");
        anyhow::Ok(())
    })
}
