//! Admin API errors and how they look on the wire (APISIX 3 shapes).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::StoreError;

/// Every way an Admin API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 400 `{"error_msg": ...}`: validation and request errors.
    #[error("{0}")]
    BadRequest(String),
    /// 400 with the raw body echoed, for bodies that are not JSON.
    #[error("invalid request body: {msg}")]
    BadBody {
        /// The decoder's message.
        msg: String,
        /// The body as received (lossy UTF-8).
        raw: String,
    },
    /// 401 `{"error_msg":"failed to check token","description":...}`.
    #[error("failed to check token: {0}")]
    Unauthorized(&'static str),
    /// 403 for a client outside `allow_admin`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `{"message":"Key not found"}`.
    #[error("Key not found")]
    KeyNotFound,
    /// 404 with an `error_msg` (unknown resource type, unrouted path).
    #[error("{0}")]
    NotFound(String),
    /// 405 `{"error_msg": ...}`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413 for bodies over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 400 with a plain-text body (APISIX's paging error is not JSON).
    #[error("{0}")]
    PlainBadRequest(&'static str),
    /// The request body did not arrive in time.
    #[error("request body not received within {0}s")]
    BodyTimeout(f64),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 503: the write is durable but the data plane does not serve it.
    #[error("{0}")]
    NotApplied(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) | AdminError::BadBody { .. } => StatusCode::BAD_REQUEST,
            AdminError::PlainBadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::KeyNotFound | AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AdminError::Store(StoreError::ReadOnly(_)) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::NotApplied(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(&self) -> Value {
        match self {
            AdminError::BadBody { msg, raw } => {
                json!({"error_msg": format!("invalid request body: {msg}"), "req_body": raw})
            }
            AdminError::Unauthorized(why) => {
                json!({"error_msg": "failed to check token", "description": why})
            }
            AdminError::KeyNotFound => json!({"message": "Key not found"}),
            other => json!({"error_msg": other.to_string()}),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let AdminError::PlainBadRequest(text) = self {
            return (StatusCode::BAD_REQUEST, text).into_response();
        }
        let status = self.status();
        // A change that is not served was logged with its object already.
        if status.is_server_error() && !matches!(self, AdminError::NotApplied(_)) {
            tracing::warn!(error = %self, "admin request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_apisix() {
        assert_eq!(
            AdminError::Unauthorized("missing apikey").body(),
            json!({"error_msg": "failed to check token", "description": "missing apikey"})
        );
        assert_eq!(
            AdminError::KeyNotFound.body(),
            json!({"message": "Key not found"})
        );
        assert_eq!(
            AdminError::Store(StoreError::Conflict).body(),
            json!({"error_msg": "value changed before overwritten"})
        );
        assert_eq!(
            AdminError::Store(StoreError::Conflict).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let not_served = AdminError::NotApplied("ssl [1] is stored but not served: x".into());
        assert_eq!(not_served.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            not_served.body(),
            json!({"error_msg": "ssl [1] is stored but not served: x"})
        );
    }
}
