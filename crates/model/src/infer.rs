//! The inference facade: the one type that answers a checked detect request. It owns what that
//! takes (the tokenizer, the preprocessor and its permits, the engine, the behaviour thresholds,
//! the stage metrics), so that a front door (the HTTP handler today) only reads, authorises,
//! checks, calls [`Infer::detect`] and renders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blipserve_api::behaviors::Catalogue;
use blipserve_api::detect::{AnswerOut, Checked, Mode, Timings};
use blipserve_api::http::error::ApiError;
use blipserve_api::metrics::Registry;
use blipserve_api::otel::{Attribute as KeyValue, Traced};
use blipserve_api::settings::RequestLimits;
use prometheus::HistogramVec;
use tokio::sync::Semaphore;

use crate::engine::{Engine, EngineError, Job, SubmitError};
use crate::model::{AnswerMode, Preprocessor, QuestionTokenizer};

/// What answering a frame produced.
#[derive(Debug)]
pub struct Detection {
    pub mode: Mode,
    pub answers: Vec<AnswerOut>,
    pub timings: Timings,
    /// Frames in the inference batch this frame was part of.
    pub batch_frames: usize,
}

pub struct Infer {
    pub model_id: String,
    tokenizer: QuestionTokenizer,
    preprocessor: Preprocessor,
    /// Frames being decoded at once (decoding an 8K frame takes ~100 MB).
    preprocess_permits: Arc<Semaphore>,
    /// Frames admitted and not yet answered: waiting to be decoded, decoded and queued, or in a
    /// batch. None left: 429 at once, so that a request is refused before it waits rather than
    /// after its deadline.
    admitted: Arc<Semaphore>,
    engine: Engine,
    behaviors: Catalogue,
    limits: RequestLimits,
    /// The longest generated answer, from the model's manifest.
    max_new_tokens: usize,
    /// Seconds spent per stage: queue, preprocess, inference, total.
    stage_seconds: HistogramVec,
}

/// What [`Infer::new`] is built from.
pub struct Parts {
    pub model_id: String,
    pub tokenizer: QuestionTokenizer,
    pub preprocessor: Preprocessor,
    pub engine: Engine,
    pub behaviors: Catalogue,
    pub limits: RequestLimits,
    pub max_new_tokens: usize,
    /// Frames decoded at once.
    pub preprocess_permits: usize,
    /// Frames admitted at once: the queue's capacity and what the replicas' batches hold.
    pub admission: usize,
}

impl Infer {
    /// The facade over `parts`; a behaviour whose question the model cannot take is a
    /// configuration error, refused here rather than on a client's request.
    pub fn new(parts: Parts, registry: &Registry) -> anyhow::Result<Infer> {
        for (name, behavior) in parts.behaviors.iter() {
            parts.tokenizer.encode(&behavior.question).map_err(|e| anyhow::anyhow!("behavior {name:?}: {e}"))?;
        }
        Ok(Infer {
            model_id: parts.model_id,
            tokenizer: parts.tokenizer,
            preprocessor: parts.preprocessor,
            preprocess_permits: Arc::new(Semaphore::new(parts.preprocess_permits.max(1))),
            admitted: Arc::new(Semaphore::new(parts.admission.max(1))),
            engine: parts.engine,
            behaviors: parts.behaviors,
            limits: parts.limits,
            max_new_tokens: parts.max_new_tokens,
            stage_seconds: registry.histogram_vec("stage_duration_seconds", "Time per request stage", &["stage"]),
        })
    }

    pub fn behaviors(&self) -> &Catalogue {
        &self.behaviors
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Every replica loaded and warmed.
    pub fn is_loaded(&self) -> bool {
        self.engine.is_loaded()
    }

    /// Loaded, and inference works (see [`crate::engine::health`]).
    pub fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }

    pub fn queue_depth(&self) -> usize {
        self.engine.queue_depth()
    }

    /// Refuses work while the replicas load.
    pub fn check_ready(&self) -> Result<(), ApiError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(ApiError::NotReady)
        }
    }

    /// Answers a checked request before `deadline`: tokenise (the model's token limit), refuse
    /// at once when as many frames as the queue and the batches hold are already admitted,
    /// decode and preprocess off the runtime, queue, wait, and apply the behaviours' thresholds.
    /// `started` is when the request arrived.
    ///
    /// The stages are recorded as children of `traced` (when tracing is on): `preprocess`,
    /// `queue wait`, and `inference` with the batch it joined.
    pub async fn detect(
        &self,
        checked: Checked,
        started: Instant,
        deadline: Instant,
        traced: &Traced,
    ) -> Result<Detection, ApiError> {
        self.check_ready()?;
        let mode = match checked.mode {
            Mode::Yesno => AnswerMode::YesNo,
            Mode::Generate => AnswerMode::Generate { max_new_tokens: self.max_new_tokens },
        };
        let questions = checked
            .questions
            .iter()
            .map(|a| {
                self.tokenizer.encode(&a.text).map_err(|source| ApiError::Question { question: a.text.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Refuse before paying for decoding, and before waiting: frames waiting to be decoded
        // count as queued, or an overload would turn into 504s at the deadline.
        if self.engine.queue_is_full() {
            return Err(ApiError::Overloaded);
        }
        let _admitted = self.admitted.clone().try_acquire_owned().map_err(|_| ApiError::Overloaded)?;

        let permit = tokio::time::timeout_at(deadline.into(), self.preprocess_permits.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::DeadlineExceeded)?
            .map_err(|_| ApiError::ShuttingDown)?;
        let preprocessor = self.preprocessor.clone();
        let image = checked.image;
        let camera = checked.camera.as_ref().map(|c| c.shared());
        let asked = Instant::now();
        let core = self.engine.core_for_decoding(deadline).await?;
        let pre_started = Instant::now();
        let (pixels, core) = tokio::task::spawn_blocking(move || {
            let _decoding = permit;
            (preprocessor.pixels(&image), core)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("preprocessing task: {e}")))?;
        let pixels = pixels?;
        let preprocess = pre_started.elapsed();
        // Waiting for a core counts as queueing.
        let core_wait = pre_started - asked;
        traced.record("preprocess", pre_started, pre_started + preprocess, || {
            vec![KeyValue::new("blipserve.core_wait_ms", ms(core_wait))]
        });

        let (reply, answer) = tokio::sync::oneshot::channel();
        let enqueued = Instant::now();
        self.engine.submit(Job { pixels, questions, mode, deadline, enqueued, camera, reply })?;
        // The core goes back once the frame is queued: a batch waiting for it takes the frame too.
        drop(core);
        let result = match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => return Err(ApiError::DeadlineExceeded),
            Ok(Err(_)) => return Err(ApiError::Internal("the model replica dropped the request".into())),
            Ok(Ok(result)) => result?,
        };

        let (ran, done) = (enqueued + result.queued, enqueued + result.queued + result.inference);
        traced.record("queue wait", enqueued, ran, Vec::new);
        let batch = result.batch;
        traced.record("inference", ran, done, || {
            vec![
                KeyValue::new("blipserve.replica", batch.replica as i64),
                KeyValue::new("blipserve.batch.number", batch.number as i64),
                KeyValue::new("blipserve.batch.frames", batch.frames as i64),
                KeyValue::new("blipserve.batch.questions", batch.questions as i64),
            ]
        });
        let total = started.elapsed();
        let queued = core_wait + result.queued;
        for (stage, took) in
            [("preprocess", preprocess), ("queue", queued), ("inference", result.inference), ("total", total)]
        {
            self.stage_seconds.with_label_values(&[stage]).observe(took.as_secs_f64());
        }
        let answers = checked
            .questions
            .into_iter()
            .zip(result.answers)
            .map(|(asked, a)| AnswerOut {
                detected: asked.behavior.as_ref().zip(a.probability).map(|((_, threshold), p)| p >= *threshold),
                question: asked.text,
                answer: a.answer,
                probability: a.probability,
                behavior: asked.behavior.map(|(name, _)| name),
                reused: false,
                age_ms: None,
                computed_by: None,
            })
            .collect();
        let timings = Timings {
            queue: ms(queued),
            preprocess: ms(preprocess),
            inference: ms(result.inference),
            total: ms(total),
        };
        Ok(Detection { mode: checked.mode, answers, timings, batch_frames: batch.frames })
    }
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull => ApiError::Overloaded,
            SubmitError::ShuttingDown => ApiError::ShuttingDown,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Expired => ApiError::DeadlineExceeded,
            EngineError::Inference(msg) => ApiError::Internal(msg),
            EngineError::Superseded => ApiError::Superseded,
        }
    }
}
