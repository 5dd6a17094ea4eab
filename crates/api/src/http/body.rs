//! A detect request's body: read within its size and time limits, then parsed (multipart or JSON,
//! by the content type) into a [`RawDetect`]; and the request's deadline. Every role reads bodies
//! this way, so every role refuses the same bodies with the same errors.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap};
use base64::Engine as _;

use super::error::ApiError;
use crate::camera::CAMERA_HEADER;
use crate::detect::{JsonDetect, RawDetect};
use crate::settings::RequestLimits;

/// A client (or the gateway) may shorten a request's deadline with this header: the
/// milliseconds it is still willing to wait. It never lengthens the server's own timeout.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// A request an HTTP door has taken in ([`admit`]).
pub struct Admitted {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub started: Instant,
    /// When it must be answered ([`deadline`]).
    pub deadline: Instant,
}

/// What every door that answers detect requests does first: the deadline (`limits`' timeout, or
/// sooner by the request's [`TIMEOUT_HEADER`]), the body read within its size limit and that
/// deadline, the API key, then `ready` (a worker's readiness; the gateway has none to check). A
/// body over the limit is refused only after those, so a client without a key hears 401.
pub async fn admit(
    request: Request,
    limits: &RequestLimits,
    api_keys: &[String],
    ready: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Admitted, ApiError> {
    let started = Instant::now();
    let deadline = deadline(request.headers(), started, limits.request_timeout);
    let (parts, body) = request.into_parts();
    let bytes = read_before(body, limits.max_body_bytes, deadline).await?;
    super::authorize(api_keys, &parts.headers)?;
    ready()?;
    Ok(Admitted { headers: parts.headers, body: bytes?, started, deadline })
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

/// How long the rest of a body is still read after the deadline passed, before the 504.
const DRAIN_AFTER_DEADLINE: Duration = Duration::from_secs(1);

/// Reads the whole body, bounded in size by `limit` and in time by `deadline`, before anything is
/// refused: a client still sending when the server answers and closes would see a broken
/// connection instead of the answer. So past the deadline the rest is still read for a moment
/// ([`DRAIN_AFTER_DEADLINE`]) before the 504. The outer error is the deadline; the inner one is
/// the body's, for the caller to report after authorising the request.
pub async fn read_before(body: Body, limit: usize, deadline: Instant) -> Result<Result<Bytes, ApiError>, ApiError> {
    let mut reading = Box::pin(read_limited(body, limit));
    match tokio::time::timeout_at(deadline.into(), &mut reading).await {
        Ok(read) => Ok(read),
        Err(_) => {
            let _ = tokio::time::timeout(DRAIN_AFTER_DEADLINE, reading).await;
            Err(ApiError::DeadlineExceeded)
        }
    }
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
        let raw = RawDetect {
            image,
            questions: json.questions,
            behaviors: json.behaviors,
            mode: json.mode,
            camera: json.camera,
            reuse: json.reuse.map(|r| r.to_string()),
        };
        return with_camera_header(headers, raw);
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
            "camera" => raw.camera = Some(field.text().await.map_err(bad)?),
            "reuse" => raw.reuse = Some(field.text().await.map_err(bad)?),
            other => return Err(ApiError::BadMultipart(format!("unknown field {other:?}"))),
        }
    }
    with_camera_header(headers, raw)
}

/// The camera named by the `x-camera-id` header, unless the body names it: both must agree.
fn with_camera_header(headers: &HeaderMap, mut raw: RawDetect) -> Result<RawDetect, ApiError> {
    let Some(value) = headers.get(CAMERA_HEADER) else { return Ok(raw) };
    let header = value.to_str().map_err(|_| ApiError::BadCamera(format!("the {CAMERA_HEADER} header is not ASCII")))?;
    match &raw.camera {
        Some(body) if body.trim() != header.trim() => Err(ApiError::BadCamera(format!(
            "the {CAMERA_HEADER} header ({header:?}) and the camera field ({body:?}) differ"
        ))),
        _ => {
            raw.camera = Some(header.to_string());
            Ok(raw)
        }
    }
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
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
