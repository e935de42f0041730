//! Error answers: the body every error carries, and the statuses the routes give.

use axum::Json;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use crate::outbox::StoreError;
/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

/// The answers of the auth layer, which every `/api/v1` route can give.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No token, or one mfoundry does not know.
    #[response(status = 401, description = "No valid token")]
    Unauthorized(ErrorBody),
    /// The token's role is too weak for the route.
    #[response(status = 403, description = "Role too weak")]
    Forbidden(ErrorBody),
}

/// An error answer: a status and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let error = crate::outbox::Chain(&error);
        tracing::error!(error = %error, "admin API: the outbox failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the store could not answer: {error}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.message))).into_response()
    }
}

/// 404 for paths that are not routes.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {}; see /openapi.json", uri.path()))
}

/// Answers for requests the limits stopped.
pub async fn overloaded_or_timed_out(error: tower::BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            Json(ErrorBody::new("the request took too long")),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(format!("cannot serve the request: {error}"))),
        )
            .into_response()
    }
}
