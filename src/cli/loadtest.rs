//! `blipserve loadtest`: closed- or open-loop load against a detect endpoint, with a report.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use blipserve::loadtest::{self, Load, Plan, Report};

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// The detect endpoint
    #[arg(long, env = "BLIPSERVE_LOADTEST_URL", default_value = "http://127.0.0.1:8080/v1/detect")]
    url: String,

    /// Frame to send (repeatable; used in turn)
    #[arg(long = "image", default_value = "models/sample-frame.jpg")]
    images: Vec<PathBuf>,

    /// Question asked about every frame (repeatable)
    #[arg(long = "question", default_values_t = [
        "is the dog barking?".to_string(),
        "is the dog chewing the furniture?".to_string(),
        "is the pet on the sofa?".to_string(),
    ])]
    questions: Vec<String>,

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

    /// Per-request client timeout, in seconds
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,

    /// Bearer API key
    #[arg(long, env = "BLIPSERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Write the report as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,

    /// Append the report as a CSV row to this file (header written when the file is new)
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let frames = args
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load = match args.rate {
        Some(rate_per_s) => Load::Open { rate_per_s },
        None => Load::Closed { concurrency: args.concurrency },
    };
    let plan = Plan {
        url: args.url.clone(),
        load,
        max_requests: args.requests,
        max_duration: Duration::from_secs_f64(args.duration_s.max(0.0)),
        frames,
        questions: args.questions.clone(),
        api_key: args.api_key.clone(),
        timeout: Duration::from_secs_f64(args.timeout_s.max(0.001)),
    };
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
