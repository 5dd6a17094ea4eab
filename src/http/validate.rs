//! A detect request before the model: reading the body within its limit, parsing it (multipart
//! or JSON), and every check that needs no model. `serve`/`worker` (in [`super::detect`]) and the
//! `gateway` both run exactly this, so both refuse the same requests with the same errors.
//!
//! What needs the model stays with the worker: tokenising the questions (the token limit) and
//! decoding the image past its header. The gateway checks the image's header alone
//! ([`crate::model::preprocess::check_header`]) and passes a worker's refusal through unchanged.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use serde::Deserialize;

use super::error::ApiError;
use crate::behaviors::Catalogue;
use crate::config::RequestLimits;

/// A client (or the gateway) may shorten a request's deadline with this header: the
/// milliseconds it is still willing to wait. It never lengthens the server's own timeout.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// What the client sent, before validation.
#[derive(Debug, Default)]
pub struct RawDetect {
    pub image: Option<Bytes>,
    pub questions: Vec<String>,
    pub behaviors: Vec<String>,
    pub mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDetect {
    image: Option<String>,
    #[serde(default)]
    questions: Vec<String>,
    #[serde(default)]
    behaviors: Vec<String>,
    mode: Option<String>,
}

/// How the questions are to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    YesNo,
    Generate,
}

/// A request that passed every model-independent check.
#[derive(Debug)]
pub struct Checked {
    /// The encoded image, not empty.
    pub image: Bytes,
    /// In the order answered: the free-text questions, then the behaviours' questions with the
    /// behaviour's name and threshold. Without a catalogue (the gateway) behaviours are counted
    /// against the limit but not listed here.
    pub questions: Vec<(String, Option<(String, f64)>)>,
    pub mode: Mode,
}

/// When a request started at `started` must be answered: `timeout` from then, or sooner when the
/// request's [`TIMEOUT_HEADER`] says so.
pub fn deadline(headers: &HeaderMap, started: Instant, timeout: Duration) -> Instant {
    let asked = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    started + asked.map_or(timeout, |asked| asked.min(timeout))
}

/// Parses a body already read: multipart/form-data or JSON, by the content type.
pub async fn parse_body(headers: &HeaderMap, bytes: Bytes) -> Result<RawDetect, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if mime != "multipart/form-data" && mime != "application/json" {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    if mime == "application/json" {
        let json: JsonDetect = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
        let image = match json.image {
            None => None,
            Some(text) => Some(Bytes::from(decode_base64(&text)?)),
        };
        return Ok(RawDetect { image, questions: json.questions, behaviors: json.behaviors, mode: json.mode });
    }
    let request = Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .map_err(|e| ApiError::BadMultipart(e.to_string()))?;
    let mut multipart =
        Multipart::from_request(request, &()).await.map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let mut raw = RawDetect::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| ApiError::BadMultipart(e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        let bad = |e: axum::extract::multipart::MultipartError| ApiError::BadMultipart(e.body_text());
        match name.as_str() {
            "image" => raw.image = Some(field.bytes().await.map_err(bad)?),
            "question" | "questions" => raw.questions.push(field.text().await.map_err(bad)?),
            "behavior" | "behaviors" => raw.behaviors.push(field.text().await.map_err(bad)?),
            "mode" => raw.mode = Some(field.text().await.map_err(bad)?),
            other => return Err(ApiError::BadMultipart(format!("unknown field {other:?}"))),
        }
    }
    Ok(raw)
}

/// The whole body if it fits in `limit` bytes. A larger body is still read and discarded up to
/// four times the limit, so the client gets the 413 instead of a reset connection.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let drain_cap = limit.saturating_mul(4);
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadMultipart(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > drain_cap {
            break;
        }
        if seen <= limit {
            buf.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Bytes::from(buf))
}

/// Standard base64, padding optional, a `data:...;base64,` prefix allowed.
fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    engine.decode(compact).map_err(|e| ApiError::BadBase64(e.to_string()))
}

/// The mode, the behaviours (against `behaviors` when given), the number and length of the
/// questions, and the image's presence.
pub fn check(raw: RawDetect, limits: &RequestLimits, behaviors: Option<&Catalogue>) -> Result<Checked, ApiError> {
    let mode = match raw.mode.as_deref().map(str::trim) {
        None | Some("") | Some("yesno") => Mode::YesNo,
        Some("generate") => Mode::Generate,
        Some(other) => return Err(ApiError::BadMode(other.to_string())),
    };
    let count = raw.questions.len() + raw.behaviors.len();
    let mut texts: Vec<(String, Option<(String, f64)>)> = raw.questions.into_iter().map(|q| (q, None)).collect();
    for name in raw.behaviors {
        let name = name.trim().to_string();
        if let Some(catalogue) = behaviors {
            let behavior = catalogue.get(&name).ok_or_else(|| ApiError::UnknownBehavior(name.clone()))?;
            texts.push((behavior.question.clone(), Some((name, behavior.threshold))));
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
    for (text, behavior) in &texts {
        if text.trim().is_empty() {
            return Err(ApiError::EmptyQuestion);
        }
        let chars = text.chars().count();
        if behavior.is_none() && chars > limits.max_question_chars {
            return Err(ApiError::QuestionTooLong { chars, max: limits.max_question_chars });
        }
    }
    let image = raw.image.filter(|b| !b.is_empty()).ok_or(ApiError::MissingImage)?;
    Ok(Checked { image, questions: texts, mode })
}

#[cfg(test)]
mod tests {
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
            mode: None,
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
        assert_eq!(checked.questions[1].1.as_ref().unwrap().0, "barking");
    }

    #[test]
    fn a_request_may_shorten_its_deadline_but_not_lengthen_it() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        assert_eq!(deadline(&headers, now, Duration::from_secs(10)), now + Duration::from_secs(10));
        headers.insert(TIMEOUT_HEADER, "250".parse().unwrap());
        assert_eq!(deadline(&headers, now, Duration::from_secs(10)), now + Duration::from_millis(250));
        headers.insert(TIMEOUT_HEADER, "60000".parse().unwrap());
        assert_eq!(deadline(&headers, now, Duration::from_secs(10)), now + Duration::from_secs(10));
        headers.insert(TIMEOUT_HEADER, "soon".parse().unwrap());
        assert_eq!(deadline(&headers, now, Duration::from_secs(10)), now + Duration::from_secs(10));
    }
}
