//! blipserve answers behaviour questions about pet-camera frames with BLIP visual question
//! answering.
//!
//! The modules follow a request's path: [`http`] parses and validates, the [`engine`] queues,
//! batches and runs the work on model replicas, [`model`] turns frames and question text into
//! answers (preprocessing, tokenisation, the three-part BLIP pipeline) on a [`device`] (CPU,
//! CUDA or a NeuronCore). [`config`], [`behaviors`] and [`metrics`] are shared by every role.
//! The [`gateway`] is the API tier of a two-tier deployment: it validates with [`http`]'s code
//! and forwards to pools of workers (the same service as `serve`).

pub mod behaviors;
pub mod cloudwatch;
pub mod config;
pub mod device;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod loadtest;
pub mod metrics;
pub mod model;
