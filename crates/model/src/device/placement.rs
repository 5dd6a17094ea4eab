//! Which device each model replica runs on: the replica plan.
//!
//! On an accelerator a replica is worth one device: with `--device neuron` one replica per
//! NeuronCore the process sees, replica *i* bound to the *i*-th visible core; with `--device
//! cuda` one replica per visible GPU, replica *i* on `cuda:i`. The plan is made from what the
//! host offers ([`Host`]), so that it can be tested here with any environment.
//!
//! Placement is in-process. libtorchneuron's runtime class (`torch.classes.neuron.Runtime`, what
//! torch-neuronx's `neuron_cores_context` drives) sets the NeuronCores that the modules loaded
//! next are bound to; a Neuron export carries a scripted helper that calls it
//! ([`super::on_neuron_core`]). One process keeps one queue and batcher for all cores, so the
//! load balancer sees one target per instance and a free core takes the next batch.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::{Device, DeviceError};

/// NeuronCores per Inferentia2 device (`/dev/neuronN`): an inf2.xlarge has one device, two cores.
pub const NEURON_CORES_PER_DEVICE: usize = 2;

/// What `--device` asks for. `cuda` without an index means every visible GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    AnyGpu,
    Gpu(usize),
    Neuron,
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if matches!(s.trim().to_ascii_lowercase().as_str(), "cuda" | "gpu") {
            return Ok(DeviceChoice::AnyGpu);
        }
        Ok(match s.parse::<Device>()? {
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda(n) => DeviceChoice::Gpu(n),
            Device::Neuron => DeviceChoice::Neuron,
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::AnyGpu => f.write_str("cuda"),
            other => other.first().fmt(f),
        }
    }
}

impl DeviceChoice {
    /// The device of a single replica (`ask`, `throughput`): the first GPU for `cuda`.
    pub fn first(self) -> Device {
        match self {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::AnyGpu => Device::Cuda(0),
            DeviceChoice::Gpu(n) => Device::Cuda(n),
            DeviceChoice::Neuron => Device::Neuron,
        }
    }

    pub fn is_accelerator(self) -> bool {
        self != DeviceChoice::Cpu
    }
}

/// A NeuronCore as the runtime numbers it for this process (`index`, among the visible cores)
/// and as the instance numbers it (`id`, what `NEURON_RT_VISIBLE_CORES` lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeuronCore {
    pub index: usize,
    pub id: usize,
}

/// Where one replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub device: Device,
    pub neuron_core: Option<NeuronCore>,
}

impl Slot {
    fn on(device: Device) -> Slot {
        Slot { device, neuron_core: None }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.neuron_core {
            Some(core) => write!(f, "neuron core {}", core.id),
            None => self.device.fmt(f),
        }
    }
}

/// What the host offers the replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Replicas that fill the CPU cores (the CPU default).
    pub cpu_replicas: usize,
    /// CUDA devices visible to the process.
    pub gpus: usize,
    /// NeuronCores visible to the process, by instance core number.
    pub neuron_cores: Vec<usize>,
    /// Where `neuron_cores` came from, for messages and `/v1/info`.
    pub neuron_source: String,
}

impl Host {
    /// Looks at what `choice` needs: CUDA's device count, or the visible NeuronCores.
    pub fn detect(choice: DeviceChoice, cpu_replicas: usize) -> Result<Host, DeviceError> {
        let mut host = Host { cpu_replicas, gpus: 0, neuron_cores: Vec::new(), neuron_source: String::new() };
        match choice {
            DeviceChoice::Cpu => {}
            DeviceChoice::AnyGpu | DeviceChoice::Gpu(_) => host.gpus = super::cuda_device_count(),
            DeviceChoice::Neuron => {
                let devices = neuron_devices(Path::new("/dev"));
                let (cores, source) = visible_neuron_cores(|name| std::env::var(name).ok(), devices)?;
                host.neuron_cores = cores;
                host.neuron_source = source;
            }
        }
        Ok(host)
    }
}

/// `/dev/neuronN` devices present.
fn neuron_devices(dev: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dev) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("neuron").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// The NeuronCores this process sees, as the Neuron runtime decides: `NEURON_RT_VISIBLE_CORES`
/// (a list of cores and ranges, "0-1", "4,5", "0-3,8"), else `NEURON_RT_NUM_CORES` (that many
/// cores, numbered from 0 here: the runtime picks free ones), else every core of the `devices`
/// present. Returns the cores and where they came from.
pub fn visible_neuron_cores(
    env: impl Fn(&str) -> Option<String>,
    devices: usize,
) -> Result<(Vec<usize>, String), DeviceError> {
    if let Some(list) = env("NEURON_RT_VISIBLE_CORES").filter(|v| !v.trim().is_empty()) {
        let cores = parse_core_list(&list)?;
        return Ok((cores, format!("NEURON_RT_VISIBLE_CORES={}", list.trim())));
    }
    if let Some(count) = env("NEURON_RT_NUM_CORES").filter(|v| !v.trim().is_empty()) {
        let n: usize = count
            .trim()
            .parse()
            .map_err(|_| DeviceError::Placement(format!("NEURON_RT_NUM_CORES={count:?} is not a number")))?;
        return Ok(((0..n).collect(), format!("NEURON_RT_NUM_CORES={n}")));
    }
    let cores = devices * NEURON_CORES_PER_DEVICE;
    Ok(((0..cores).collect(), format!("{devices} Neuron device(s) under /dev")))
}

/// Parses a `NEURON_RT_VISIBLE_CORES` list: core numbers and inclusive ranges, comma-separated,
/// each core at most once.
pub fn parse_core_list(list: &str) -> Result<Vec<usize>, DeviceError> {
    let bad = |why: &str| DeviceError::Placement(format!("NEURON_RT_VISIBLE_CORES={list:?}: {why}"));
    let number = |s: &str| s.trim().parse::<usize>().map_err(|_| bad(&format!("{:?} is not a core number", s.trim())));
    let mut cores = Vec::new();
    for item in list.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad(&format!("range {first}-{last} runs backwards")));
        }
        for core in first..=last {
            if cores.contains(&core) {
                return Err(bad(&format!("core {core} is listed twice")));
            }
            cores.push(core);
        }
    }
    Ok(cores)
}

/// The replica plan: which device (and NeuronCore) each replica gets. `replicas` is the
/// `--replicas` flag; without it an accelerator gets one replica per device, the CPU
/// `host.cpu_replicas`. A plan the host cannot hold is refused with the reason.
pub fn plan(choice: DeviceChoice, replicas: Option<usize>, host: &Host) -> Result<Vec<Slot>, DeviceError> {
    let replicas = replicas.map(|n| n.max(1));
    match choice {
        DeviceChoice::Cpu => Ok(vec![Slot::on(Device::Cpu); replicas.unwrap_or(host.cpu_replicas).max(1)]),
        DeviceChoice::AnyGpu => {
            if host.gpus == 0 {
                return Err(DeviceError::Placement(format!(
                    "--device cuda, but this process sees no CUDA device ({})",
                    super::cuda_support()
                )));
            }
            // More replicas than GPUs share them round-robin: a GPU runs several streams.
            Ok((0..replicas.unwrap_or(host.gpus)).map(|i| Slot::on(Device::Cuda(i % host.gpus))).collect())
        }
        DeviceChoice::Gpu(n) => {
            if n >= host.gpus {
                return Err(DeviceError::CudaUnavailable { device: Device::Cuda(n), visible: host.gpus });
            }
            Ok(vec![Slot::on(Device::Cuda(n)); replicas.unwrap_or(1)])
        }
        DeviceChoice::Neuron => {
            let cores = &host.neuron_cores;
            if cores.is_empty() {
                return Err(DeviceError::Placement(format!(
                    "--device neuron, but no NeuronCore is visible ({}); run on an inf2 instance with \
                     /dev/neuron* passed to the container, or set NEURON_RT_VISIBLE_CORES",
                    host.neuron_source
                )));
            }
            let n = replicas.unwrap_or(cores.len());
            if n > cores.len() {
                // Two replicas on one core would take turns on it: no gain, twice the memory.
                return Err(DeviceError::Placement(format!(
                    "{n} replicas but {} NeuronCore(s) visible ({}): at most one replica per core",
                    cores.len(),
                    host.neuron_source
                )));
            }
            Ok(cores
                .iter()
                .take(n)
                .enumerate()
                .map(|(index, &id)| Slot { device: Device::Neuron, neuron_core: Some(NeuronCore { index, id }) })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn host(gpus: usize, neuron_cores: Vec<usize>) -> Host {
        Host { cpu_replicas: 3, gpus, neuron_cores, neuron_source: "test".into() }
    }

    #[test]
    fn device_choice_keeps_any_gpu_apart_from_gpu_zero() {
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::AnyGpu);
        assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::AnyGpu);
        assert_eq!("cuda:0".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu(0));
        assert_eq!("neuron".parse::<DeviceChoice>().unwrap(), DeviceChoice::Neuron);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::AnyGpu.to_string(), "cuda");
        assert_eq!(DeviceChoice::Gpu(2).to_string(), "cuda:2");
        assert_eq!(DeviceChoice::AnyGpu.first(), Device::Cuda(0));
    }

    #[test]
    fn core_lists_parse_like_the_neuron_runtime() {
        assert_eq!(parse_core_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_list("3").unwrap(), vec![3]);
        assert_eq!(parse_core_list("0-3, 8 ,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        for bad in ["", "a", "1-", "-2", "3-1", "0-2,1", "0,,1", "1.5"] {
            let err = parse_core_list(bad).unwrap_err().to_string();
            assert!(err.contains("NEURON_RT_VISIBLE_CORES"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn visible_cores_come_from_the_environment_then_the_devices() {
        let (cores, source) = visible_neuron_cores(env(&[("NEURON_RT_VISIBLE_CORES", "4-5")]), 6).unwrap();
        assert_eq!((cores, source.as_str()), (vec![4, 5], "NEURON_RT_VISIBLE_CORES=4-5"));
        // The explicit list wins over the count.
        let both = env(&[("NEURON_RT_VISIBLE_CORES", "2"), ("NEURON_RT_NUM_CORES", "8")]);
        assert_eq!(visible_neuron_cores(both, 1).unwrap().0, vec![2]);
        assert_eq!(visible_neuron_cores(env(&[("NEURON_RT_NUM_CORES", "3")]), 12).unwrap().0, vec![0, 1, 2]);
        assert!(visible_neuron_cores(env(&[("NEURON_RT_NUM_CORES", "two")]), 1).is_err());
        // inf2.xlarge: one device, two cores; inf2.48xlarge: twelve devices.
        assert_eq!(visible_neuron_cores(env(&[]), 1).unwrap().0, vec![0, 1]);
        assert_eq!(visible_neuron_cores(env(&[]), 12).unwrap().0.len(), 24);
        assert!(visible_neuron_cores(env(&[]), 0).unwrap().0.is_empty());
    }

    #[test]
    fn counts_neuron_devices_by_name() {
        let dev = tempfile::tempdir().unwrap();
        for name in ["neuron0", "neuron1", "neuron", "neuronx", "null"] {
            std::fs::write(dev.path().join(name), b"").unwrap();
        }
        assert_eq!(neuron_devices(dev.path()), 2);
        assert_eq!(neuron_devices(&dev.path().join("missing")), 0);
    }

    #[test]
    fn one_replica_per_neuron_core_each_bound_to_its_own() {
        let slots = plan(DeviceChoice::Neuron, None, &host(0, vec![4, 5])).unwrap();
        let cores: Vec<_> = slots.iter().map(|s| s.neuron_core.unwrap()).collect();
        assert_eq!(cores, vec![NeuronCore { index: 0, id: 4 }, NeuronCore { index: 1, id: 5 }]);
        assert!(slots.iter().all(|s| s.device == Device::Neuron));
        assert_eq!(slots[1].to_string(), "neuron core 5");
        // inf2.24xlarge: twelve cores, twelve replicas.
        assert_eq!(plan(DeviceChoice::Neuron, None, &host(0, (0..12).collect())).unwrap().len(), 12);
        // Fewer replicas than cores: the first cores.
        assert_eq!(plan(DeviceChoice::Neuron, Some(1), &host(0, vec![4, 5])).unwrap().len(), 1);
    }

    #[test]
    fn impossible_placements_are_refused_with_the_reason() {
        let err = plan(DeviceChoice::Neuron, Some(3), &host(0, vec![0, 1])).unwrap_err().to_string();
        assert!(err.contains("3 replicas but 2 NeuronCore(s)"), "{err}");
        let err = plan(DeviceChoice::Neuron, None, &host(0, vec![])).unwrap_err().to_string();
        assert!(err.contains("no NeuronCore is visible"), "{err}");
        let err = plan(DeviceChoice::AnyGpu, None, &host(0, vec![])).unwrap_err().to_string();
        assert!(err.contains("no CUDA device"), "{err}");
        let err = plan(DeviceChoice::Gpu(2), None, &host(2, vec![])).unwrap_err().to_string();
        assert!(err.contains("cuda:2") && err.contains("2 CUDA device"), "{err}");
    }

    #[test]
    fn one_replica_per_gpu_or_all_on_the_one_asked_for() {
        let devices = |slots: Vec<Slot>| slots.into_iter().map(|s| s.device).collect::<Vec<_>>();
        let any = devices(plan(DeviceChoice::AnyGpu, None, &host(2, vec![])).unwrap());
        assert_eq!(any, vec![Device::Cuda(0), Device::Cuda(1)]);
        let shared = devices(plan(DeviceChoice::AnyGpu, Some(3), &host(2, vec![])).unwrap());
        assert_eq!(shared, vec![Device::Cuda(0), Device::Cuda(1), Device::Cuda(0)]);
        let one = devices(plan(DeviceChoice::Gpu(1), Some(2), &host(2, vec![])).unwrap());
        assert_eq!(one, vec![Device::Cuda(1), Device::Cuda(1)]);
    }

    #[test]
    fn cpu_replicas_fill_the_cores_unless_asked() {
        assert_eq!(plan(DeviceChoice::Cpu, None, &host(0, vec![])).unwrap().len(), 3);
        assert_eq!(plan(DeviceChoice::Cpu, Some(0), &host(0, vec![])).unwrap(), vec![Slot::on(Device::Cpu)]);
    }
}
