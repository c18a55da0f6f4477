//! Why a request failed, and the HTTP status and OIP error body each reason gets.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::runtime::SegmentError;

/// A failed request. Every variant names what failed: the input, the model or the segment.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or does not match the model (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is over the configured limit (413).
    #[error("the request body is over the limit of {limit} bytes (the server's --max-body-size)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The function's queue is full (503, with Retry-After).
    #[error("{function} is overloaded: every instance is busy and its queue is full; retry later")]
    Overloaded {
        /// The segment function.
        function: String,
    },
    /// No replica of a remote segment could be reached (503, with Retry-After).
    #[error("{function} is unavailable: no replica answered ({reasons})")]
    Unavailable {
        /// The segment function.
        function: String,
        /// What each replica did.
        reasons: String,
    },
    /// A remote segment failed or rejected what it was sent (500).
    #[error("{function} at {replica} answered {status}: {message}")]
    Remote {
        /// The segment function.
        function: String,
        /// The replica that answered.
        replica: String,
        /// Its HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request's deadline passed (504).
    #[error("{function}: the request's deadline passed {waited}")]
    Deadline {
        /// The segment function.
        function: String,
        /// Where the request was when it passed.
        waited: &'static str,
    },
    /// A segment failed (500; 400 if it rejected its inputs, 504 at its deadline).
    #[error("{function}: {error}")]
    Segment {
        /// The segment function.
        function: String,
        /// What the segment reported.
        error: SegmentError,
    },
    /// Something in the server itself went wrong (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The Retry-After of an overloaded response, in seconds.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl ServeError {
    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Overloaded { .. } | ServeError::Unavailable { .. } | ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Segment { error, .. } => match error {
                SegmentError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
                SegmentError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServeError::Remote { .. } | ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = RETRY_AFTER.as_secs().to_string();
            return (status, [(header::RETRY_AFTER, retry)], body).into_response();
        }
        (status, body).into_response()
    }
}
