//! The `--cloudwatch-*` flags shared by the roles that answer detect requests.

use std::time::Duration;

use clap::Args;

use blipserve::cloudwatch::{self, Settings};
use blipserve::config::{self, CloudwatchFile};
use blipserve::device::Device;

/// Publishing request counts and latency to CloudWatch (off unless --cloudwatch or `[cloudwatch]
/// enabled = true`). Credentials and region come from the standard AWS chain.
#[derive(Args, Debug, Clone)]
pub struct CloudwatchArgs {
    /// Publish request counts, errors, latency and queue depth to CloudWatch
    #[arg(long = "cloudwatch", env = "BLIPSERVE_CLOUDWATCH")]
    enabled: bool,

    /// CloudWatch namespace [default: Blipserve]
    #[arg(long = "cloudwatch-namespace", env = "BLIPSERVE_CLOUDWATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Seconds per published interval, aligned to the clock [default: 60]
    #[arg(long = "cloudwatch-interval-s", env = "BLIPSERVE_CLOUDWATCH_INTERVAL_S")]
    interval_s: Option<u64>,

    /// Store at 1-second resolution (high-resolution metrics) instead of 1-minute
    #[arg(long = "cloudwatch-high-resolution", env = "BLIPSERVE_CLOUDWATCH_HIGH_RESOLUTION")]
    high_resolution: bool,

    /// AutoScalingGroupName dimension [default: the instance's aws:autoscaling:groupName tag, from IMDSv2]
    #[arg(long = "cloudwatch-group", env = "BLIPSERVE_CLOUDWATCH_GROUP")]
    group: Option<String>,

    /// Backend dimension: neuron, gpu or cpu [default: from --device]
    #[arg(long = "cloudwatch-backend", env = "BLIPSERVE_CLOUDWATCH_BACKEND")]
    backend: Option<String>,

    /// CloudWatch endpoint URL instead of the region's (an emulator, a VPC endpoint)
    #[arg(long = "cloudwatch-endpoint", env = "BLIPSERVE_CLOUDWATCH_ENDPOINT")]
    endpoint: Option<String>,

    /// Intervals kept while CloudWatch is unreachable; beyond, the oldest are dropped and counted [default: 1440]
    #[arg(long = "cloudwatch-max-backlog", env = "BLIPSERVE_CLOUDWATCH_MAX_BACKLOG")]
    max_backlog: Option<usize>,
}

impl CloudwatchArgs {
    /// The publisher's settings, or `None` when publishing is off. The group is discovered from
    /// instance metadata when not configured, so this runs on the service's runtime.
    pub async fn settings(&self, file: Option<&CloudwatchFile>, device: Device) -> anyhow::Result<Option<Settings>> {
        let file = file.cloned().unwrap_or_default();
        if !(self.enabled || file.enabled.unwrap_or(false)) {
            return Ok(None);
        }
        let backend = self.backend.clone().or(file.backend).unwrap_or_else(|| {
            match device {
                Device::Cpu => "cpu",
                Device::Cuda(_) => "gpu",
                Device::Neuron => "neuron",
            }
            .to_string()
        });
        anyhow::ensure!(
            ["neuron", "gpu", "cpu"].contains(&backend.as_str()),
            "--cloudwatch-backend must be neuron, gpu or cpu, not {backend:?}"
        );
        let interval_s = self.interval_s.or(file.interval_s).unwrap_or(config::DEFAULT_CLOUDWATCH_INTERVAL_S);
        anyhow::ensure!((1..=3600).contains(&interval_s), "--cloudwatch-interval-s must be 1 to 3600");
        let group = match self.group.clone().or(file.group) {
            Some(g) if !g.trim().is_empty() => g,
            Some(_) => anyhow::bail!("--cloudwatch-group is empty"),
            None => cloudwatch::discover_group().await?,
        };
        Ok(Some(Settings {
            namespace: self.namespace.clone().or(file.namespace).unwrap_or_else(|| cloudwatch::NAMESPACE.to_string()),
            interval: Duration::from_secs(interval_s),
            high_resolution: self.high_resolution || file.high_resolution.unwrap_or(false),
            group,
            backend,
            endpoint: self.endpoint.clone().or(file.endpoint),
            max_backlog: self.max_backlog.or(file.max_backlog).unwrap_or(config::DEFAULT_CLOUDWATCH_MAX_BACKLOG).max(1),
        }))
    }
}
