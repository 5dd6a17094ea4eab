//! Every way a request can fail, in every role (detect, the gateway, its admin API), mapped once
//! to an HTTP status and a JSON body `{"error": message, "code": machine-readable code}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::detect::QuestionError;
use crate::frame::ImageError;

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
    #[error("the admin API is off: start the gateway with --admin-key (or BLIPSERVE_ADMIN_KEY)")]
    AdminDisabled,
    #[error("missing or wrong admin key (Authorization: Bearer <key>)")]
    AdminUnauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownPool(String),
    #[error("bad camera: {0}")]
    BadCamera(String),
    #[error("reuse is {0:?}: use true or false")]
    BadReuse(String),
    #[error("bad inference request: {0}")]
    BadInferRequest(String),
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("camera {camera:?} sends faster than its rate; retry in {retry_after_ms} ms")]
    CameraRateLimited { camera: String, retry_after_ms: u64 },
    #[error("a newer frame from the same camera replaced this one in the queue")]
    Superseded,
}

impl ApiError {
    /// One error of every code, in the order the README's table lists them: what the OpenAPI
    /// document's error responses are generated from.
    pub fn catalogue() -> Vec<ApiError> {
        use crate::frame::ImageFormat;
        use ApiError::*;
        let too_large = ImageError::TooLarge { width: 0, height: 0, max_width: 0, max_height: 0, max_pixels: 0 };
        let corrupt = ImageError::Corrupt { format: ImageFormat::Jpeg, message: String::new() };
        vec![
            BadJson(String::new()),
            BadMultipart(String::new()),
            BadBase64(String::new()),
            MissingImage,
            Image(corrupt),
            NoQuestion,
            TooManyQuestions { count: 0, max: 0 },
            EmptyQuestion,
            QuestionTooLong { chars: 0, max: 0 },
            Question { question: String::new(), source: QuestionError::Tokenizer(String::new()) },
            UnknownBehavior(String::new()),
            BadMode(String::new()),
            BadCamera(String::new()),
            BadReuse(String::new()),
            BadInferRequest(String::new()),
            BadRequest(String::new()),
            Unauthorized,
            AdminDisabled,
            UnknownPool(String::new()),
            UnknownModel(String::new()),
            BodyTooLarge { limit: 0 },
            Image(too_large),
            UnsupportedMediaType(String::new()),
            Image(ImageError::UnsupportedFormat(String::new())),
            Overloaded,
            CameraRateLimited { camera: String::new(), retry_after_ms: 0 },
            Superseded,
            Internal(String::new()),
            NotReady,
            ShuttingDown,
            NoUpstream,
            DeadlineExceeded,
        ]
    }

    /// Errors only the gateway's admin API answers.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            ApiError::AdminDisabled | ApiError::AdminUnauthorized | ApiError::BadRequest(_) | ApiError::UnknownPool(_)
        )
    }

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
            | BadMode(_)
            | BadCamera(_)
            | BadReuse(_)
            | BadInferRequest(_)
            | BadRequest(_) => StatusCode::BAD_REQUEST,
            Unauthorized | AdminUnauthorized => StatusCode::UNAUTHORIZED,
            AdminDisabled => StatusCode::FORBIDDEN,
            UnknownPool(_) | UnknownModel(_) => StatusCode::NOT_FOUND,
            Overloaded | CameraRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Superseded => StatusCode::CONFLICT,
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
            BadCamera(_) => "bad_camera",
            BadReuse(_) => "bad_reuse",
            BadInferRequest(_) => "bad_infer_request",
            CameraRateLimited { .. } => "camera_rate_limited",
            Superseded => "superseded",
            Unauthorized | AdminUnauthorized => "unauthorized",
            AdminDisabled => "admin_disabled",
            BadRequest(_) => "bad_request",
            UnknownPool(_) => "unknown_pool",
            UnknownModel(_) => "unknown_model",
            Overloaded => "overloaded",
            ShuttingDown => "shutting_down",
            NotReady => "not_ready",
            DeadlineExceeded => "deadline_exceeded",
            NoUpstream => "no_upstream",
            Internal(_) => "internal",
        }
    }
}

/// The JSON body of every error answer.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Stable and machine-readable (see the README's table).
    pub code: String,
    /// What went wrong, for a person.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody { code: self.code().to_string(), error: self.to_string() });
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Overloaded | ApiError::NoUpstream => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::CameraRateLimited { retry_after_ms, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_ms.div_ceil(1000).max(1)));
            }
            ApiError::NotReady | ApiError::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Unauthorized | ApiError::AdminUnauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
