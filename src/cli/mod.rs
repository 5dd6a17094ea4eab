//! Command-line roles. Settings flags have environment-variable twins (shown by `--help`).

mod ask;
mod cloudwatch;
mod gateway;
mod loadtest;
mod serve;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use blipserve::config::{self, FileConfig};
use blipserve::device::Device;
use blipserve::model::{AnswerMode, ImageLimits, LoadOptions, Model};

#[derive(Parser)]
#[command(name = "blipserve", version, about = "Pet-behaviour questions about camera frames, answered by BLIP VQA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API with an in-process pool of model replicas (API and inference in one process).
    Serve(Box<serve::ServeArgs>),
    /// The inference tier behind `blipserve gateway`: the same service, flags and endpoints as `serve`.
    Worker(Box<serve::ServeArgs>),
    /// The API tier: validate detect requests and forward them to weighted pools of workers.
    Gateway(Box<gateway::GatewayArgs>),
    /// Answer questions about one image and print one JSON object per question.
    Ask(ask::AskArgs),
    /// Drive a detect endpoint with frames at a fixed concurrency or arrival rate, and report.
    Loadtest(Box<loadtest::LoadtestArgs>),
    /// Answer frames in-process (no HTTP) in batches, and report frames per second.
    Throughput(throughput::ThroughputArgs),
}

/// How questions are answered, as a flag.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AnswerModeArg {
    Yesno,
    Generate,
}

impl AnswerModeArg {
    /// Generate mode produces at most `max_new_tokens` tokens, or the model's limit.
    pub fn answer_mode(self, model: &Model, max_new_tokens: Option<usize>) -> AnswerMode {
        match self {
            AnswerModeArg::Yesno => AnswerMode::YesNo,
            AnswerModeArg::Generate => {
                AnswerMode::Generate { max_new_tokens: max_new_tokens.unwrap_or(model.max_new_tokens()) }
            }
        }
    }
}

/// Where the model comes from and what it runs on; shared by every role that loads a model.
/// Unset flags fall back to the configuration file, then to the defaults shown.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory written by models/export.py [default: models/tiny]
    #[arg(long, env = "BLIPSERVE_MODEL")]
    pub model: Option<PathBuf>,

    /// Device: cpu, cuda, cuda:N or neuron [default: cpu]
    #[arg(long, env = "BLIPSERVE_DEVICE")]
    pub device: Option<Device>,

    /// Intra-op threads per model replica [default: up to 4, at most the cores]
    #[arg(long, env = "BLIPSERVE_THREADS")]
    pub threads: Option<usize>,

    /// libtorchneuron.so for --device neuron [default: found in a Python environment with torch-neuronx]
    #[arg(long, env = "BLIPSERVE_NEURON_LIB")]
    pub neuron_lib: Option<PathBuf>,

    /// Extra TorchScript operator library to load globally before the model (repeatable)
    #[arg(long = "op-library", env = "BLIPSERVE_OP_LIBRARIES", value_delimiter = ',')]
    pub op_libraries: Vec<PathBuf>,

    /// Largest accepted image side, in pixels [default: 8192]
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_SIDE")]
    pub max_image_side: Option<u32>,

    /// Largest accepted image area, in pixels [default: 33177600, 8K]
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
}

impl ModelArgs {
    pub fn model_dir(&self, file: &FileConfig) -> PathBuf {
        self.model.clone().or_else(|| file.model.clone()).unwrap_or_else(|| PathBuf::from("models/tiny"))
    }

    pub fn load_options(&self, file: &FileConfig) -> anyhow::Result<LoadOptions> {
        let device = match (&self.device, &file.device) {
            (Some(d), _) => *d,
            (None, Some(d)) => d.parse()?,
            (None, None) => Device::Cpu,
        };
        let defaults = ImageLimits::default();
        let side = self.max_image_side.or(file.max_image_side).unwrap_or(defaults.max_width);
        Ok(LoadOptions {
            device,
            op_libraries: self.op_libraries.clone(),
            neuron_library: self.neuron_lib.clone(),
            image_limits: ImageLimits {
                max_width: side,
                max_height: side,
                max_pixels: self.max_image_pixels.or(file.max_image_pixels).unwrap_or(defaults.max_pixels),
            },
        })
    }

    /// Intra-op threads for one replica.
    pub fn threads(&self, file: &FileConfig) -> usize {
        self.threads.or(file.threads).unwrap_or_else(|| config::default_threads_and_replicas(cores()).0).max(1)
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ask(args) => {
            init_logging(false);
            ask::run(args)
        }
        Command::Serve(args) => serve::run(*args, serve::Role::Serve, init_logging),
        Command::Worker(args) => serve::run(*args, serve::Role::Worker, init_logging),
        Command::Gateway(args) => gateway::run(*args, init_logging),
        Command::Loadtest(args) => {
            init_logging(false);
            loadtest::run(*args)
        }
        Command::Throughput(args) => {
            init_logging(false);
            throughput::run(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
