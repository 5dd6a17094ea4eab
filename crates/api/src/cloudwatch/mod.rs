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
/// Answers a camera's stored answers gave instead of the model (sent when not zero; not a
/// scaling signal: Requests on the workers counts the model's work).
pub const REUSED_ANSWERS: &str = "ReusedAnswers";
/// Detect request latency (Milliseconds, as a statistic set).
pub const LATENCY: &str = "Latency";
/// Frames waiting for a model replica, sampled every second (Count, as a statistic set).
pub const QUEUE_DEPTH: &str = "QueueDepth";

/// Dimension naming the instance's Auto Scaling group (what the scaling policies select on).
pub const DIM_GROUP: &str = "AutoScalingGroupName";
/// Dimension naming the inference backend: `neuron`, `gpu` or `cpu`.
pub const DIM_BACKEND: &str = "Backend";

/// Every metric is published under both dimension sets: the group (its scaling policy and
/// alarms) and the backend alone (the whole fleet's view per backend, across groups).
pub const DIMENSION_SETS: [&[&str]; 2] = [&[DIM_GROUP], &[DIM_BACKEND]];

mod args;
mod publisher;
mod tally;

pub use args::CloudwatchArgs;
pub use publisher::{Publisher, QueueDepth, Settings};
pub use tally::{Snapshot, StatSet, Tally};

/// The instance's Auto Scaling group, from its `aws:autoscaling:groupName` tag in the instance
/// metadata (IMDSv2; the launch template must allow tags in metadata). Fails fast off EC2.
pub async fn discover_group() -> anyhow::Result<String> {
    let imds = aws_config::imds::Client::builder()
        .connect_timeout(std::time::Duration::from_millis(500))
        .read_timeout(std::time::Duration::from_secs(1))
        .max_attempts(2)
        .build();
    let name = imds.get("/latest/meta-data/tags/instance/aws:autoscaling:groupName").await.map_err(|e| {
        anyhow::anyhow!(
            "CloudWatch publishing needs the Auto Scaling group's name: pass --cloudwatch-group, or run on EC2 \
             with instance metadata tags allowed ({})",
            aws_sdk_cloudwatch::error::DisplayErrorContext(e)
        )
    })?;
    let name = name.as_ref().trim().to_string();
    anyhow::ensure!(!name.is_empty(), "the instance's aws:autoscaling:groupName tag is empty");
    Ok(name)
}
