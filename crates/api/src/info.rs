//! `GET /v1/info` of the inference tier (`serve`, `worker`), as a type: the model, where it
//! runs, batching and limits. The gateway's is [`crate::gateway::GatewayInfo`].

use serde::Serialize;
use utoipa::ToSchema;

use crate::settings::LimitsInfo;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServeInfo {
    pub version: &'static str,
    /// `serve` or `worker`.
    pub role: &'static str,
    pub model: ModelInfo,
    /// What --device asked for: cpu, cuda (every visible GPU), cuda:N or neuron.
    pub device: String,
    pub replicas: usize,
    /// Where each replica runs.
    pub placement: Vec<ReplicaPlacement>,
    pub threads_per_replica: usize,
    pub batching: Batching,
    pub limits: LimitsInfo,
    /// Reuse and per-camera rates (`serve`; a worker leaves them to its gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cameras: Option<crate::camera::CameraInfo>,
    /// API keys are required on /v1/detect.
    pub auth: bool,
    /// Every replica loaded and warmed, and not draining.
    pub ready: bool,
    /// Frames waiting for a replica.
    pub queue_depth: usize,
}

/// One model replica's device.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicaPlacement {
    pub replica: usize,
    /// cpu, cuda:N or neuron.
    pub device: String,
    /// Device neuron: the NeuronCore this replica is bound to, as the instance numbers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neuron_core: Option<usize>,
    /// Device neuron: where the visible cores came from (NEURON_RT_VISIBLE_CORES, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_cores: Option<String>,
}

/// What the model directory's manifest says of the model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub id: String,
    pub dir: String,
    /// Where the weights came from (a checkpoint, or a random initialisation with its seed).
    #[schema(value_type = Object)]
    pub source: serde_json::Value,
    /// cpu, cuda or neuron: what the parts were exported for.
    pub target: String,
    /// The dtype of the tensors between the parts.
    pub dtype: String,
    /// What the matrix multiplications run in: the dtype, or `int8` for an export whose linear
    /// layers hold int8 weights (see `quantization`).
    pub precision: String,
    /// int8 exports: how the linear layers were quantised, as the manifest records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub quantization: Option<serde_json::Value>,
    pub static_shapes: bool,
    pub torch: String,
    pub transformers: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Batching {
    pub max_batch_frames: usize,
    pub max_wait_us: u64,
    pub queue_capacity: usize,
    /// Frames one camera may have waiting (0: no bound but the queue's).
    pub camera_queue_limit: usize,
}
