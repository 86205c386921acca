//! Every way the router itself refuses or fails a request, mapped once to an HTTP status and an
//! OpenAI-shaped body `{"error": {"message", "type", "param", "code"}}`. Errors from a pod pass
//! through unchanged.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The body is not JSON, or `model`/`user`/`stream` has the wrong type.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// No LLMDeployment serves this model id.
    #[error("The model `{model}` does not exist. Served models: {}.", list(known))]
    ModelNotFound { model: String, known: Vec<String> },
    /// Missing or unknown API key.
    #[error("Incorrect API key provided. Pass it as `Authorization: Bearer <key>`.")]
    Unauthorized,
    /// The body is larger than `--max-body-bytes`.
    #[error("Request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// A per-key limit was reached.
    #[error("Rate limit reached for this API key: {limit}; retry after {retry_after} s.")]
    RateLimited { limit: String, retry_after: u64 },
    /// No pod of the model became ready within `--hold-seconds`.
    #[error(
        "No ready pod serves `{model}` (waited {waited_s} s; it may be starting or scaled to zero); retry after {retry_after} s."
    )]
    NoReadyPod {
        model: String,
        waited_s: u64,
        retry_after: u64,
    },
    /// Every pod tried failed before answering.
    #[error(
        "Could not reach a pod of `{model}` version `{version}` after {attempts} attempts; retry shortly."
    )]
    Upstream {
        model: String,
        version: String,
        attempts: usize,
    },
    /// A method the path does not serve.
    #[error("{method} is not allowed on {path}.")]
    MethodNotAllowed { method: String, path: String },
    /// The path does not exist.
    #[error("Unknown endpoint {0}.")]
    NotFound(String),
    /// The first request with this `Idempotency-Key` is still running after the wait.
    #[error(
        "A request with this Idempotency-Key is still running; retry after 1 s for its response."
    )]
    IdempotencyKeyBusy,
    /// A router-wide cap is reached (requests in flight, request-body memory).
    #[error("The router is at its limit of {what}; retry after 1 s.")]
    Overloaded { what: &'static str },
    /// The body did not arrive in time.
    #[error("The request body did not arrive within {0} s.")]
    RequestTimeout(u64),
    /// The body could not be read (the client broke off, bad chunked framing).
    #[error("Could not read the request body: {0}.")]
    BodyUnreadable(String),
    /// An `Idempotency-Key` already used (within its time to live) for a different request body.
    #[error(
        "This Idempotency-Key was already used for a different request body; a key stands for one request. Use a new key for a new request."
    )]
    IdempotencyKeyReused,
    /// The router cannot send requests yet (the pod token is not read).
    #[error("The router is not ready: {what}; retry after 1 s.")]
    NotReady { what: &'static str },
}

fn list(models: &[String]) -> String {
    if models.is_empty() {
        "none".into()
    } else {
        models.join(", ")
    }
}

impl RouterError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoReadyPod { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyKeyBusy => StatusCode::CONFLICT,
            Self::Overloaded { .. } | Self::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The OpenAI `type` of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ModelNotFound { .. }
            | Self::BodyTooLarge(_)
            | Self::NotFound(_)
            | Self::IdempotencyKeyReused
            | Self::IdempotencyKeyBusy
            | Self::RequestTimeout(_)
            | Self::BodyUnreadable(_)
            | Self::MethodNotAllowed { .. } => "invalid_request_error",
            Self::Overloaded { .. } | Self::NotReady { .. } => "service_unavailable",
            Self::Unauthorized => "authentication_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::NoReadyPod { .. } => "service_unavailable",
            Self::Upstream { .. } => "server_error",
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::Unauthorized => "invalid_api_key",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::NoReadyPod { .. } => "no_ready_pod",
            Self::Upstream { .. } => "upstream_unreachable",
            Self::NotFound(_) => "not_found",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyKeyBusy => "idempotency_key_in_use",
            Self::Overloaded { .. } => "router_overloaded",
            Self::NotReady { .. } => "router_not_ready",
            Self::RequestTimeout(_) => "request_timeout",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BodyUnreadable(_) => "body_unreadable",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::ModelNotFound { .. } => Some("model"),
            _ => None,
        };
        ferry_contract::error::OpenAiError {
            message: self.to_string(),
            kind: self.kind(),
            param,
            code: self.code(),
        }
        .body()
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::NoReadyPod { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::Upstream { .. }
            | Self::Overloaded { .. }
            | Self::NotReady { .. }
            | Self::IdempotencyKeyBusy => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
