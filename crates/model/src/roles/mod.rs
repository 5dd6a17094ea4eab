//! The command lines of the inference tier's roles: `serve` (and `worker`, the same service
//! behind a gateway), `ask` and `throughput`. The settings they share with the API tier are
//! [`blipserve_api::settings`]'s groups; [`ModelArgs`] is what every role that loads a model adds.

pub mod ask;
pub mod serve;
pub mod throughput;

use std::path::PathBuf;

use blipserve_api::frame::ImageLimits;
use blipserve_api::roles::cores;
use clap::{Args, ValueEnum};

use crate::device::DeviceChoice;
use crate::model::{AnswerMode, LoadOptions, Model};

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
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory written by models/export.py
    #[arg(long, env = "BLIPSERVE_MODEL", default_value = "models/tiny")]
    pub model: PathBuf,

    /// Device: cpu; cuda (one replica per visible GPU, each on its own) or cuda:N; neuron (one
    /// replica per visible NeuronCore, each bound to its own: NEURON_RT_VISIBLE_CORES, else
    /// NEURON_RT_NUM_CORES, else every core of the /dev/neuron* devices)
    #[arg(long, env = "BLIPSERVE_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,

    /// Intra-op threads per model replica [default: up to 4, at most the cores (a replica's
    /// matrix products stop scaling past a few threads); on an accelerator, the cores shared
    /// among its replicas]
    #[arg(long, env = "BLIPSERVE_THREADS")]
    pub threads: Option<usize>,

    /// libtorchneuron.so for --device neuron [default: found in a Python environment with torch-neuronx]
    #[arg(long, env = "BLIPSERVE_NEURON_LIB")]
    pub neuron_lib: Option<PathBuf>,

    /// Extra TorchScript operator library to load globally before the model (repeatable)
    #[arg(long = "op-library", env = "BLIPSERVE_OP_LIBRARIES", value_delimiter = ',')]
    pub op_libraries: Vec<PathBuf>,
}

impl ModelArgs {
    pub fn load_options(&self, image_limits: ImageLimits) -> LoadOptions {
        LoadOptions {
            device: self.device.first(),
            neuron_core: None,
            op_libraries: self.op_libraries.clone(),
            neuron_library: self.neuron_lib.clone(),
            image_limits,
        }
    }

    /// Intra-op threads for each of `replicas` replicas.
    pub fn threads(&self, replicas: usize) -> usize {
        let default = || match self.device {
            // An accelerator replica runs little on the CPU: its share of the cores.
            choice if choice.is_accelerator() => (cores() / replicas.max(1)).clamp(1, 4),
            _ => default_threads_and_replicas(cores()).0,
        };
        self.threads.unwrap_or_else(default).max(1)
    }
}

/// Replicas × threads per replica fill the cores: up to 4 threads a replica (beyond that a
/// replica's matrix products scale poorly), as many replicas as fit.
pub fn default_threads_and_replicas(cores: usize) -> (usize, usize) {
    let threads = cores.clamp(1, 4);
    (threads, (cores / threads).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_fill_the_cores() {
        assert_eq!(default_threads_and_replicas(1), (1, 1));
        assert_eq!(default_threads_and_replicas(2), (2, 1));
        assert_eq!(default_threads_and_replicas(16), (4, 4));
        assert_eq!(default_threads_and_replicas(6), (4, 1));
    }
}
