//! [`Cameras`]: what a role that first receives requests does for a named camera, before and
//! after the model: admission, the reuse plan, and recording the answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::signature::Signature;
use super::store::{now_ms, Admit, CameraState, Store, StoredAnswer};
use super::{CameraId, CameraSettings};
use crate::detect::{AnswerOut, CameraOut, Checked, DetectResponse, Mode, Timings};
use crate::frame::ImageLimits;
use crate::http::error::ApiError;
use crate::metrics::Registry;

/// What became of a named camera's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameVerdict {
    New,
    Unchanged,
    Changed,
    ReuseOff,
    StoreUnavailable,
    Unreadable,
}

impl FrameVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameVerdict::New => "new",
            FrameVerdict::Unchanged => "unchanged",
            FrameVerdict::Changed => "changed",
            FrameVerdict::ReuseOff => "reuse_off",
            FrameVerdict::StoreUnavailable => "store_unavailable",
            FrameVerdict::Unreadable => "unreadable",
        }
    }
}

/// One frame's reuse plan: which answers come from the camera's state, which from the model.
#[derive(Debug)]
pub struct Plan {
    pub camera: CameraId,
    pub verdict: FrameVerdict,
    /// Per question: the reused answer, or `None` for the model to answer.
    pub reused: Vec<Option<AnswerOut>>,
    keys: Vec<String>,
    signature: Option<Signature>,
    /// The state this frame may extend (unchanged), or `None` (start afresh).
    base: Option<CameraState>,
}

impl Plan {
    /// The questions for the model, as indices into the request's.
    pub fn pending(&self) -> Vec<usize> {
        self.reused.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i).collect()
    }

    /// The response's `camera` object.
    pub fn describe(&self) -> CameraOut {
        CameraOut {
            id: self.camera.to_string(),
            frame: self.verdict.as_str().into(),
            reused: self.reused.iter().filter(|r| r.is_some()).count(),
        }
    }

    /// The response for a frame whose every answer was reused (no pending question).
    pub fn response(&self, request_id: String, mode: Mode, started: Instant) -> DetectResponse {
        let total = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        DetectResponse {
            request_id,
            model: self.base.as_ref().map(|b| b.model.clone()).unwrap_or_default(),
            mode,
            answers: self.merge(Vec::new()),
            timings_ms: Timings { queue: 0.0, preprocess: total, inference: 0.0, total },
            batch_frames: 0,
            camera: Some(self.describe()),
        }
    }

    /// Every answer in order: the reused ones and, in the gaps, `fresh` (the model's answers to
    /// [`Plan::pending`], in that order).
    pub fn merge(&self, fresh: Vec<AnswerOut>) -> Vec<AnswerOut> {
        let mut fresh = fresh.into_iter();
        self.reused.iter().filter_map(|r| r.clone().or_else(|| fresh.next())).collect()
    }
}

struct CameraMetrics {
    frames: IntCounterVec,
    reused: IntCounter,
    saved: IntCounter,
    store_errors: IntCounterVec,
    rate_limited: IntCounter,
    signature_seconds: Histogram,
}

pub struct Cameras {
    settings: CameraSettings,
    store: Store,
    image_limits: ImageLimits,
    metrics: CameraMetrics,
    /// Reused answers, for CloudWatch (`ReusedAnswers`), when it publishes.
    tally: Option<Arc<crate::cloudwatch::Tally>>,
}

impl Cameras {
    pub fn new(
        settings: CameraSettings,
        image_limits: ImageLimits,
        registry: &Registry,
        tally: Option<Arc<crate::cloudwatch::Tally>>,
    ) -> anyhow::Result<Cameras> {
        let store = Store::open(&settings.store, settings.store_timeout)?;
        let metrics = CameraMetrics {
            frames: registry.counter_vec(
                "camera_frames_total",
                "Frames of named cameras by verdict: new, unchanged, changed, reuse_off, store_unavailable, unreadable",
                &["frame"],
            ),
            reused: registry.counter("camera_answers_reused_total", "Answers taken from a camera's stored answers"),
            saved: registry.counter(
                "camera_model_calls_saved_total",
                "Frames answered entirely from stored answers (no model call)",
            ),
            store_errors: registry.counter_vec(
                "camera_store_errors_total",
                "Camera store calls that failed or timed out (the request went on without reuse or rate limit)",
                &["op"],
            ),
            rate_limited: registry.counter(
                "camera_rate_limited_total",
                "Frames refused by their camera's rate (429 camera_rate_limited)",
            ),
            signature_seconds: registry.histogram(
                "camera_signature_duration_seconds",
                "Time to compute a frame's change-detection signature",
                None,
            ),
        };
        Ok(Cameras { settings, store, image_limits, metrics, tally })
    }

    pub fn settings(&self) -> &CameraSettings {
        &self.settings
    }

    fn store_failed(&self, op: &str, e: &super::store::StoreError) {
        self.metrics.store_errors.with_label_values(&[op]).inc();
        tracing::warn!(op, error = %e, "camera store");
    }

    /// Takes a token from the camera's bucket: 429 `camera_rate_limited` when it has none. A store
    /// that cannot answer admits the frame.
    pub async fn admit(&self, camera: &CameraId) -> Result<(), ApiError> {
        if self.settings.rate <= 0.0 {
            return Ok(());
        }
        match self.store.admit(camera, self.settings.rate, self.settings.burst).await {
            Ok(Admit::Yes) => Ok(()),
            Ok(Admit::No { retry_after }) => {
                self.metrics.rate_limited.inc();
                Err(ApiError::CameraRateLimited {
                    camera: camera.to_string(),
                    retry_after_ms: retry_after.as_millis().max(1) as u64,
                })
            }
            Err(e) => {
                self.store_failed("admit", &e);
                Ok(())
            }
        }
    }

    /// Which of the request's answers the camera's state holds for this frame.
    pub async fn plan(&self, camera: &CameraId, checked: &Checked) -> Plan {
        let keys: Vec<String> = checked.keys.iter().map(|k| format!("{}:{k}", checked.mode.as_str())).collect();
        let mut plan = Plan {
            camera: camera.clone(),
            verdict: FrameVerdict::ReuseOff,
            reused: vec![None; keys.len()],
            keys,
            signature: None,
            base: None,
        };
        if !self.settings.reuse {
            return self.count(plan);
        }
        let image = checked.image.clone();
        let limits = self.image_limits;
        let started = Instant::now();
        let signature = tokio::task::spawn_blocking(move || Signature::of(&image, &limits)).await;
        self.metrics.signature_seconds.observe(started.elapsed().as_secs_f64());
        let Ok(Ok(signature)) = signature else {
            plan.verdict = FrameVerdict::Unreadable;
            return self.count(plan);
        };
        plan.signature = Some(signature);
        if !checked.reuse {
            return self.count(plan);
        }
        let state = match self.store.get(camera).await {
            Ok(state) => state,
            Err(e) => {
                self.store_failed("get", &e);
                plan.verdict = FrameVerdict::StoreUnavailable;
                plan.signature = None;
                return self.count(plan);
            }
        };
        let signature = plan.signature.as_ref().expect("computed above");
        plan.verdict = match &state {
            None => FrameVerdict::New,
            Some(state) if state.signature.changed(signature, self.settings.threshold) => FrameVerdict::Changed,
            Some(_) => FrameVerdict::Unchanged,
        };
        if plan.verdict == FrameVerdict::Unchanged {
            let state = state.expect("unchanged against a state");
            let now = now_ms();
            let max_age = self.settings.max_age.as_millis() as u64;
            for (slot, key) in plan.reused.iter_mut().zip(&plan.keys) {
                let Some(stored) = state.answers.get(key) else { continue };
                let age = now.saturating_sub(stored.at_ms);
                if age <= max_age {
                    *slot = Some(AnswerOut {
                        question: stored.question.clone(),
                        answer: stored.answer.clone(),
                        probability: stored.probability,
                        behavior: stored.behavior.clone(),
                        detected: stored.detected,
                        reused: true,
                        age_ms: Some(age),
                        computed_by: Some(stored.request_id.clone()),
                    });
                }
            }
            plan.base = Some(state);
        }
        self.count(plan)
    }

    fn count(&self, plan: Plan) -> Plan {
        self.metrics.frames.with_label_values(&[plan.verdict.as_str()]).inc();
        let reused = plan.reused.iter().filter(|r| r.is_some()).count() as u64;
        self.metrics.reused.inc_by(reused);
        if reused > 0 && reused == plan.reused.len() as u64 {
            self.metrics.saved.inc();
        }
        if let Some(tally) = &self.tally {
            tally.record_reused(reused);
        }
        plan
    }

    /// Stores the model's answers to the plan's pending questions (`fresh`, in that order),
    /// computed by `request_id`: added to the state when the frame was unchanged, else a new
    /// state for this frame.
    pub async fn record(&self, plan: Plan, fresh: &[AnswerOut], model: &str, request_id: &str) {
        let Some(signature) = plan.signature else { return };
        if fresh.is_empty() {
            return;
        }
        let mut state = match plan.base {
            Some(base) if base.model == model => base,
            _ => CameraState { signature, model: model.to_string(), answers: Default::default() },
        };
        let now = now_ms();
        let max_age = self.settings.max_age.as_millis() as u64;
        state.answers.retain(|_, a| now.saturating_sub(a.at_ms) <= max_age);
        let pending = plan.reused.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i);
        for (i, answer) in pending.zip(fresh) {
            state.answers.insert(
                plan.keys[i].clone(),
                StoredAnswer {
                    question: answer.question.clone(),
                    answer: answer.answer.clone(),
                    probability: answer.probability,
                    behavior: answer.behavior.clone(),
                    detected: answer.detected,
                    at_ms: now,
                    request_id: request_id.to_string(),
                },
            );
        }
        if let Err(e) = self.store.put(&plan.camera, &state, self.settings.max_age.max(Duration::from_millis(1))).await
        {
            self.store_failed("put", &e);
        }
    }
}
