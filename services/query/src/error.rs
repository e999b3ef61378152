//! The one error type of the API and its single mapping to HTTP responses:
//! every failure, whichever layer produces it, reaches clients as
//! `{ "error": { "code": "...", "message": "..." } }`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagetag_shared::PortError;
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for clients to branch on: `invalid_parameter`, `not_found`,
    /// `timeout`, `dependency_unavailable`, …
    pub code: String,
    /// For people; may change.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; `code` is stable for clients to branch on.
    #[error("{code}: {message}")]
    BadRequest { code: &'static str, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    /// No credential, or one that is not valid; answered with a
    /// `WWW-Authenticate: Bearer` challenge.
    #[error("{code}: {message}")]
    Unauthorized { code: &'static str, message: String },
    /// A valid credential without the rights the request needs.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The client is over its rate limit; it may retry after the wait.
    #[error("too many requests")]
    TooManyRequests { retry_after: std::time::Duration },
    /// The resource is in a state that does not allow the request.
    #[error("{code}: {message}")]
    Conflict { code: &'static str, message: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request took longer than the configured limit.
    #[error("request timed out")]
    Timeout,
    /// A dependency is down or throttling; the detail stays in the logs
    /// because adapter messages name tables and endpoints.
    #[error("dependency unavailable: {0}")]
    DependencyUnavailable(String),
    /// A bug or bad stored data; the detail stays in the logs.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_parameter",
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::Internal(detail.into())
    }

    pub fn invalid_cursor(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_cursor",
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout | Self::DependencyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Unauthorized { code, .. } | Self::Conflict { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Timeout => "timeout",
            Self::DependencyUnavailable(_) => "dependency_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::BadRequest { message, .. }
            | Self::NotFound(message)
            | Self::Unauthorized { message, .. }
            | Self::Forbidden(message)
            | Self::Conflict { message, .. } => message.clone(),
            Self::TooManyRequests { retry_after } => format!(
                "too many requests; retry in {} s",
                retry_after_seconds(*retry_after)
            ),
            Self::MethodNotAllowed => "method not allowed on this resource".into(),
            Self::PayloadTooLarge => "the request body is too large".into(),
            Self::Timeout => "the request took too long; retry later".into(),
            Self::DependencyUnavailable(_) => "the index is unavailable; retry later".into(),
            Self::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged here, once, so no handler can forget to and none logs twice.
        match &self {
            Self::DependencyUnavailable(detail) => {
                tracing::warn!(error = %detail, "dependency unavailable")
            }
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::Timeout => tracing::warn!("request timed out"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.public_message(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized { .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"imagetag\""),
                );
            }
            Self::TooManyRequests { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds(*retry_after)),
                );
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up so a client that waits that long succeeds.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl From<PortError> for ApiError {
    fn from(err: PortError) -> Self {
        match err {
            // A lost race reads as "try again", like an outage.
            PortError::Unavailable(detail) | PortError::Conflict(detail) => {
                Self::DependencyUnavailable(detail)
            }
            PortError::NotFound(_) => Self::NotFound("not found".into()),
            // Reads send no user input the store could call invalid, so this
            // is stored data the service cannot decode.
            PortError::Invalid(detail) => Self::Internal(format!("store: {detail}")),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid_parameter(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid_parameter(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::bad_request("invalid_body", rejection.body_text())
    }
}
