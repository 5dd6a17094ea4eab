//! Command-line roles. Every flag has an environment-variable twin (shown by `--help`).

mod ask;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use blipserve::device::Device;
use blipserve::model::{ImageLimits, LoadOptions};

#[derive(Parser)]
#[command(name = "blipserve", version, about = "Pet-behaviour questions about camera frames, answered by BLIP VQA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer questions about one image and print one JSON object per question.
    Ask(ask::AskArgs),
}

/// Where the model comes from and what it runs on; shared by every role that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory written by models/export.py (manifest.json, three .pt parts, tokenizer.json).
    #[arg(long, env = "BLIPSERVE_MODEL", default_value = "models/tiny")]
    pub model: PathBuf,

    /// Device: cpu, cuda, cuda:N or neuron.
    #[arg(long, env = "BLIPSERVE_DEVICE", default_value = "cpu")]
    pub device: Device,

    /// Intra-op threads per model replica (default: every core).
    #[arg(long, env = "BLIPSERVE_THREADS")]
    pub threads: Option<usize>,

    /// libtorchneuron.so for --device neuron (default: found in a Python environment with torch-neuronx).
    #[arg(long, env = "BLIPSERVE_NEURON_LIB")]
    pub neuron_lib: Option<PathBuf>,

    /// Extra TorchScript operator library to load globally before the model (repeatable).
    #[arg(long = "op-library", env = "BLIPSERVE_OP_LIBRARIES", value_delimiter = ',')]
    pub op_libraries: Vec<PathBuf>,

    /// Largest accepted image side, in pixels.
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_SIDE", default_value_t = ImageLimits::default().max_width)]
    pub max_image_side: u32,

    /// Largest accepted image area, in pixels.
    #[arg(long, env = "BLIPSERVE_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
}

impl ModelArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: self.device,
            op_libraries: self.op_libraries.clone(),
            neuron_library: self.neuron_lib.clone(),
            image_limits: ImageLimits {
                max_width: self.max_image_side,
                max_height: self.max_image_side,
                max_pixels: self.max_image_pixels,
            },
        }
    }

    /// Sizes libtorch's thread pools for this process's single replica.
    pub fn apply_threads(&self) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads(self.threads.unwrap_or(cores).max(1) as i32);
        tch::set_num_interop_threads(1);
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Ask(args) => ask::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
