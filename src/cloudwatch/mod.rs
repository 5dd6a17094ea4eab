//! Request counts and latency published to CloudWatch, so an Auto Scaling group's
//! target-tracking policy can follow the load.
//!
//! The names below are the contract with `deploy/`: the scaling policies, dashboard and alarms
//! there use exactly these (a test checks it).

/// Namespace of every metric the service publishes.
pub const NAMESPACE: &str = "Blipserve";
/// Detect requests answered, whatever their status (Count). The scaling metric.
pub const REQUESTS: &str = "Requests";
/// Detect requests answered with a 5xx status (Count).
pub const ERRORS: &str = "Errors";
/// Detect requests refused with 429 because the queue was full (Count).
pub const OVERLOADED: &str = "Overloaded";
/// Detect request latency (Milliseconds, as a statistic set).
pub const LATENCY: &str = "Latency";
/// Frames waiting for a model replica, sampled every second (Count, as a statistic set).
pub const QUEUE_DEPTH: &str = "QueueDepth";

/// Dimension naming the instance's Auto Scaling group (what the scaling policies select on).
pub const DIM_GROUP: &str = "AutoScalingGroupName";
/// Dimension naming the inference backend: `neuron`, `gpu` or `cpu`.
pub const DIM_BACKEND: &str = "Backend";

/// Every metric is published under both dimension sets: the group alone (scaling policies and
/// alarms) and the group with the backend (the dashboard's per-backend view).
pub const DIMENSION_SETS: [&[&str]; 2] = [&[DIM_GROUP], &[DIM_GROUP, DIM_BACKEND]];
