//! The gateway's pools, the `[[pools]]` of its configuration file (`blipserve gateway --config
//! gateway.toml`):
//!
//! ```toml
//! listen = "0.0.0.0"
//! port = 8080
//! [[pools]]
//! name = "inf2"
//! backend = "neuron"      # neuron | gpu | cpu
//! weight = 100
//! urls = ["http://internal-inf2-lb.example:8080"]
//! load_balancer = true    # one URL for many workers: see pools.rs on ejection
//! [[pools]]
//! name = "gpu"
//! backend = "gpu"
//! weight = 0
//! urls = ["http://internal-gpu-lb.example:8080"]
//! load_balancer = true
//! ```
//!
//! The file's other keys are the gateway's flags (see [`crate::settings`]). SIGHUP re-reads the
//! file and applies its `[[pools]]` live; other settings apply at the next start.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::settings::ConfigFile;
pub use crate::Backend;

/// The largest weight a pool may have.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One pool: workers (or one internal load balancer in front of them) that share a weight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub backend: Backend,
    /// The pool's share of requests is its weight over the sum of the weights. 0: a standby,
    /// used only when no pool with a weight has a healthy worker.
    pub weight: u32,
    /// Base URLs, `http://host:port` (a path prefix is allowed); `/v1/detect` and `/ready` are
    /// appended.
    pub urls: Vec<String>,
    /// The URLs are load balancers in front of several workers (an internal ALB): one failure is
    /// not a reason to eject one, and a retry may go back to it.
    #[serde(default)]
    pub load_balancer: bool,
}

impl PoolSpec {
    pub fn is_load_balancer(&self) -> bool {
        self.load_balancer
    }
}

/// The pools a configuration file describes, their URLs normalised and every rule checked.
pub fn pools_of(file: &ConfigFile) -> anyhow::Result<Vec<PoolSpec>> {
    let mut pools: Vec<PoolSpec> = file.section("pools")?;
    for pool in &mut pools {
        for url in &mut pool.urls {
            *url = normalize_url(url).map_err(|e| anyhow::anyhow!("pool {:?}: {e}", pool.name))?;
        }
    }
    check_pools(&pools).map_err(anyhow::Error::msg)?;
    Ok(pools)
}

/// `http://host[:port][/prefix]` without a trailing slash.
fn normalize_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("URL {url:?}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("URL {url:?}: only http:// is supported (workers sit on a private network)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {url:?} has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(format!("URL {url:?}: no query, fragment or credentials"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The rules every set of pools must follow, from the file or the admin API.
pub fn check_pools(pools: &[PoolSpec]) -> Result<(), String> {
    if pools.is_empty() {
        return Err("no [[pools]]: at least one pool of workers is needed".into());
    }
    let mut names = BTreeSet::new();
    let mut urls = BTreeSet::new();
    for pool in pools {
        let valid_name = !pool.name.is_empty()
            && pool.name.len() <= 64
            && pool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(format!("pool name {:?} must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'", pool.name));
        }
        if !names.insert(pool.name.as_str()) {
            return Err(format!("two pools are named {:?}", pool.name));
        }
        if pool.weight > MAX_WEIGHT {
            return Err(format!("pool {:?}: weight {} is over {MAX_WEIGHT}", pool.name, pool.weight));
        }
        if pool.urls.is_empty() {
            return Err(format!("pool {:?} has no urls", pool.name));
        }
        for url in &pool.urls {
            if !urls.insert(url.as_str()) {
                return Err(format!("worker {url} is listed twice"));
            }
        }
    }
    check_weights(pools.iter().map(|p| p.weight))
}

pub fn check_weights(weights: impl IntoIterator<Item = u32>) -> Result<(), String> {
    if weights.into_iter().all(|w| w == 0) {
        return Err("every pool has weight 0: at least one must have a positive weight".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "0.0.0.0"
port = 8080
[[pools]]
name = "inf2"
backend = "neuron"      # neuron | gpu | cpu
weight = 100
urls = ["http://internal-inf2-lb.example:8080"]
load_balancer = true
[[pools]]
name = "gpu"
backend = "gpu"
weight = 0
urls = ["http://internal-gpu-lb.example:8080/"]
"#;

    fn parse(text: &str) -> anyhow::Result<Vec<PoolSpec>> {
        pools_of(&ConfigFile { path: None, table: text.parse().map_err(anyhow::Error::msg)? })
    }

    #[test]
    fn the_documented_example_parses() {
        let pools = parse(EXAMPLE).unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].backend, Backend::Neuron);
        assert_eq!(pools[1].weight, 0);
        assert_eq!(pools[1].urls, ["http://internal-gpu-lb.example:8080"]);
        assert!(pools[0].is_load_balancer() && !pools[1].is_load_balancer());
    }
    #[test]
    fn bad_pools_are_refused() {
        let bad = [
            ("port = 1\n", "no [[pools]]"),
            ("[[pools]]\nname = \"a\"\nbackend = \"tpu\"\nweight = 1\nurls = [\"http://h:1\"]\n", "unknown variant"),
            ("[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 0\nurls = [\"http://h:1\"]\n", "weight 0"),
            ("[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurls = []\n", "no urls"),
            ("[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurls = [\"https://h:1\"]\n", "only http://"),
            ("[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurls = [\"h:1\"]\n", "URL"),
            (
                "[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurls = [\"http://h:1\"]\n\
                 [[pools]]\nname = \"a\"\nbackend = \"cpu\"\nweight = 1\nurls = [\"http://h:2\"]\n",
                "two pools",
            ),
            (
                "[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurls = [\"http://h:1\", \"http://h:1/\"]\n",
                "twice",
            ),
            ("[[pools]]\nname = \"a\"\nbackend = \"gpu\"\nweight = 1\nurl = [\"http://h:1\"]\n", "unknown field"),
        ];
        for (text, want) in bad {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
