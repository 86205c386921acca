//! Every way a request can fail, mapped once to an HTTP status and an OpenAI-shaped body:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or a field has the wrong type or value.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// A model id this server does not serve.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// Missing or unknown API key.
    #[error("Incorrect API key provided. Pass it as `Authorization: Bearer <key>`.")]
    Unauthorized,
    /// The body is larger than `--max-body-bytes`.
    #[error("Request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// The wait queue is full.
    #[error("The server is at capacity ({waiting} requests waiting); retry after {retry_after} s.")]
    Overloaded { waiting: usize, retry_after: u64 },
    /// The model is still loading, or the server is draining for shutdown.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The engine failed while generating (the message without candle's backtrace).
    #[error("The engine failed: {}", without_backtrace(.0))]
    Engine(String),
    /// A fault injected by `--fault-error-rate`, for rollback drills.
    #[error("Injected fault (--fault-error-rate).")]
    InjectedFault,
    /// The path does not exist.
    #[error("Unknown endpoint {0}.")]
    NotFound(String),
    /// The body did not arrive within `--body-timeout-seconds`.
    #[error("The request body did not arrive within {0} s.")]
    RequestTimeout(u64),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Engine(_) | Self::InjectedFault => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ModelNotFound(_)
            | Self::BodyTooLarge(_)
            | Self::NotFound(_)
            | Self::RequestTimeout(_) => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::Overloaded { .. } => "rate_limit_error",
            Self::Unavailable(_) => "service_unavailable",
            Self::Engine(_) | Self::InjectedFault => "server_error",
        }
    }

    /// Stable machine-readable code, also the `code` label of the request counter.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::ModelNotFound(_) => "model_not_found",
            Self::Unauthorized => "invalid_api_key",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Overloaded { .. } => "overloaded",
            Self::Unavailable(_) => "unavailable",
            Self::Engine(_) => "engine_error",
            Self::InjectedFault => "injected_fault",
            Self::NotFound(_) => "not_found",
            Self::RequestTimeout(_) => "request_timeout",
        }
    }

    /// The error as the JSON object OpenAI clients parse (also sent as an SSE event mid-stream).
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound(_) => Some("model"),
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let retry_after = match &self {
            Self::Overloaded { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(5),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An engine error's message without the backtrace candle appends (`\n   0: bt\n at …`): clients
/// and logs get the reason, not the engine's stack.
pub(crate) fn without_backtrace(message: &str) -> &str {
    message
        .split("\n   0:")
        .next()
        .unwrap_or(message)
        .trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_reach_clients_without_the_backtrace() {
        let e = ApiError::Engine(
            "kv-cache: requested capacity (1024) above max seq len (512)\n   0: bt\n             at /src/error.rs:264:25\n   1: append".into(),
        );
        assert_eq!(
            e.body()["error"]["message"],
            "The engine failed: kv-cache: requested capacity (1024) above max seq len (512)"
        );
        assert_eq!(
            ApiError::Engine("channel closed".into()).to_string(),
            "The engine failed: channel closed"
        );
    }
}
