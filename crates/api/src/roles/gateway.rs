//! `blipserve gateway`: the API tier of a two-tier deployment, in front of pools of
//! `blipserve worker`s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::camera::CameraArgs;
use crate::gateway::pools::Outliers;
use crate::gateway::{self, Gateway, Settings};
use crate::grpc::GrpcArgs;
use crate::http;
use crate::otel::OtelArgs;
use crate::settings::{bearer_key, ConfigFile, ConnectionArgs, KeyArgs, LimitsArgs, ListenArgs, LogArgs, ShutdownArgs};

/// How long the last spans may take to leave at exit.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);

/// The file's tables that are not flags.
pub const SECTIONS: &[&str] = &["pools"];

/// The pools come from --config; every flag below may also be set there.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// TOML file: any flag below ('_' for '-') and the [[pools]] (name, backend = neuron|gpu|cpu, weight,
    /// urls). SIGHUP re-reads it and applies the pools live
    #[arg(long, env = "BLIPSERVE_GATEWAY_CONFIG")]
    pub config: PathBuf,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub limits: LimitsArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    /// Bearer key of the admin API (/admin/pools: see and change weights); none: the admin API is off
    #[arg(long, env = "BLIPSERVE_ADMIN_KEY", hide_env_values = true, value_parser = bearer_key)]
    pub admin_key: Option<String>,

    /// How often every worker's /ready is probed, in ms
    #[arg(long, env = "BLIPSERVE_HEALTH_INTERVAL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub health_interval_ms: u64,

    /// How long a /ready probe may take before it fails, in ms; two failures in a row take the worker out
    #[arg(long, env = "BLIPSERVE_HEALTH_TIMEOUT_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_timeout_ms: u64,

    /// A worker that fails a request (unreachable, or a 5xx other than 504) gets no requests for this long,
    /// doubling while it keeps failing (at most 8×), in ms
    #[arg(long, env = "BLIPSERVE_EJECT_MS", default_value_t = 5_000)]
    pub eject_ms: u64,

    /// Longest wait for a connection to a worker, in ms
    #[arg(long, env = "BLIPSERVE_CONNECT_TIMEOUT_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,

    /// Workers tried for one request: connection errors, 503 and 429 move it to another worker
    #[arg(long, env = "BLIPSERVE_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_attempts: u64,

    /// Idle pooled connections to a worker or load balancer are closed after this long, in ms: below
    /// any load balancer's idle timeout (an ALB's is 60 s), so that a request is never sent on a
    /// connection the balancer is closing
    #[arg(long, env = "BLIPSERVE_UPSTREAM_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_idle_timeout_ms: u64,

    /// A pool marked load_balancer is ejected only after this many failed attempts in a row (or the
    /// failure rate below), and never while it is the last healthy upstream
    #[arg(long, env = "BLIPSERVE_LB_EJECT_CONSECUTIVE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub lb_eject_consecutive: u32,

    /// …or once this share of its last minute's attempts failed
    #[arg(long, env = "BLIPSERVE_LB_EJECT_FAILURE_RATE", default_value_t = 0.5)]
    pub lb_eject_failure_rate: f64,

    /// …counted once it had at least this many attempts in the last minute
    #[arg(long, env = "BLIPSERVE_LB_EJECT_MIN_REQUESTS", default_value_t = 20)]
    pub lb_eject_min_requests: u64,

    /// Reuse and rate limits for named cameras: answered here, before any worker (give every
    /// gateway the same Redis store)
    #[command(flatten)]
    pub camera: CameraArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,

    #[command(flatten)]
    pub otel: OtelArgs,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub shutdown: ShutdownArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    args.log.init();
    let file = ConfigFile::read(&args.config)?;
    let ms = Duration::from_millis;
    let settings = Settings {
        limits: args.limits.request_limits(),
        image_limits: args.limits.image_limits(),
        api_keys: args.keys.api_keys.clone(),
        admin_key: args.admin_key.clone(),
        health_interval: ms(args.health_interval_ms),
        health_timeout: ms(args.health_timeout_ms),
        eject: ms(args.eject_ms),
        connect_timeout: ms(args.connect_timeout_ms),
        max_attempts: args.max_attempts as usize,
        outliers: Outliers {
            consecutive: args.lb_eject_consecutive,
            failure_rate: args.lb_eject_failure_rate,
            min_requests: args.lb_eject_min_requests,
        },
        upstream_idle_timeout: ms(args.upstream_idle_timeout_ms),
        cameras: args.camera.settings()?,
    };
    let addr = args.listen.addr();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let otel = args.otel.start("blipserve-gateway")?;
        let gateway = Arc::new(Gateway::new(settings, file, otel.clone())?);
        gateway::spawn_reload_on_sighup(gateway.clone()).context("listening for SIGHUP")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        gateway.probe_all().await;
        let snapshot = gateway.pools.current();
        eprintln!(
            "blipserve: listening on http://{bound} (gateway, pools {}; {} worker(s) ready)",
            gateway::describe(&snapshot),
            snapshot.healthy_workers()
        );
        gateway.spawn_health_checks();
        let (draining, shutdown) = (gateway.draining.clone(), args.shutdown.shutdown());
        let door = Arc::new(gateway::GrpcDoor(gateway.clone()));
        let grpc = args.grpc.start(addr.ip(), door, &otel, (draining.clone(), shutdown)).await?;
        let app = gateway::router(gateway.clone());
        let connections = (args.connections.limits(), gateway.metrics.connections.clone());
        http::serve(listener, app, draining, shutdown, connections, std::future::pending()).await?;
        grpc.finish().await;
        otel.shutdown(FLUSH_ON_EXIT);
        eprintln!("blipserve: stopped");
        anyhow::Ok(())
    })
}
