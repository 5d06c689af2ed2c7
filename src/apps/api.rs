//! What every REST route shares: JSON errors with Phoenix-style bodies, bearer-token
//! authentication, and request-body parsing.

use crate::accounts::{self, SignInError, User};
use crate::apps::state::AppState;
use crate::store::{Refusal, StoreError, NUL_REFUSED};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Map, Value};
use std::fmt;

/// An API failure and its status: 400 malformed JSON, 401 no valid token, 403 not allowed,
/// 404 unknown id, 422 invalid input (`{"errors": {"field": ["message"]}}`), 500.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    Forbidden,
    NotFound,
    Invalid(Vec<(String, String)>),
    /// 503: the server is too busy for this request now; the reason says why.
    Unavailable(String),
    Internal,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![(field.to_owned(), message.into())])
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadRequest(why) | ApiError::Unavailable(why) => f.write_str(why),
            ApiError::Invalid(fields) => {
                let all: Vec<String> = fields.iter().map(|(k, m)| format!("{k} {m}")).collect();
                f.write_str(&all.join(", "))
            }
            other => f.write_str(
                other
                    .status_code()
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .as_str(),
            ),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let errors = match self {
            ApiError::Invalid(fields) => {
                let mut m = Map::new();
                for (field, msg) in fields {
                    let list = m.entry(field.clone()).or_insert_with(|| json!([]));
                    if let Value::Array(a) = list {
                        a.push(json!(msg));
                    }
                }
                Value::Object(m)
            }
            ApiError::BadRequest(why) | ApiError::Unavailable(why) => json!({ "detail": why }),
            other => {
                json!({ "detail": other.status_code().canonical_reason().unwrap_or("Error") })
            }
        };
        HttpResponse::build(self.status_code()).json(json!({ "errors": errors }))
    }
}

/// A refusal raised inside a write, as the REST answer it means.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound => ApiError::NotFound,
            Refusal::Forbidden => ApiError::Forbidden,
            Refusal::Unauthorized => ApiError::Unauthorized,
            Refusal::Malformed(why) => ApiError::BadRequest(why),
            Refusal::Invalid(fields) => ApiError::Invalid(fields),
        }
    }
}

/// REST errors raised inside a write roll it back as the refusal they mean.
impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        StoreError::Refused(match e {
            ApiError::NotFound => Refusal::NotFound,
            ApiError::Forbidden => Refusal::Forbidden,
            ApiError::Unauthorized => Refusal::Unauthorized,
            ApiError::BadRequest(why) => Refusal::Malformed(why),
            ApiError::Invalid(fields) => Refusal::Invalid(fields),
            ApiError::Unavailable(why) => return StoreError::Busy(why),
            ApiError::Internal => return StoreError::Pool("internal error".into()),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(r) => r.into(),
            StoreError::Db(diesel::result::Error::NotFound) => ApiError::NotFound,
            StoreError::Busy(why) => {
                log::warn!("refused: {why}");
                ApiError::Unavailable(format!("too busy, try again later: {why}"))
            }
            other => {
                log::error!("{other}");
                ApiError::Internal
            }
        }
    }
}

pub type ApiResult<T = HttpResponse> = Result<T, ApiError>;

/// The request's `Authorization: Bearer <token>`, if any.
fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

/// The user of the request's bearer token (an API token, Phoenix.Token or JWT), or 401.
pub async fn authenticate(state: &AppState, req: &HttpRequest) -> ApiResult<User> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    match accounts::sign_in(&state.auth, &state.store, token).await {
        Ok(s) => Ok(s.user),
        Err(SignInError::Refused(_)) => Err(ApiError::Unauthorized),
        Err(SignInError::Store(e)) => Err(e.into()),
    }
}

/// The user of the request's bearer token; `None` without one; 401 for a bad one.
pub async fn optional_user(state: &AppState, req: &HttpRequest) -> ApiResult<Option<User>> {
    if bearer(req).is_none() {
        return Ok(None);
    }
    authenticate(state, req).await.map(Some)
}

/// A JSON object body: 400 if it is not JSON, 422 if it is JSON but not an object.
pub fn object_body(body: &[u8]) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
        Err(e) => Err(ApiError::BadRequest(format!("malformed JSON: {e}"))),
    }
}

/// A required string field, at most `max` characters.
pub fn text_field(m: &Map<String, Value>, field: &str, max: usize) -> ApiResult<String> {
    match m.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid(field, "can't be blank")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(ApiError::invalid(field, "can't be blank"))
        }
        Some(Value::String(s)) if s.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("should be at most {max} character(s)"),
        )),
        Some(Value::String(s)) if s.contains('\0') => Err(ApiError::invalid(field, NUL_REFUSED)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(field, "is invalid")),
    }
}

/// A path id: anything that is not a positive integer names nothing (404).
pub fn path_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or(ApiError::NotFound)
}

/// `before` and `limit` query parameters of a paged list.
pub fn paging(req: &HttpRequest, default_limit: i64) -> ApiResult<(Option<i64>, i64)> {
    let params = crate::endpoint::Params::parse(req.query_string());
    let before = match params.get("before") {
        None | Some("") => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| ApiError::invalid("before", "is invalid"))?,
        ),
    };
    let limit = match params.get("limit") {
        None | Some("") => default_limit,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", "must be between 1 and 100"))?,
    };
    Ok((before, limit))
}
