//! The `--cloudwatch-*` flags (the `[cloudwatch]` table of a configuration file), shared by the
//! roles that answer detect requests.

use std::time::Duration;

use clap::Args;

use super::{discover_group, Settings, NAMESPACE};
use crate::Backend;

/// Publishing request counts and latency to CloudWatch (off unless --cloudwatch). Credentials and
/// region come from the standard AWS chain.
#[derive(Args, Debug, Clone)]
pub struct CloudwatchArgs {
    /// Publish request counts, errors, latency and queue depth to CloudWatch
    #[arg(long = "cloudwatch", env = "BLIPSERVE_CLOUDWATCH")]
    pub enabled: bool,

    /// CloudWatch namespace
    #[arg(long = "cloudwatch-namespace", env = "BLIPSERVE_CLOUDWATCH_NAMESPACE", default_value = NAMESPACE)]
    pub namespace: String,

    /// Seconds per published interval, aligned to the clock (60: one datapoint a minute, the
    /// finest period standard-resolution metrics keep)
    #[arg(
        long = "cloudwatch-interval-s",
        env = "BLIPSERVE_CLOUDWATCH_INTERVAL_S",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub interval_s: u64,

    /// Store at 1-second resolution (high-resolution metrics) instead of 1-minute
    #[arg(long = "cloudwatch-high-resolution", env = "BLIPSERVE_CLOUDWATCH_HIGH_RESOLUTION")]
    pub high_resolution: bool,

    /// AutoScalingGroupName dimension [default: the instance's aws:autoscaling:groupName tag, from IMDSv2]
    #[arg(long = "cloudwatch-group", env = "BLIPSERVE_CLOUDWATCH_GROUP")]
    pub group: Option<String>,

    /// Backend dimension: neuron, gpu or cpu [default: from --device]
    #[arg(long = "cloudwatch-backend", env = "BLIPSERVE_CLOUDWATCH_BACKEND")]
    pub backend: Option<Backend>,

    /// CloudWatch endpoint URL instead of the region's (an emulator, a VPC endpoint)
    #[arg(long = "cloudwatch-endpoint", env = "BLIPSERVE_CLOUDWATCH_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Intervals kept while CloudWatch is unreachable (a day of one-minute intervals, ~3 MB);
    /// beyond, the oldest are dropped and counted
    #[arg(
        long = "cloudwatch-max-backlog",
        env = "BLIPSERVE_CLOUDWATCH_MAX_BACKLOG",
        default_value_t = 1440,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_backlog: u64,
}

impl CloudwatchArgs {
    /// The publisher's settings, or `None` when publishing is off. The group is discovered from
    /// instance metadata when not configured, so this runs on the service's runtime.
    pub async fn settings(&self, backend: Backend) -> anyhow::Result<Option<Settings>> {
        if !self.enabled {
            return Ok(None);
        }
        let group = match self.group.clone() {
            Some(g) if !g.trim().is_empty() => g,
            Some(_) => anyhow::bail!("--cloudwatch-group is empty"),
            None => discover_group().await?,
        };
        Ok(Some(Settings {
            namespace: self.namespace.clone(),
            interval: Duration::from_secs(self.interval_s),
            high_resolution: self.high_resolution,
            group,
            backend: self.backend.unwrap_or(backend),
            endpoint: self.endpoint.clone(),
            max_backlog: self.max_backlog as usize,
        }))
    }
}
