//! Where a model replica runs (CPU, a CUDA GPU or a NeuronCore) and how TorchScript modules are
//! loaded there.
//!
//! Neuron artifacts are TorchScript files whose graphs call `neuron::forward_v2`; that operator
//! lives in `libtorchneuron.so`, which must be loaded into the process globally before the
//! module is deserialised. The same mechanism serves any custom-operator library.

mod cuda;
mod op_library;
pub mod placement;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use cuda::{cuda_device_count, cuda_support};
pub use op_library::{find_neuron_library, load_neuron_runtime, load_op_library, OpLibraryError};
pub use placement::{parse_core_list, plan, visible_neuron_cores, DeviceChoice, Host, NeuronCore, Slot};

/// A compute device for one model replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// NeuronCores. Which core a replica's modules are bound to is set when they are loaded
    /// ([`on_neuron_core`]); traced Neuron modules take and return CPU tensors.
    Neuron,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: expected cpu, cuda, cuda:N or neuron")]
    Unknown(String),
    #[error("device {device} requested but this process sees {visible} CUDA device(s) ({})", cuda_support())]
    CudaUnavailable { device: Device, visible: usize },
    #[error(transparent)]
    OpLibrary(#[from] OpLibraryError),
    #[error("cannot load TorchScript module {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("replica placement: {0}")]
    Placement(String),
}

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "neuron" | "inf2" => Ok(Device::Neuron),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Neuron => f.write_str("neuron"),
        }
    }
}

impl Device {
    /// What this device is called in the API tier, CloudWatch and the metrics.
    pub fn backend(self) -> blipserve_api::Backend {
        match self {
            Device::Cpu => blipserve_api::Backend::Cpu,
            Device::Cuda(_) => blipserve_api::Backend::Gpu,
            Device::Neuron => blipserve_api::Backend::Neuron,
        }
    }

    /// Where this device's input and output tensors live.
    pub fn tensor_device(self) -> tch::Device {
        match self {
            Device::Cpu | Device::Neuron => tch::Device::Cpu,
            Device::Cuda(n) => tch::Device::Cuda(n),
        }
    }

    /// The manifest `target` of artifacts built for this device.
    pub fn target(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Neuron => "neuron",
        }
    }

    /// Fails early, with a clear message, when the device cannot be used in this process.
    pub fn check_available(self) -> Result<(), DeviceError> {
        if let Device::Cuda(n) = self {
            let visible = cuda_device_count();
            if n >= visible {
                return Err(DeviceError::CudaUnavailable { device: self, visible });
            }
        }
        Ok(())
    }
}

/// Loads, globally and before any module, every operator library a replica needs: for Neuron the
/// runtime and libtorchneuron.so (explicit path, or found in a Python environment), then the
/// extra libraries asked for. Returns the libraries loaded, in order.
pub fn load_operator_libraries(
    device: Device,
    neuron_library: Option<&Path>,
    extra: &[PathBuf],
) -> Result<Vec<PathBuf>, DeviceError> {
    let mut loaded = Vec::new();
    if device == Device::Neuron {
        load_neuron_runtime()?;
        loaded.push(load_op_library(&find_neuron_library(neuron_library)?)?);
    }
    for lib in extra {
        loaded.push(load_op_library(lib)?);
    }
    Ok(loaded)
}

/// Loads a TorchScript module onto `device` in evaluation mode.
///
/// Operator libraries the module needs must have been loaded first ([`load_op_library`]); a
/// missing one is reported with the operator's name and what provides it.
pub fn load_module(path: &Path, device: Device) -> Result<tch::CModule, DeviceError> {
    let mut module = tch::CModule::load_on_device(path, device.tensor_device())
        .map_err(|e| DeviceError::Load { path: path.to_path_buf(), message: explain_load_error(&e.to_string()) })?;
    module.f_set_eval().map_err(|e| DeviceError::Load { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(module)
}

/// Runs `load` (which loads one replica's modules) with the Neuron runtime binding what it loads
/// to NeuronCore `core` (an index among the cores this process sees), through the export's
/// placement helper (`neuron_placement.pt`, see models/export.py). The runtime's default cores
/// are process-wide, so replicas are placed one at a time, and the default is restored after.
/// Without a helper (an export older than the helper) the runtime chooses the core.
pub fn on_neuron_core<T>(
    helper: Option<&Path>,
    core: usize,
    load: impl FnOnce() -> Result<T, DeviceError>,
) -> Result<T, DeviceError> {
    static PLACING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _placing = PLACING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(helper) = helper else {
        tracing::warn!(core, "this Neuron export has no placement helper: the runtime chooses each module's core");
        return load();
    };
    let placement = load_module(helper, Device::Neuron)?;
    let visible = set_default_neuron_cores(&placement, core as i64, 1)?;
    if core as i64 >= visible {
        set_default_neuron_cores(&placement, -1, -1)?;
        return Err(DeviceError::Placement(format!(
            "NeuronCore index {core} asked for, but the Neuron runtime sees {visible} core(s)"
        )));
    }
    let loaded = load();
    set_default_neuron_cores(&placement, -1, -1)?;
    loaded
}

/// Calls the placement helper; returns the NeuronCores the runtime sees.
fn set_default_neuron_cores(placement: &tch::CModule, start: i64, count: i64) -> Result<i64, DeviceError> {
    let failed = |message: String| DeviceError::Placement(format!("setting NeuronCores {start}+{count}: {message}"));
    match placement.forward_is(&[tch::IValue::Int(start), tch::IValue::Int(count)]) {
        Ok(tch::IValue::Int(visible)) => Ok(visible),
        Ok(other) => Err(failed(format!("the helper returned {other:?}, not a core count"))),
        Err(e) => Err(failed(e.to_string().lines().next().unwrap_or_default().to_string())),
    }
}

/// libtorch's message for an unregistered operator is long and names no remedy.
fn explain_load_error(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    let Some(rest) = message.split("Unknown builtin op: ").nth(1) else {
        return first_line.to_string();
    };
    let op: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '.').collect();
    let remedy = if op.starts_with("neuron::") {
        "this is a Neuron artifact: run with --device neuron (which loads libtorchneuron.so from \
         --neuron-lib, BLIPSERVE_NEURON_LIB or a Python environment with torch-neuronx)"
    } else {
        "load the library that registers it with --op-library"
    };
    format!("the module calls operator `{op}`, which no loaded operator library provides; {remedy}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!("Neuron".parse::<Device>().unwrap(), Device::Neuron);
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn names_the_missing_operator() {
        let msg = "Unknown builtin op: neuron::forward_v2.\nCould not find any similar ops";
        let explained = explain_load_error(msg);
        assert!(explained.contains("`neuron::forward_v2`"), "{explained}");
        assert!(explained.contains("--device neuron"), "{explained}");
    }
}
