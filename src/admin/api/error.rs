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

    /// A framework rejection: 413 and 415 as they are, any other (422 included) as the
    /// documented 400.
    fn rejected(status: StatusCode, what: &str, text: String) -> Self {
        let status = match status {
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            message: format!("the {what} is not valid: {}", without_values(&text)),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
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

/// A framework's rejection text with the values it quotes left out (`invalid type: string
/// "DOE", expected u64`): a request's values can be patient data (an MRN in a search, a name
/// in a path), and an error answer is shown on screens and kept in logs. Field names and
/// expected types stay.
fn without_values(text: &str) -> String {
    const QUOTED: [(&str, char); 6] = [
        ("string \"", '"'),
        ("integer `", '`'),
        ("floating point `", '`'),
        ("boolean `", '`'),
        ("character `", '`'),
        ("Cannot parse `", '`'),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (marker, close) in QUOTED {
            if let Some(after) = rest.strip_prefix(marker) {
                out.push_str(marker);
                out.push('…');
                match after.find(close) {
                    Some(end) => {
                        out.push(close);
                        rest = &after[end + close.len_utf8()..];
                    }
                    None => rest = "",
                }
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(next) = chars.next() {
            out.push(next);
        }
        rest = chars.as_str();
    }
    out
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

/// `Path`, `Query` and `Json` whose rejections (a segment that is not a number, a malformed
/// query or body) are answered like every other error: 400 with an [`ErrorBody`], not the
/// framework's plain text.
macro_rules! json_rejecting {
    ($name:ident, $inner:ident, $what:literal) => {
        #[doc = concat!("[`axum::extract::", stringify!($inner), "`] answering a rejection with an [`ErrorBody`].")]
        #[derive(Debug)]
        pub struct $name<T>(pub T);
    };
}

json_rejecting!(ApiPath, Path, "path");
json_rejecting!(ApiQuery, Query, "query");
json_rejecting!(ApiJson, Json, "body");

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| {
                ApiError::rejected(rejection.status(), "path", rejection.body_text())
            })
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError::rejected(rejection.status(), "query", rejection.body_text())
            })
    }
}

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|axum::Json(value)| Self(value))
            .map_err(|rejection| {
                ApiError::rejected(rejection.status(), "body", rejection.body_text())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn rejections_keep_names_and_types_but_not_values() {
        assert_eq!(
            without_values("invalid type: string \"DOE\", expected u64 at line 1 column 9"),
            "invalid type: string \"…\", expected u64 at line 1 column 9"
        );
        assert_eq!(
            without_values("patient_id: invalid type: integer `4711`, expected a string"),
            "patient_id: invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            without_values("Cannot parse `MRN123` to a `u64`"),
            "Cannot parse `…` to a `u64`"
        );
        assert_eq!(
            without_values("unknown field `seq`, expected `seqs` or `all`"),
            "unknown field `seq`, expected `seqs` or `all`"
        );
    }
}
