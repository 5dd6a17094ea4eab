//! blipserve's API tier: everything that answers HTTP without running the model, so that the
//! gateway and the load tester build, ship and start without libtorch.
//!
//! A detect request's path through this crate: [`http`] reads the body within its limits,
//! authorises and renders every error once ([`http::error::ApiError`]); [`detect`] holds the
//! request and response types and their model-independent checks; [`frame`] checks an image's
//! header. [`settings`] declares every role's flags once; [`metrics`] and [`cloudwatch`] report.
//! The [`gateway`] forwards checked requests to pools of workers; [`loadtest`] drives any
//! detect endpoint; [`otel`] traces requests through both tiers. [`roles`] are the `gateway` and `loadtest` command lines.

pub mod backend;
pub mod behaviors;
pub mod camera;
pub mod cloudwatch;
pub mod detect;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod info;
pub mod loadtest;
pub mod metrics;
pub mod oip;
pub mod otel;
pub mod roles;
pub mod settings;

pub use backend::Backend;

/// The questions the load tester and `blipserve throughput` ask by default: one per kind of
/// behaviour an alert is raised for.
pub const DEFAULT_QUESTIONS: [&str; 3] =
    ["is the dog barking?", "is the dog chewing the furniture?", "is the pet on the sofa?"];
