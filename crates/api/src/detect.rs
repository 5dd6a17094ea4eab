//! `POST /v1/detect` as types: what a client sends, what every role checks before any model
//! runs, and what it gets back. The OpenAPI document is generated from these types, so it cannot
//! drift from what the service answers.
//!
//! [`check`] runs in every role (the gateway and the inference tier refuse the same requests
//! with the same errors); what needs the model (tokenising, decoding past the header) is the
//! inference tier's.

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::behaviors::Catalogue;
use crate::camera::CameraId;
use crate::http::error::ApiError;
use crate::settings::RequestLimits;

/// How questions are answered: `yesno` gives the probability that the answer is yes (one decoder
/// step), `generate` a free-text answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Yesno,
    Generate,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Yesno => "yesno",
            Mode::Generate => "generate",
        }
    }
}

/// What the client sent, before validation (either body format).
#[derive(Debug, Default)]
pub struct RawDetect {
    pub image: Option<Bytes>,
    pub questions: Vec<String>,
    pub behaviors: Vec<String>,
    pub mode: Option<String>,
    /// The `camera` field, or the `x-camera-id` header (they must agree when both are sent).
    pub camera: Option<String>,
    /// The `reuse` field: `false` asks the model even for an unchanged frame.
    pub reuse: Option<String>,
}

/// The JSON body of a detect request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonDetect {
    /// The frame (JPEG, PNG, WebP, GIF or BMP), base64; a `data:` URL prefix is accepted.
    #[schema(format = Byte)]
    pub image: Option<String>,
    /// Free-text questions, answered first.
    #[serde(default)]
    pub questions: Vec<String>,
    /// Behaviour names from `GET /v1/behaviors`, answered after the questions.
    #[serde(default)]
    pub behaviors: Vec<String>,
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<String>,
    /// The camera that took the frame (or the `x-camera-id` header): 1 to 128 ASCII letters,
    /// digits and `-_.:@`. Enables answer reuse for unchanged frames and per-camera admission.
    pub camera: Option<String>,
    /// `false`: ask the model even when the camera's frame is unchanged (default true).
    pub reuse: Option<bool>,
}

/// The multipart/form-data body of a detect request (documentation only: parts are read one by
/// one).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DetectForm {
    /// The frame: JPEG, PNG, WebP, GIF or BMP.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// A free-text question (repeatable).
    question: Vec<String>,
    /// A behaviour name from `GET /v1/behaviors` (repeatable).
    behavior: Vec<String>,
    mode: Option<Mode>,
    /// The camera that took the frame (or the `x-camera-id` header).
    camera: Option<String>,
    /// `false`: ask the model even when the camera's frame is unchanged.
    reuse: Option<bool>,
}

/// A request that passed every model-independent check.
#[derive(Debug)]
pub struct Checked {
    /// The encoded image, not empty.
    pub image: Bytes,
    /// In the order answered: the free-text questions, then the behaviours' questions.
    pub questions: Vec<Asked>,
    pub mode: Mode,
    /// One per question, in order: `q:` and the question's text, or `b:` and the behaviour's
    /// name. What a camera's stored answers are keyed by (with the mode).
    pub keys: Vec<String>,
    pub camera: Option<CameraId>,
    /// Answers may be reused (the request did not say `reuse=false`).
    pub reuse: bool,
}

impl Checked {
    /// The same frame with only the questions at `indices` (in increasing order).
    pub fn only(&self, indices: &[usize]) -> Checked {
        let pick = |i: &usize| self.questions.get(*i).cloned();
        Checked {
            image: self.image.clone(),
            questions: indices.iter().filter_map(pick).collect(),
            mode: self.mode,
            keys: indices.iter().filter_map(|i| self.keys.get(*i).cloned()).collect(),
            camera: self.camera.clone(),
            reuse: self.reuse,
        }
    }
}

/// One question to answer, and the catalogue behaviour it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub text: String,
    pub behavior: Option<(String, f64)>,
}

/// Why the model cannot take a question (found when tokenising it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuestionError {
    #[error("the question is empty")]
    Empty,
    #[error("the question is {tokens} tokens long; the model takes at most {max}")]
    TooLong { tokens: usize, max: usize },
    #[error("cannot tokenise the question: {0}")]
    Tokenizer(String),
}

/// The mode, the behaviours (resolved against `behaviors` when given; without a catalogue, as on
/// the gateway, they are counted but left to the worker), the number and length of the
/// questions, and the image's presence.
pub fn check(raw: RawDetect, limits: &RequestLimits, behaviors: Option<&Catalogue>) -> Result<Checked, ApiError> {
    let mode = match raw.mode.as_deref().map(str::trim) {
        None | Some("") | Some("yesno") => Mode::Yesno,
        Some("generate") => Mode::Generate,
        Some(other) => return Err(ApiError::BadMode(other.to_string())),
    };
    let count = raw.questions.len() + raw.behaviors.len();
    let camera = raw.camera.as_deref().map(|c| CameraId::parse(c.trim())).transpose()?;
    let reuse = match raw.reuse.as_deref().map(str::trim) {
        None | Some("") | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(ApiError::BadReuse(other.to_string())),
    };
    let mut keys: Vec<String> = raw.questions.iter().map(|q| format!("q:{q}")).collect();
    keys.extend(raw.behaviors.iter().map(|b| format!("b:{}", b.trim())));
    let mut asked: Vec<Asked> = raw.questions.into_iter().map(|text| Asked { text, behavior: None }).collect();
    for name in raw.behaviors {
        let name = name.trim().to_string();
        if let Some(catalogue) = behaviors {
            let behavior = catalogue.get(&name).ok_or_else(|| ApiError::UnknownBehavior(name.clone()))?;
            asked.push(Asked { text: behavior.question.clone(), behavior: Some((name, behavior.threshold)) });
        } else if name.is_empty() {
            return Err(ApiError::UnknownBehavior(name));
        }
    }
    if count == 0 {
        return Err(ApiError::NoQuestion);
    }
    if count > limits.max_questions {
        return Err(ApiError::TooManyQuestions { count, max: limits.max_questions });
    }
    for a in &asked {
        if a.text.trim().is_empty() {
            return Err(ApiError::EmptyQuestion);
        }
        let chars = a.text.chars().count();
        if a.behavior.is_none() && chars > limits.max_question_chars {
            return Err(ApiError::QuestionTooLong { chars, max: limits.max_question_chars });
        }
    }
    let image = raw.image.filter(|b| !b.is_empty()).ok_or(ApiError::MissingImage)?;
    Ok(Checked { image, questions: asked, mode, keys, camera, reuse })
}

/// The answers to one frame's questions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DetectResponse {
    pub request_id: String,
    pub model: String,
    pub mode: Mode,
    /// In the order asked: questions, then behaviours.
    pub answers: Vec<AnswerOut>,
    pub timings_ms: Timings,
    /// Frames in the inference batch this frame was part of (0: every answer was reused).
    #[schema(minimum = 0)]
    pub batch_frames: usize,
    /// What was done with the frame for its camera (requests that name one, where reuse runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<CameraOut>,
}

/// A named camera's frame, as the service saw it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CameraOut {
    pub id: String,
    /// `new` (no recent state for the camera), `unchanged` (same scene as the stored answers),
    /// `changed`, `reuse_off` (by the request or the server), `store_unavailable` (answered
    /// without reuse), `unreadable` (the frame's signature failed; the model decides).
    pub frame: String,
    /// Answers taken from the camera's stored ones.
    pub reused: usize,
}

/// One question's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Answer)]
pub struct AnswerOut {
    pub question: String,
    /// yes/no in yesno mode, generated text in generate mode.
    pub answer: String,
    /// P(yes | yes or no); yesno mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub probability: Option<f64>,
    /// The catalogue behaviour this question came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    /// probability ≥ the behaviour's threshold; yesno mode, behaviours only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
    /// Taken from the camera's stored answers: the frame is unchanged since they were computed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    /// A reused answer's age, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// The request that computed a reused answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_by: Option<String>,
}

/// Where the time went, in milliseconds (also sent as x-queue-ms, x-preprocess-ms,
/// x-inference-ms, x-total-ms and Server-Timing).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    pub queue: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub total: f64,
}

/// One entry of the behaviour catalogue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BehaviorOut {
    pub name: String,
    pub question: String,
    /// `detected` is true when P(yes) ≥ threshold.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub threshold: f64,
}

/// `GET /v1/behaviors`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Behaviors {
    pub behaviors: Vec<BehaviorOut>,
}

impl From<&Catalogue> for Behaviors {
    fn from(catalogue: &Catalogue) -> Self {
        let behaviors = catalogue
            .iter()
            .map(|(name, b)| BehaviorOut { name: name.clone(), question: b.question.clone(), threshold: b.threshold })
            .collect();
        Behaviors { behaviors }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_body_bytes: 1000,
            max_questions: 2,
            max_question_chars: 10,
            request_timeout: Duration::from_secs(1),
        }
    }

    fn raw(questions: &[&str], behaviors: &[&str]) -> RawDetect {
        RawDetect {
            image: Some(Bytes::from_static(b"x")),
            questions: questions.iter().map(|s| s.to_string()).collect(),
            behaviors: behaviors.iter().map(|s| s.to_string()).collect(),
            ..RawDetect::default()
        }
    }

    #[test]
    fn behaviours_count_with_or_without_a_catalogue() {
        let catalogue = Catalogue::default();
        for c in [Some(&catalogue), None] {
            let e = check(raw(&["a?"], &["barking", "eating"]), &limits(), c).unwrap_err();
            assert_eq!(e.code(), "too_many_questions");
            assert_eq!(check(raw(&[], &[]), &limits(), c).unwrap_err().code(), "no_question");
            assert_eq!(
                check(raw(&["a very long question"], &[]), &limits(), c).unwrap_err().code(),
                "question_too_long"
            );
        }
        assert_eq!(check(raw(&[], &["juggling"]), &limits(), Some(&catalogue)).unwrap_err().code(), "unknown_behavior");
        // Without the catalogue an unknown name is the worker's to refuse.
        assert!(check(raw(&[], &["juggling"]), &limits(), None).is_ok());
        let checked = check(raw(&["a?"], &["barking"]), &limits(), Some(&catalogue)).unwrap();
        assert_eq!(checked.questions.len(), 2);
        assert_eq!(checked.questions[1].behavior.as_ref().unwrap().0, "barking");
    }

    #[test]
    fn modes_parse_and_render() {
        let mut r = raw(&["a?"], &[]);
        r.mode = Some(" generate ".into());
        assert_eq!(check(r, &limits(), None).unwrap().mode, Mode::Generate);
        let mut r = raw(&["a?"], &[]);
        r.mode = Some("poetry".into());
        assert_eq!(check(r, &limits(), None).unwrap_err().code(), "bad_mode");
        assert_eq!(serde_json::to_string(&Mode::Yesno).unwrap(), "\"yesno\"");
    }
}
