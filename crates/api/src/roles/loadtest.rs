//! `blipserve loadtest`: closed- or open-loop load against a detect endpoint, with a report;
//! `blipserve loadtest sweep`: the capacity sweep over replicas × concurrency, with a chart.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::loadtest::cost::Price;
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
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

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
        ("sweep.csv", report.csv()),
        ("sweep.json", serde_json::to_string_pretty(&report)?),
        ("sweep.svg", chart::svg(&report, &title)),
    ];
    for (name, contents) in &files {
        let path = args.out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    print_capacity(&report);
    println!("wrote {}", files.map(|(name, _)| args.out.join(name).display().to_string()).join(", "));
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
