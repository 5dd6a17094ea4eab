//! `blipserve loadtest`: closed- or open-loop load against a detect endpoint, with a report;
//! `blipserve loadtest sweep`: the capacity sweep over replicas × concurrency, with a chart;
//! `blipserve loadtest soak` and `blipserve loadtest overload`: the two tiers started locally,
//! held at part of their capacity for long, or driven past it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::loadtest::cameras::{self, CameraPlan, CameraReport};
use crate::loadtest::cluster::ClusterPlan;
use crate::loadtest::cost::Price;
use crate::loadtest::overload::{self, OverloadPlan, OverloadReport};
use crate::loadtest::soak::{self, SoakPlan, SoakReport, Tolerance};
use crate::loadtest::sweep::{self, Event, SweepPlan, SweepReport, Target};
use crate::loadtest::{self, chart, Load, Plan, Report};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadtestArgs {
    #[command(subcommand)]
    mode: Option<Mode>,

    #[command(flatten)]
    single: SingleArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Sweep server replicas × client concurrency: CSV, JSON, an SVG chart, the sustainable
    /// capacity and the scaling target.
    ///
    /// Every combination gets a bounded closed loop after a short warm-up. By default the sweep starts `blipserve serve` itself on a free local port for each
    /// --replicas count and stops it with SIGTERM afterwards; with --url it drives a running
    /// server and sweeps the concurrency only. The sustainable capacity is the highest throughput
    /// among the points that answered every request and kept p99 ≤ --slo-p99-ms; the scaling
    /// target is that capacity × --headroom, in requests/s per instance (the CloudWatch metric
    /// `Requests` per second per in-service instance, what the target-tracking policy follows).
    Sweep(SweepArgs),

    /// Hold workers and a gateway (started locally) at a share of their measured capacity for a
    /// long time, with invalid requests mixed in; sample every process's memory, file
    /// descriptors, threads and /metrics series; write a CSV, JSON and an SVG chart.
    ///
    /// Fails (exit 1) when any sampled quantity grows after the warm-up beyond its tolerance,
    /// when a valid request does not get 200 or an invalid one a 4xx (or 503), when a 429/503 comes
    /// without Retry-After, or when a request is not accounted for by the client, the gateway
    /// and the workers alike.
    Soak(SoakArgs),

    /// Drive workers and a gateway (started locally) at a share of their measured capacity, then
    /// at several times it, then at the share again: beyond capacity only 200, 429 or 503 with
    /// Retry-After; every request accounted for; service normal right after. Writes JSON.
    Overload(OverloadArgs),

    /// Simulate a fleet of cameras against a detect endpoint: each films a still room with sensor
    /// noise and JPEG re-encoding, sends frames with Poisson arrivals and a `camera` id, and now
    /// and then a pet-sized sprite appears, moves or leaves.
    ///
    /// Reports frames, answers reused, model calls saved, and every changed frame answered from
    /// reuse (fails, exit 1, if any); some reused frames are asked again with reuse=false to
    /// compare answers. With --loud-factor, camera 0 sends that many times faster: the report
    /// gives the quiet cameras' throughput and the loud one's 429s.
    Cameras(CamerasArgs),
}

#[derive(Args, Debug)]
struct CamerasArgs {
    /// The detect endpoint
    #[arg(long, env = "BLIPSERVE_LOADTEST_URL", default_value = "http://127.0.0.1:8080/v1/detect")]
    url: String,

    /// Cameras simulated
    #[arg(long, default_value_t = 50)]
    cameras: usize,

    /// Frames per second of each camera (Poisson arrivals)
    #[arg(long, default_value_t = 1.0)]
    fps: f64,

    /// How long the cameras send, in seconds
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,

    /// Frame width
    #[arg(long, default_value_t = 1280)]
    width: usize,

    /// Frame height
    #[arg(long, default_value_t = 720)]
    height: usize,

    /// Question asked about every frame (repeatable)
    #[arg(long = "question", default_values_t = crate::DEFAULT_QUESTIONS.map(String::from))]
    questions: Vec<String>,

    /// Chance that a frame shows an event (a pet appears, moves or leaves)
    #[arg(long, default_value_t = 0.05)]
    change_probability: f64,

    /// Smallest pet, as a share of the frame's area
    #[arg(long, default_value_t = 0.02)]
    min_sprite: f64,

    /// Largest pet, as a share of the frame's area
    #[arg(long, default_value_t = 0.08)]
    max_sprite: f64,

    /// Send reuse=false with every frame (the baseline: every frame to the model)
    #[arg(long)]
    no_reuse: bool,

    /// Ask every Nth reused frame again with reuse=false, to compare answers (0: never)
    #[arg(long, default_value_t = 5)]
    verify_every: usize,

    /// Camera 0 sends this many times the others' rate (0: it stays silent)
    #[arg(long, default_value_t = 1.0)]
    loud_factor: f64,

    /// Seed of the scenes, events and arrivals
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Per-request client timeout, in seconds
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,

    /// Bearer API key
    #[arg(long, env = "BLIPSERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Write the report as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The two tiers a soak or overload run starts on local ports.
#[derive(Args, Debug)]
struct ClusterArgs {
    /// Model directory of the started workers
    #[arg(long, default_value = "models/tiny")]
    model: PathBuf,

    /// Workers started behind the gateway, one replica each
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Intra-op threads of each worker's replica
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Extra flag for every worker, e.g. --worker-arg=--queue-capacity=16 (repeatable)
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,

    /// Extra flag for the gateway, e.g. --gateway-arg=--max-attempts=2 (repeatable)
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,

    /// How long the capacity is measured (a closed loop of 4 clients a worker), in seconds
    #[arg(long, default_value_t = 10.0)]
    capacity_s: f64,
}

impl ClusterArgs {
    fn plan(&self, dir: &std::path::Path) -> anyhow::Result<ClusterPlan> {
        Ok(ClusterPlan {
            exe: std::env::current_exe().context("finding the blipserve executable")?,
            model: self.model.clone(),
            workers: self.workers.max(1),
            threads: self.threads.max(1),
            worker_args: self.worker_args.clone(),
            gateway_args: self.gateway_args.clone(),
            dir: dir.to_path_buf(),
        })
    }
}

#[derive(Args, Debug)]
struct SoakArgs {
    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    traffic: TrafficArgs,

    /// How long the load runs, warm-up included, in seconds
    #[arg(long, default_value_t = 1800.0)]
    duration_s: f64,

    /// The first part of the run left out of the growth verdict [default: a tenth of the run,
    /// at least 10 s]
    #[arg(long)]
    warmup_s: Option<f64>,

    /// Open-loop rate as a share of the measured capacity
    #[arg(long, default_value_t = 0.7, conflicts_with = "rate")]
    load: f64,

    /// Open-loop rate in requests/s instead (the capacity is then not measured)
    #[arg(long)]
    rate: Option<f64>,

    /// Every this many requests one is invalid (truncated frame, no question, wrong content
    /// type, in turn); 0: none
    #[arg(long, default_value_t = 10)]
    invalid_every: usize,

    /// Seconds between samples
    #[arg(long, default_value_t = 5.0)]
    sample_every_s: f64,

    /// Resident memory may grow by this share of its start after the warm-up…
    #[arg(long, default_value_t = Tolerance::default().rss_fraction)]
    rss_tolerance: f64,

    /// …or by this many MiB, whichever is larger
    #[arg(long, default_value_t = Tolerance::default().rss_mib)]
    rss_tolerance_mib: f64,

    /// Open file descriptors may grow by this many
    #[arg(long, default_value_t = Tolerance::default().fds)]
    fd_tolerance: f64,

    /// Threads may grow by this many
    #[arg(long, default_value_t = Tolerance::default().threads)]
    thread_tolerance: f64,

    /// /metrics sample lines may grow by this many
    #[arg(long, default_value_t = Tolerance::default().series)]
    series_tolerance: f64,

    /// Folder for soak.csv, soak.json, soak.svg and the gateway's configuration (created if missing)
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct OverloadArgs {
    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    traffic: TrafficArgs,

    /// The overload phase's rate as a multiple of the measured capacity
    #[arg(long, default_value_t = 3.0)]
    factor: f64,

    /// The phases before and after it, as a share of the capacity
    #[arg(long, default_value_t = 0.7)]
    baseline: f64,

    /// How long each of the three phases sends, in seconds
    #[arg(long, default_value_t = 20.0)]
    phase_s: f64,

    /// Folder for overload.json and the gateway's configuration (created if missing)
    #[arg(long, default_value = "target/overload")]
    out: PathBuf,
}

/// What every request carries.
#[derive(Args, Debug)]
struct TrafficArgs {
    /// Frame to send (repeatable; used in turn)
    #[arg(long = "image", default_value = "models/sample-frame.jpg")]
    images: Vec<PathBuf>,

    /// Question asked about every frame (repeatable)
    #[arg(long = "question", default_values_t = crate::DEFAULT_QUESTIONS.map(String::from))]
    questions: Vec<String>,

    /// Per-request client timeout, in seconds
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,

    /// Bearer API key
    #[arg(long, env = "BLIPSERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl TrafficArgs {
    /// A plan with these frames and questions; url, load and bounds are the caller's.
    fn plan(&self, url: String, load: Load, max_requests: usize, duration_s: f64) -> anyhow::Result<Plan> {
        let frames = self
            .images
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Plan {
            url,
            load,
            max_requests,
            max_duration: Duration::from_secs_f64(duration_s.max(0.0)),
            frames,
            questions: self.questions.clone(),
            api_key: self.api_key.clone(),
            timeout: Duration::from_secs_f64(self.timeout_s.max(0.001)),
            invalid_every: 0,
            id_prefix: loadtest::id_prefix(),
        })
    }
}

#[derive(Args, Debug)]
struct SingleArgs {
    /// The detect endpoint
    #[arg(long, env = "BLIPSERVE_LOADTEST_URL", default_value = "http://127.0.0.1:8080/v1/detect")]
    url: String,

    #[command(flatten)]
    traffic: TrafficArgs,

    /// Closed loop: clients each sending their next request when the last one returns
    #[arg(long, default_value_t = 4, conflicts_with = "rate")]
    concurrency: usize,

    /// Open loop: requests per second, latency counted from each request's intended send time
    #[arg(long)]
    rate: Option<f64>,

    /// Stop after this many requests
    #[arg(long, default_value_t = 200)]
    requests: usize,

    /// Stop after this many seconds
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,

    /// Write the report as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,

    /// Append the report as a CSV row to this file (header written when the file is new)
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// Server replica counts: for each, start `blipserve serve --replicas N` on a free local port
    #[arg(long, value_delimiter = ',', default_value = "1,2", conflicts_with = "url")]
    replicas: Vec<usize>,

    /// Drive this running detect endpoint instead of starting servers (concurrency axis only)
    #[arg(long)]
    url: Option<String>,

    /// Client concurrencies measured at every replica count
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    concurrency: Vec<usize>,

    /// Model directory of the started servers
    #[arg(long, default_value = "models/tiny", conflicts_with = "url")]
    model: PathBuf,

    /// Intra-op threads per replica of the started servers [default: serve's]
    #[arg(long, conflicts_with = "url")]
    threads: Option<usize>,

    /// Extra flag for the started servers, e.g. --serve-arg=--max-batch-frames=4 (repeatable)
    #[arg(long = "serve-arg", allow_hyphen_values = true, conflicts_with = "url")]
    serve_args: Vec<String>,

    #[command(flatten)]
    traffic: TrafficArgs,

    /// Measured requests per point (after the warm-up)
    #[arg(long, default_value_t = 200)]
    requests: usize,

    /// Longest a point is measured, in seconds (whichever of --requests and this comes first)
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,

    /// Requests sent at each point's concurrency before measuring it, not counted
    #[arg(long, default_value_t = 10)]
    warmup: usize,

    /// Latency objective: a point counts towards capacity only if its p99 is at or under this
    #[arg(long, default_value_t = 500.0)]
    slo_p99_ms: f64,

    /// Share of the sustainable capacity used as the scaling target, in (0, 1]
    #[arg(long, default_value_t = 0.7)]
    headroom: f64,

    /// The instance's price in USD per hour, for the cost per million frames (one server of the
    /// sweep is one instance)
    #[arg(long, conflicts_with = "instance_type")]
    hourly_price: Option<f64>,

    /// Take the hourly price from the built-in table (AWS on-demand, us-east-1, dated: see
    /// docs/load-testing.md) for this instance type, e.g. inf2.xlarge or g6.xlarge
    #[arg(long)]
    instance_type: Option<String>,

    /// Folder for sweep.csv, sweep.json and sweep.svg (created if missing)
    #[arg(long, default_value = "target/sweep")]
    out: PathBuf,

    /// First line of the chart [default: what was swept, on which model]
    #[arg(long)]
    title: Option<String>,
}

pub fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    match args.mode {
        Some(Mode::Sweep(sweep)) => run_sweep(sweep),
        Some(Mode::Soak(args)) => run_soak(args),
        Some(Mode::Overload(args)) => run_overload(args),
        Some(Mode::Cameras(args)) => run_cameras(args),
        None => run_single(args.single),
    }
}

fn run_single(args: SingleArgs) -> anyhow::Result<()> {
    let load = match args.rate {
        Some(rate_per_s) => Load::Open { rate_per_s },
        None => Load::Closed { concurrency: args.concurrency },
    };
    let plan = args.traffic.plan(args.url.clone(), load, args.requests, args.duration_s)?;
    let total = args.requests;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(loadtest::run(plan, move |done, elapsed| {
        eprint!("\rloadtest: {done}/{total} requests sent, {:.0} s", elapsed.as_secs_f64());
    }))?;
    eprintln!();
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        if new {
            writeln!(file, "{}", Report::CSV_HEADER)?;
        }
        writeln!(file, "{}", report.csv_row())?;
    }
    Ok(())
}

fn print_summary(r: &Report) {
    let load = match r.load {
        Load::Closed { concurrency } => format!("closed loop, {concurrency} clients"),
        Load::Open { rate_per_s } => format!("open loop, {rate_per_s} requests/s"),
    };
    let l = &r.latency_ms;
    println!(
        "{load}: {} requests ({} ok) in {:.1} s = {:.1} frames/s × {} questions; latency ms p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        r.requests, r.ok, r.elapsed_s, r.throughput_per_s, r.questions_per_frame, l.p50, l.p90, l.p99, l.max
    );
    if !r.errors.is_empty() {
        println!("errors by status: {:?}", r.errors);
    }
}

fn run_sweep(args: SweepArgs) -> anyhow::Result<()> {
    let replicas = dedup(&args.replicas);
    let concurrency = dedup(&args.concurrency);
    let (target, what) = match &args.url {
        Some(url) => (Target::Url(url.clone()), url.clone()),
        None => {
            let mut serve_args = vec!["--model".to_string(), args.model.display().to_string()];
            if let Some(threads) = args.threads {
                serve_args.extend(["--threads".to_string(), threads.to_string()]);
            }
            serve_args.extend(args.serve_args.iter().cloned());
            let exe = std::env::current_exe().context("finding the blipserve executable")?;
            let threads = args.threads.map_or(String::new(), |t| format!(", {t} thread(s) a replica"));
            let what = format!("{}{threads}", args.model.display());
            (Target::Spawn { exe, replicas: replicas.clone(), serve_args }, what)
        }
    };
    let point = args.traffic.plan(String::new(), Load::Closed { concurrency: 1 }, args.requests, args.duration_s)?;
    let title = args.title.clone().unwrap_or_else(|| format!("blipserve capacity sweep: {what}"));
    let price = match (args.hourly_price, &args.instance_type) {
        (Some(usd), _) => Some(Price::given(usd)?),
        (None, Some(instance_type)) => Some(Price::of_instance(instance_type)?),
        (None, None) => None,
    };
    let plan = SweepPlan {
        target,
        concurrency,
        point,
        warmup_requests: args.warmup,
        slo_p99_ms: args.slo_p99_ms,
        headroom: args.headroom,
        price,
    };
    create_out(&args.out)?;

    let axes = match &plan.target {
        Target::Url(_) => format!("concurrency {}", list(&plan.concurrency)),
        Target::Spawn { replicas, .. } => {
            format!("replicas {} × concurrency {}", list(replicas), list(&plan.concurrency))
        }
    };
    println!("{title}: {axes}");
    println!(
        "{} requests a point after {} warm-up, {} questions a frame; p99 objective {} ms, headroom {}",
        args.requests,
        args.warmup,
        args.traffic.questions.len(),
        args.slo_p99_ms,
        args.headroom
    );
    println!("{}", row(["point", "frames/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "p99 ≤ objective"]));
    let total = args.requests;
    // A progress line rewritten in place on a terminal; nothing in a log.
    let terminal = std::io::stderr().is_terminal();
    let status = move |line: String| {
        if terminal {
            eprint!("\r\x1b[K{line}");
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(sweep::sweep(plan, move |event| match event {
        Event::ServerStarting { replicas } => status(format!("starting a server with {replicas} replica(s)…")),
        Event::ServerReady { .. } => status(String::new()),
        Event::PointStarting { label } => status(format!("{label}: warming up")),
        Event::Progress { label, sent, elapsed } => {
            status(format!("{label}: {sent}/{total} requests sent, {:.0} s", elapsed.as_secs_f64()))
        }
        Event::PointDone(p) => {
            status(String::new());
            let (r, l) = (&p.report, &p.report.latency_ms);
            let errors = if r.errors.is_empty() {
                "0".to_string()
            } else {
                r.errors.iter().map(|(status, n)| format!("{status}:{n}")).collect::<Vec<_>>().join(" ")
            };
            println!(
                "{}",
                row([
                    p.label.clone(),
                    format!("{:.1}", r.throughput_per_s),
                    format!("{:.1}", l.p50),
                    format!("{:.1}", l.p90),
                    format!("{:.1}", l.p99),
                    format!("{:.1}", l.max),
                    errors,
                    if p.meets_slo { "yes" } else { "no" }.to_string(),
                ])
            );
        }
    }))?;

    let files = [
        write_out(&args.out, "sweep.csv", &report.csv())?,
        write_out(&args.out, "sweep.json", &serde_json::to_string_pretty(&report)?)?,
        write_out(&args.out, "sweep.svg", &chart::svg(&report, &title))?,
    ];
    print_capacity(&report);
    println!("wrote {}", files.map(|p| p.display().to_string()).join(", "));
    Ok(())
}

fn print_capacity(report: &SweepReport) {
    let (Some(c), Some(t)) = (&report.capacity, &report.scaling_target) else {
        println!(
            "sustainable capacity: none (no point answered every request with p99 ≤ {} ms): \
             lower the concurrency or raise the objective",
            report.slo_p99_ms
        );
        return;
    };
    println!(
        "sustainable capacity: {:.1} requests/s per instance at {} (p99 {:.1} ms ≤ {} ms)",
        c.requests_per_s, c.label, c.p99_ms, report.slo_p99_ms
    );
    if report.capacity_by_replicas.len() > 1 {
        for c in &report.capacity_by_replicas {
            let replicas = c.replicas.map_or(String::new(), |r| format!("{r} replica(s)"));
            println!("  {replicas}: {:.1} requests/s at {} (p99 {:.1} ms)", c.requests_per_s, c.label, c.p99_ms);
        }
    }
    println!(
        "scaling target: {:.1} {} (= {:.1} × headroom {}; CloudWatch metric {} per second per in-service instance)",
        t.value, t.unit, c.requests_per_s, report.headroom, t.metric
    );
    if let Some(cost) = &report.cost {
        println!(
            "cost: {:.4} USD per million frames at capacity, {:.4} at the scaling target ({} USD/h: {})",
            cost.usd_per_million_frames_at_capacity,
            cost.usd_per_million_frames_at_scaling_target,
            cost.usd_per_hour,
            cost.price_source
        );
    }
}

fn row<S: AsRef<str>>(cells: [S; 8]) -> String {
    let widths = [8, 9, 8, 8, 8, 8, 8, 0];
    cells.iter().zip(widths).map(|(c, w)| format!("{:<w$}", c.as_ref())).collect::<Vec<_>>().join(" ")
}

/// The values in order, repeats dropped (a point is named by its values).
fn dedup(values: &[usize]) -> Vec<usize> {
    let mut seen = Vec::new();
    for &v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

fn list(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// Progress lines on stderr, with the seconds since the start.
fn progress_line() -> impl Fn(String) + Send + Sync + 'static {
    let started = std::time::Instant::now();
    move |line| eprintln!("[{:>5.0} s] {line}", started.elapsed().as_secs_f64())
}

fn create_out(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

fn write_out(out: &std::path::Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = out.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    create_out(&args.out)?;
    let duration_s = args.duration_s.max(1.0);
    let plan = SoakPlan {
        cluster: args.cluster.plan(&args.out)?,
        traffic: Plan {
            invalid_every: args.invalid_every,
            ..args.traffic.plan(String::new(), Load::Closed { concurrency: 1 }, usize::MAX, duration_s)?
        },
        rate: args.rate,
        load_fraction: args.load,
        capacity_s: args.cluster.capacity_s,
        duration: Duration::from_secs_f64(duration_s),
        warmup: Duration::from_secs_f64(args.warmup_s.unwrap_or((duration_s / 10.0).max(10.0)).min(duration_s)),
        sample_every: Duration::from_secs_f64(args.sample_every_s.max(0.1)),
        tolerance: Tolerance {
            rss_fraction: args.rss_tolerance,
            rss_mib: args.rss_tolerance_mib,
            fds: args.fd_tolerance,
            threads: args.thread_tolerance,
            series: args.series_tolerance,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(soak::soak(plan, progress_line()))?;
    let title =
        format!("blipserve soak: {} worker(s) and a gateway, {}", args.cluster.workers, args.cluster.model.display());
    let files = [
        write_out(&args.out, "soak.csv", &report.csv())?,
        write_out(&args.out, "soak.json", &serde_json::to_string_pretty(&report)?)?,
        write_out(&args.out, "soak.svg", &crate::loadtest::soak_chart::svg(&report, &title))?,
    ];
    print_soak(&report);
    println!("wrote {}", files.map(|p| p.display().to_string()).join(", "));
    anyhow::ensure!(report.failures.is_empty(), "the soak failed:\n  {}", report.failures.join("\n  "));
    Ok(())
}

fn print_soak(report: &SoakReport) {
    let (r, a) = (&report.load, &report.accounting);
    if let Some(capacity) = report.capacity_per_s {
        println!("capacity {capacity:.1} frames/s; soak at {:.1} requests/s", report.rate_per_s);
    }
    println!(
        "{} requests in {:.0} s: {} valid answered 200, {} valid failed {:?}, invalid {:?}; p50 {:.1} ms, p99 {:.1} ms",
        r.requests,
        r.elapsed_s,
        r.ok,
        r.failed(),
        r.errors,
        r.invalid,
        r.latency_ms.p50,
        r.latency_ms.p99
    );
    println!("accounted: {a}");
    println!("{}", row(["process", "quantity", "start", "end", "growth", "allowed", "", "within"]));
    for g in &report.growth {
        println!(
            "{}",
            row([
                g.process.clone(),
                g.quantity.clone(),
                format!("{:.1}", g.start),
                format!("{:.1}", g.end),
                format!("{:+.1}", g.end - g.start),
                format!("{:.1}", g.allowed),
                String::new(),
                if g.within { "yes" } else { "NO" }.to_string(),
            ])
        );
    }
}

fn run_overload(args: OverloadArgs) -> anyhow::Result<()> {
    create_out(&args.out)?;
    let phase_s = args.phase_s.max(1.0);
    let plan = OverloadPlan {
        cluster: args.cluster.plan(&args.out)?,
        traffic: args.traffic.plan(String::new(), Load::Closed { concurrency: 1 }, usize::MAX, phase_s)?,
        factor: args.factor,
        baseline_fraction: args.baseline,
        capacity_s: args.cluster.capacity_s,
        phase: Duration::from_secs_f64(phase_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(overload::overload(plan, progress_line()))?;
    let path = write_out(&args.out, "overload.json", &serde_json::to_string_pretty(&report)?)?;
    print_overload(&report);
    println!("wrote {}", path.display());
    anyhow::ensure!(report.failures.is_empty(), "the overload run failed:\n  {}", report.failures.join("\n  "));
    Ok(())
}

fn print_overload(report: &OverloadReport) {
    println!("capacity {:.1} frames/s; overload at {}×", report.capacity_per_s, report.factor);
    println!("{}", row(["phase", "req/s", "sent", "200", "refused", "other", "p50 ms", "p99 ms"]));
    for p in &report.phases {
        let r = &p.report;
        let refused: u64 = ["429", "503"].iter().filter_map(|s| r.errors.get(*s)).sum();
        println!(
            "{}",
            row([
                p.name.clone(),
                format!("{:.1}", p.rate_per_s),
                r.requests.to_string(),
                r.ok.to_string(),
                refused.to_string(),
                (r.failed() - refused).to_string(),
                format!("{:.1}", r.latency_ms.p50),
                format!("{:.1}", r.latency_ms.p99),
            ])
        );
    }
    println!("admitted p99 during the overload / p99 before it: {:.2}", report.p99_ratio);
    for p in &report.phases {
        println!("{}: {}", p.name, p.accounting);
    }
}

fn run_cameras(args: CamerasArgs) -> anyhow::Result<()> {
    let plan = CameraPlan {
        url: args.url,
        cameras: args.cameras,
        fps: args.fps,
        duration: Duration::from_secs_f64(args.duration_s.max(0.0)),
        size: (args.width.max(16), args.height.max(16)),
        questions: args.questions,
        change_probability: args.change_probability.clamp(0.0, 1.0),
        sprite_area: (args.min_sprite.clamp(0.001, 0.5), args.max_sprite.clamp(args.min_sprite.clamp(0.001, 0.5), 0.5)),
        reuse: !args.no_reuse,
        verify_every: args.verify_every,
        loud_factor: args.loud_factor.max(0.0),
        seed: args.seed,
        timeout: Duration::from_secs_f64(args.timeout_s.max(0.001)),
        api_key: args.api_key,
        id_prefix: loadtest::id_prefix(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(cameras::run(plan))?;
    print_cameras(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.changed_answered_from_reuse == 0,
        "{} answers to changed frames came from reuse",
        report.changed_answered_from_reuse
    );
    Ok(())
}

fn print_cameras(r: &CameraReport) {
    let share = |part: u64, whole: u64| if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 };
    println!(
        "{} cameras at {} frames/s for {:.1} s: {} frames answered ({} showed a changed scene)",
        r.cameras, r.fps, r.elapsed_s, r.frames, r.frames_changed
    );
    println!(
        "answers reused: {} of {} ({:.1} %); model calls {} ; saved {} ({:.1} % of frames)",
        r.answers_reused,
        r.answers,
        share(r.answers_reused, r.answers),
        r.model_calls,
        r.model_calls_saved,
        share(r.model_calls_saved, r.frames)
    );
    println!(
        "changed frames answered from reuse: {} (smallest pet {:.2} % of the frame)",
        r.changed_answered_from_reuse,
        100.0 * r.smallest_sprite
    );
    let a = &r.agreement;
    println!(
        "reused vs fresh on {} frames: {} of {} answers the same, |ΔP| max {:.2e}, mean {:.2e}",
        a.frames, a.same_answer, a.answers, a.max_abs_dp, a.mean_abs_dp
    );
    for (name, g) in [("quiet", Some(&r.quiet)), ("loud", r.loud.as_ref())] {
        let Some(g) = g else { continue };
        println!(
            "{name} cameras ({}): sent {}, 200 {} ({:.2}/s), errors {:?}, 429 without Retry-After {}",
            g.cameras, g.sent, g.ok, g.ok_per_s, g.errors, g.refused_without_retry_after
        );
    }
    let l = &r.latency_ms;
    println!("latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}", l.p50, l.p90, l.p99, l.max);
}
