//! Service configuration: built-in defaults, overridden by an optional TOML file, overridden by
//! flags and their environment twins (see `blipserve serve --help`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::behaviors::Behavior;

/// Everything the TOML file may set; keys are the flags' names with `_` for `-`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<IpAddr>,
    pub port: Option<u16>,
    pub model: Option<PathBuf>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub replicas: Option<usize>,
    pub max_batch_frames: Option<usize>,
    pub max_wait_us: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub max_questions: Option<usize>,
    pub max_question_chars: Option<usize>,
    pub max_image_side: Option<u32>,
    pub max_image_pixels: Option<u64>,
    pub shutdown_grace_s: Option<u64>,
    pub drain_delay_ms: Option<u64>,
    pub api_keys: Option<Vec<String>>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub behaviors: BTreeMap<String, Behavior>,
    /// The `[cloudwatch]` table: the `--cloudwatch-*` flags without their prefix.
    pub cloudwatch: Option<CloudwatchFile>,
}

/// Publishing to CloudWatch, as the `[cloudwatch]` table of the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudwatchFile {
    pub enabled: Option<bool>,
    pub namespace: Option<String>,
    pub interval_s: Option<u64>,
    pub high_resolution: Option<bool>,
    pub group: Option<String>,
    pub backend: Option<String>,
    pub endpoint: Option<String>,
    pub max_backlog: Option<usize>,
}

impl FileConfig {
    pub fn read(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Limits on one detect request. Each violation is a 4xx with a JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_questions: usize,
    pub max_question_chars: usize,
    pub request_timeout: Duration,
}

pub const DEFAULT_LISTEN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
pub const DEFAULT_PORT: u16 = 8080;
/// A 4K JPEG at high quality is ~3-6 MB; base64 in JSON adds a third.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
pub const DEFAULT_MAX_QUESTIONS: usize = 16;
pub const DEFAULT_MAX_QUESTION_CHARS: usize = 256;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_BATCH_FRAMES: usize = 8;
pub const DEFAULT_MAX_WAIT_US: u64 = 2_000;
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 0;
/// One datapoint a minute: the finest period standard-resolution metrics keep.
pub const DEFAULT_CLOUDWATCH_INTERVAL_S: u64 = 60;
/// Intervals kept while CloudWatch is unreachable: a day of one-minute intervals (~3 MB).
pub const DEFAULT_CLOUDWATCH_MAX_BACKLOG: usize = 1440;

pub fn socket_addr(listen: Option<IpAddr>, port: Option<u16>, file: &FileConfig) -> SocketAddr {
    SocketAddr::new(listen.or(file.listen).unwrap_or(DEFAULT_LISTEN), port.or(file.port).unwrap_or(DEFAULT_PORT))
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

    #[test]
    fn file_config_rejects_unknown_keys() {
        assert!(toml::from_str::<FileConfig>("prot = 1").is_err());
        let c: FileConfig =
            toml::from_str("port = 9000\n[behaviors.howling]\nquestion = \"is the dog howling?\"\nthreshold = 0.7\n")
                .unwrap();
        assert_eq!(c.port, Some(9000));
        assert_eq!(c.behaviors["howling"].threshold, 0.7);
    }
}
