//! blipserve's inference tier: BLIP VQA through libtorch, behind the HTTP API of
//! [`blipserve_api`].
//!
//! The modules follow a request's path: [`http`] reads, authorises and checks a detect request
//! and renders the answer; [`infer`] is the one facade that answers a checked request
//! (tokenising, preprocessing, queueing, thresholds, stage metrics); the [`engine`] queues,
//! batches and runs the work on model replicas; [`model`] turns frames and question text into
//! answers (preprocessing, tokenisation, the three-part BLIP pipeline) on a [`device`] (CPU,
//! CUDA or a NeuronCore). [`roles`] are the command lines of `serve`, `worker`, `ask` and
//! `throughput`.

pub mod device;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod infer;
pub mod model;
pub mod roles;
