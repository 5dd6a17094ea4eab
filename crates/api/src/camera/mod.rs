//! Camera-aware serving. A detect request may name its camera (the `camera` field or the
//! `x-camera-id` header); where a request first arrives (`serve`, or the gateway in two tiers)
//! [`Cameras`] then
//!
//! - admits the frame against the camera's token bucket ([`store`]), so that one camera
//!   sending too fast gets 429 `camera_rate_limited` while the others are unaffected;
//! - compares the frame's [`signature::Signature`] with the one whose answers the camera's state
//!   holds: unchanged, the questions already answered are answered from the state (marked
//!   `reused`, with their age and the request that computed them) and only new questions go to
//!   the model; changed, the model answers everything and the state is replaced.
//!
//! The state lives in a [`store::Store`]: this process's memory by default, or Redis, shared by a
//! fleet. A store that cannot answer in time means no reuse and no rate limit for that request
//! (counted in `/metrics`), never an error for the client. The engine's queue, in every role
//! that runs the model, also knows the camera: batches are formed round-robin across cameras.

mod layer;
pub mod signature;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};

pub use layer::{Cameras, FrameVerdict, Plan};

use crate::http::error::ApiError;

/// The request header naming the camera (the body's `camera` field is the other way).
pub const CAMERA_HEADER: &str = "x-camera-id";
/// The longest camera id, in bytes.
pub const MAX_CAMERA_ID: usize = 128;

/// A validated camera id: 1 to [`MAX_CAMERA_ID`] ASCII letters, digits and `-_.:@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CameraId(Arc<str>);

impl CameraId {
    pub fn parse(text: &str) -> Result<CameraId, ApiError> {
        if text.is_empty() {
            return Err(ApiError::BadCamera("the camera id is empty".into()));
        }
        if text.len() > MAX_CAMERA_ID {
            return Err(ApiError::BadCamera(format!(
                "the camera id is {} bytes long; at most {MAX_CAMERA_ID}",
                text.len()
            )));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:@".contains(*c))) {
            return Err(ApiError::BadCamera(format!(
                "the camera id holds {c:?}; use ASCII letters, digits and - _ . : @"
            )));
        }
        Ok(CameraId(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl std::fmt::Display for CameraId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reuse and per-camera admission, where requests first arrive (`serve`, `gateway`).
#[derive(Args, Debug, Clone)]
pub struct CameraArgs {
    /// Where camera state (last frame signature, answers, rate buckets) lives: `memory` (this
    /// process) or `redis://HOST:PORT[/DB]` (shared by every gateway or server of a fleet)
    #[arg(long, env = "BLIPSERVE_CAMERA_STORE", default_value = "memory")]
    pub camera_store: String,

    /// Reuse a named camera's answers for an unchanged frame (false: every frame goes to the model)
    #[arg(long, env = "BLIPSERVE_CAMERA_REUSE", default_value_t = true, action = ArgAction::Set)]
    pub camera_reuse: bool,

    /// Oldest stored answer that may be reused, in ms (the most a reused answer can lag the scene
    /// when the change detector misses)
    #[arg(long, env = "BLIPSERVE_CAMERA_REUSE_MAX_AGE_MS", default_value_t = 5_000)]
    pub camera_reuse_max_age_ms: u64,

    /// A frame has changed when any block of its signature differs from the stored one by more
    /// than this, in levels of 255 (mean luma, mean chroma or luma spread)
    #[arg(long, env = "BLIPSERVE_CAMERA_CHANGE_THRESHOLD", default_value_t = 10)]
    pub camera_change_threshold: u8,

    /// Frames per second one camera may send, across the fleet when the store is shared (a token
    /// bucket; beyond it 429 `camera_rate_limited`); 0: no limit
    #[arg(long, env = "BLIPSERVE_CAMERA_RATE", default_value_t = 10.0)]
    pub camera_rate: f64,

    /// Frames one camera may send at once above its rate (the token bucket's size)
    #[arg(long, env = "BLIPSERVE_CAMERA_BURST", default_value_t = 20)]
    pub camera_burst: u32,

    /// Longest one store call may take, in ms; past it the request goes on without reuse or
    /// rate limit
    #[arg(long, env = "BLIPSERVE_CAMERA_STORE_TIMEOUT_MS", default_value_t = 50)]
    pub camera_store_timeout_ms: u64,
}

impl CameraArgs {
    pub fn settings(&self) -> anyhow::Result<CameraSettings> {
        if !(self.camera_rate >= 0.0 && self.camera_rate.is_finite()) {
            anyhow::bail!("--camera-rate must be a number of frames per second, 0 or more");
        }
        Ok(CameraSettings {
            store: store::Location::parse(&self.camera_store)?,
            reuse: self.camera_reuse,
            max_age: Duration::from_millis(self.camera_reuse_max_age_ms),
            threshold: self.camera_change_threshold,
            rate: self.camera_rate,
            burst: self.camera_burst.max(1),
            store_timeout: Duration::from_millis(self.camera_store_timeout_ms.max(1)),
        })
    }
}

/// The camera settings, as `GET /v1/info` shows them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CameraInfo {
    /// `memory` or `redis`.
    pub store: String,
    pub reuse: bool,
    pub reuse_max_age_ms: u64,
    pub change_threshold: u8,
    /// Frames per second per camera (0: no limit).
    pub rate_per_s: f64,
    pub burst: u32,
}

impl From<&CameraSettings> for CameraInfo {
    fn from(s: &CameraSettings) -> CameraInfo {
        CameraInfo {
            store: s.store.describe(),
            reuse: s.reuse,
            reuse_max_age_ms: s.max_age.as_millis() as u64,
            change_threshold: s.threshold,
            rate_per_s: s.rate,
            burst: s.burst,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CameraSettings {
    pub store: store::Location,
    pub reuse: bool,
    pub max_age: Duration,
    pub threshold: u8,
    /// Frames per second; 0: no limit.
    pub rate: f64,
    pub burst: u32,
    pub store_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_ids_are_bounded_in_length_and_charset() {
        for good in ["cam-1", "home:42.living_room", "a@b", &"x".repeat(MAX_CAMERA_ID)] {
            assert_eq!(CameraId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "cam/1", "caméra", "x\n", &"x".repeat(MAX_CAMERA_ID + 1)] {
            assert_eq!(CameraId::parse(bad).unwrap_err().code(), "bad_camera", "{bad:?}");
        }
    }
}
