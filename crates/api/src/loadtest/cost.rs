//! What a frame costs: an instance's hourly price over the frames it answers in an hour.
//!
//! A sweep measures one instance's sustainable capacity; with the instance's price that gives the
//! cost per million frames when the fleet runs at that capacity, and at the scaling target (what a
//! target-tracking fleet actually runs at, with its headroom). Comparing two sweeps (Inf2 and GPU,
//! each on its own instance type) compares what the same traffic costs on each.

use serde::Serialize;

/// Where the table's prices come from, and when: they change, so check before relying on them.
pub const PRICES_AS_OF: &str = "AWS EC2 on-demand, Linux, us-east-1, as listed in 2024";

/// USD per hour of the instance types the deployment templates allow.
pub const PRICES: &[(&str, f64)] = &[
    ("inf2.xlarge", 0.7582),
    ("inf2.8xlarge", 1.9679),
    ("inf2.24xlarge", 6.4906),
    ("inf2.48xlarge", 12.9813),
    ("g5.xlarge", 1.006),
    ("g5.2xlarge", 1.212),
    ("g5.4xlarge", 1.624),
    ("g5.12xlarge", 5.672),
    ("g6.xlarge", 0.8048),
    ("g6.2xlarge", 0.9776),
    ("g6.4xlarge", 1.3232),
    ("g6.12xlarge", 4.6016),
    ("c7i.2xlarge", 0.357),
    ("c7i.4xlarge", 0.714),
    ("c7i.8xlarge", 1.428),
];

/// An instance's hourly price and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Price {
    pub usd_per_hour: f64,
    /// `--hourly-price`, or the table's instance type and date.
    pub source: String,
}

impl Price {
    /// A price given by hand.
    pub fn given(usd_per_hour: f64) -> anyhow::Result<Price> {
        anyhow::ensure!(usd_per_hour.is_finite() && usd_per_hour > 0.0, "the hourly price must be positive");
        Ok(Price { usd_per_hour, source: "--hourly-price".into() })
    }

    /// The table's price of `instance_type`.
    pub fn of_instance(instance_type: &str) -> anyhow::Result<Price> {
        let Some(&(_, usd_per_hour)) = PRICES.iter().find(|(t, _)| *t == instance_type) else {
            let known: Vec<&str> = PRICES.iter().map(|(t, _)| *t).collect();
            anyhow::bail!(
                "no price for instance type {instance_type:?}: give --hourly-price, or one of {}",
                known.join(", ")
            );
        };
        Ok(Price { usd_per_hour, source: format!("{instance_type}, {PRICES_AS_OF}") })
    }

    /// USD per million frames when one instance answers `frames_per_s`; None without throughput.
    pub fn per_million_frames(&self, frames_per_s: f64) -> Option<f64> {
        (frames_per_s > 0.0).then(|| self.usd_per_hour / (frames_per_s * 3600.0) * 1e6)
    }
}

/// The sweep's cost figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub usd_per_hour: f64,
    pub price_source: String,
    /// At the sustainable capacity: the least a frame can cost on this instance type.
    pub usd_per_million_frames_at_capacity: f64,
    /// At the scaling target (capacity × headroom): what a target-tracking fleet pays.
    pub usd_per_million_frames_at_scaling_target: f64,
}

impl Cost {
    pub fn new(price: &Price, capacity_per_s: f64, headroom: f64) -> Option<Cost> {
        Some(Cost {
            usd_per_hour: price.usd_per_hour,
            price_source: price.source.clone(),
            usd_per_million_frames_at_capacity: price.per_million_frames(capacity_per_s)?,
            usd_per_million_frames_at_scaling_target: price.per_million_frames(capacity_per_s * headroom)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_frames_cost_the_hours_they_take() {
        // 10 frames/s: a million frames take 100,000 s = 27.78 h.
        let price = Price::given(0.9).unwrap();
        let cost = price.per_million_frames(10.0).unwrap();
        assert!((cost - 0.9 * 1e6 / 36_000.0).abs() < 1e-9, "{cost}");
        assert_eq!(price.per_million_frames(0.0), None);
        let at = Cost::new(&price, 10.0, 0.5).unwrap();
        assert!((at.usd_per_million_frames_at_scaling_target - 2.0 * cost).abs() < 1e-9);
    }

    #[test]
    fn the_table_covers_the_templates_instance_types_and_refuses_others() {
        let inf2 = Price::of_instance("inf2.xlarge").unwrap();
        assert!(inf2.usd_per_hour > 0.0 && inf2.source.contains("inf2.xlarge") && inf2.source.contains("2024"));
        let err = Price::of_instance("p5.48xlarge").unwrap_err().to_string();
        assert!(err.contains("--hourly-price") && err.contains("g6.xlarge"), "{err}");
        assert!(Price::given(0.0).is_err() && Price::given(f64::NAN).is_err());
    }
}
