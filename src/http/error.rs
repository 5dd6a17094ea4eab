//! Every way a request can fail, mapped once to an HTTP status and a JSON body
//! `{"error": message, "code": machine-readable code}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::engine::{EngineError, SubmitError};
use crate::model::{ImageError, QuestionError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("send multipart/form-data or application/json, not {0:?}")]
    UnsupportedMediaType(String),
    #[error("the request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("malformed JSON body: {0}")]
    BadJson(String),
    #[error("malformed multipart body: {0}")]
    BadMultipart(String),
    #[error("the image is not valid base64: {0}")]
    BadBase64(String),
    #[error("no image: send a file part named \"image\" or a base64 \"image\" field")]
    MissingImage,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("no question: send at least one question or behavior")]
    NoQuestion,
    #[error("{count} questions; at most {max} per frame")]
    TooManyQuestions { count: usize, max: usize },
    #[error("a question is empty")]
    EmptyQuestion,
    #[error("a question is {chars} characters long; at most {max}")]
    QuestionTooLong { chars: usize, max: usize },
    #[error("question {question:?}: {source}")]
    Question { question: String, source: QuestionError },
    #[error("unknown behavior {0:?}; GET /v1/behaviors lists them")]
    UnknownBehavior(String),
    #[error("unknown mode {0:?}: use \"yesno\" or \"generate\"")]
    BadMode(String),
    #[error("missing or wrong API key (Authorization: Bearer <key>)")]
    Unauthorized,
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the model is not loaded yet")]
    NotReady,
    #[error("the request's deadline passed before it was answered")]
    DeadlineExceeded,
    #[error("no inference worker is available to answer; retry shortly")]
    NoUpstream,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Image(ImageError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Image(ImageError::UnsupportedFormat(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BadJson(_)
            | BadMultipart(_)
            | BadBase64(_)
            | MissingImage
            | Image(_)
            | NoQuestion
            | TooManyQuestions { .. }
            | EmptyQuestion
            | QuestionTooLong { .. }
            | Question { .. }
            | UnknownBehavior(_)
            | BadMode(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ShuttingDown | NotReady | NoUpstream => StatusCode::SERVICE_UNAVAILABLE,
            DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable; also the `outcome` label of the request metric.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            UnsupportedMediaType(_) => "unsupported_media_type",
            BodyTooLarge { .. } => "body_too_large",
            BadJson(_) => "bad_json",
            BadMultipart(_) => "bad_multipart",
            BadBase64(_) => "bad_base64",
            MissingImage | Image(ImageError::Empty) => "missing_image",
            Image(ImageError::TooLarge { .. }) => "image_too_large",
            Image(ImageError::UnsupportedFormat(_)) => "unsupported_image_format",
            Image(ImageError::Corrupt { .. }) => "bad_image",
            NoQuestion => "no_question",
            TooManyQuestions { .. } => "too_many_questions",
            EmptyQuestion | Question { source: QuestionError::Empty, .. } => "empty_question",
            QuestionTooLong { .. } | Question { source: QuestionError::TooLong { .. }, .. } => "question_too_long",
            Question { .. } => "bad_question",
            UnknownBehavior(_) => "unknown_behavior",
            BadMode(_) => "bad_mode",
            Unauthorized => "unauthorized",
            Overloaded => "overloaded",
            ShuttingDown => "shutting_down",
            NotReady => "not_ready",
            DeadlineExceeded => "deadline_exceeded",
            NoUpstream => "no_upstream",
            Internal(_) => "internal",
        }
    }
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.to_string(), "code": self.code() }));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Overloaded | ApiError::NoUpstream => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::NotReady | ApiError::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
