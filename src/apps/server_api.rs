//! The server API: the app's own backend drives the sockets over HTTP, as Elixir code calls
//! `Endpoint.broadcast` and `Endpoint.disconnect` in a Phoenix app.
//!
//! - `POST /api/server/broadcast`: `{topic, event, payload}` or a non-empty array of them; 202.
//! - `POST /api/server/disconnect`: `{socket_id}`; the sockets with that id close (1001), 202.
//! - `GET /api/server/presence/{topic}`: the topic's presence, `{key: {"metas": [...]}}`.
//! - `GET /api/server/topics`: topics with their subscriber counts.
//!
//! Every request carries the server key (`--server-api-key`) as `Authorization: Bearer <key>`;
//! without the flag nothing is served (404). Broadcasts and disconnects go through the
//! [`Endpoint`], so with `--redis-url` they reach every node; presence is every node's (as
//! `Presence::list` gives it); subscriber counts are this node's.

use crate::apps::api::ApiError;
use crate::apps::state::RECORDED_PREFIXES;
use crate::hub::Endpoint;
use crate::protocol::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Bounds of the server API's input.
#[derive(Debug, Clone)]
pub struct ServerApiLimits {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most broadcasts one request may carry (422 above it).
    pub max_broadcasts: usize,
}

impl Default for ServerApiLimits {
    fn default() -> Self {
        ServerApiLimits {
            max_body_bytes: 1024 * 1024,
            max_broadcasts: 1000,
        }
    }
}

/// The server API's state: the endpoint it drives and the key it wants.
pub struct ServerApi {
    endpoint: Endpoint,
    /// SHA-256 of the key: comparing digests of fixed length tells nothing of the key's length.
    key_digest: [u8; 32],
    limits: ServerApiLimits,
}

impl ServerApi {
    /// `key` must not be empty (anyone could send an empty one).
    pub fn new(endpoint: Endpoint, key: &str, limits: ServerApiLimits) -> ServerApi {
        assert!(!key.is_empty(), "the server API key is empty");
        ServerApi {
            endpoint,
            key_digest: Sha256::digest(key.as_bytes()).into(),
            limits,
        }
    }

    /// 401 unless the request carries the key, compared in constant time.
    fn authorize(&self, req: &HttpRequest) -> Result<(), Refused> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(given) = given else {
            return Err(Refused::Unauthorized(
                "give the server API key as Authorization: Bearer <key>",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.key_digest)) {
            Ok(())
        } else {
            Err(Refused::Unauthorized("wrong server API key"))
        }
    }

    /// The request's body, read up to the bound: 413 past it, before reading more than that.
    async fn body(
        &self,
        req: &HttpRequest,
        mut payload: web::Payload,
    ) -> Result<web::Bytes, Refused> {
        let max = self.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(Refused::TooLarge(max));
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
            if body.len() + chunk.len() > max {
                return Err(Refused::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn max_topic_bytes(&self) -> usize {
        self.endpoint.config().limits.max_topic_bytes
    }
}

/// Why a call is refused, answered in the REST API's style (`{"errors": ...}`).
#[derive(Debug)]
enum Refused {
    /// 401, with what is wrong with the key.
    Unauthorized(&'static str),
    /// 413: the body is over this many bytes.
    TooLarge(usize),
    /// 400 (not JSON) or 422 (invalid fields).
    Api(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Unauthorized(why) => f.write_str(why),
            Refused::TooLarge(max) => write!(
                f,
                "the body is over {max} bytes (--server-api-max-body-bytes)"
            ),
            Refused::Api(e) => e.fmt(f),
        }
    }
}

impl ResponseError for Refused {
    fn status_code(&self) -> StatusCode {
        match self {
            Refused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refused::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let detail = json!({"errors": {"detail": self.to_string()}});
        match self {
            Refused::Unauthorized(_) => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(detail),
            Refused::TooLarge(_) => HttpResponse::PayloadTooLarge().json(detail),
            Refused::Api(e) => e.error_response(),
        }
    }
}

/// One broadcast, as `Endpoint.broadcast(topic, event, payload)` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub topic: String,
    pub event: String,
    pub payload: Map<String, Value>,
}

/// Invalid fields, as `(field, message)`: a 422 in the house style.
pub type Invalid = Vec<(String, String)>;

/// `at` names where an object sits in the body: `""` for the body itself, `"[2]"` for the
/// third of an array; its fields are then `topic` or `[2].topic`.
fn field(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

/// A required non-empty string of at most `max` bytes (when given).
fn string(
    m: &Map<String, Value>,
    at: &str,
    name: &str,
    max: Option<usize>,
    invalid: &mut Invalid,
) -> Option<String> {
    let why = match m.get(name) {
        Some(Value::String(s)) if s.is_empty() => "can't be blank".to_owned(),
        Some(Value::String(s)) => match max {
            Some(max) if s.len() > max => format!("must be at most {max} bytes"),
            _ => return Some(s.clone()),
        },
        None | Some(Value::Null) => "can't be blank".to_owned(),
        Some(_) => "must be a string".to_owned(),
    };
    invalid.push((field(at, name), why));
    None
}

/// Keys other than `known` are refused: a misspelt `paylod` should not pass as no payload.
fn only(m: &Map<String, Value>, at: &str, known: &[&str], invalid: &mut Invalid) {
    for k in m.keys().filter(|k| !known.contains(&k.as_str())) {
        invalid.push((
            field(at, k),
            format!("is not a field here (expected {})", known.join(", ")),
        ));
    }
}

const BROADCAST_FIELDS: &[&str] = &["topic", "event", "payload"];

/// A broadcast of the body's object at `at`, or why not (added to `invalid`).
///
/// Topics the apps record (`community:feed`, `channel:`...) are refused: their events are
/// numbered in the change log, replayed to clients that rejoin with `since`, and ordered by
/// their seq on every node; one broadcast around that log would be seen by some clients and
/// never replayed to others.
pub fn parse_broadcast(
    v: &Value,
    at: &str,
    max_topic_bytes: usize,
    invalid: &mut Invalid,
) -> Option<Broadcast> {
    let Value::Object(m) = v else {
        let name = if at.is_empty() { "body" } else { at };
        invalid.push((
            name.to_owned(),
            "must be an object with topic, event and payload".to_owned(),
        ));
        return None;
    };
    let before = invalid.len();
    only(m, at, BROADCAST_FIELDS, invalid);
    let topic = string(m, at, "topic", Some(max_topic_bytes), invalid);
    if let Some(t) = &topic {
        if RECORDED_PREFIXES.iter().any(|p| t.starts_with(p)) {
            let recorded: Vec<String> = (RECORDED_PREFIXES.iter())
                .map(|p| match p.ends_with(':') {
                    true => format!("{p}*"),
                    false => p.to_string(),
                })
                .collect();
            invalid.push((
                field(at, "topic"),
                format!(
                    "is a recorded topic ({}): its events come from the apps' writes",
                    recorded.join(", ")
                ),
            ));
        }
    }
    let event = string(m, at, "event", None, invalid);
    let payload = match m.get("payload") {
        Some(Value::Object(p)) => Some(p.clone()),
        None | Some(Value::Null) => {
            invalid.push((field(at, "payload"), "can't be blank".to_owned()));
            None
        }
        Some(_) => {
            invalid.push((field(at, "payload"), "must be a JSON object".to_owned()));
            None
        }
    };
    match (topic, event, payload) {
        (Some(topic), Some(event), Some(payload)) if invalid.len() == before => Some(Broadcast {
            topic,
            event,
            payload,
        }),
        _ => None,
    }
}

/// The body as JSON: 400 when it is not.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

fn unprocessable(invalid: Invalid) -> ApiError {
    ApiError::Invalid(invalid)
}

/// Every broadcast of the body, or all that is wrong with it: nothing is sent unless all are
/// good.
fn broadcasts(body: &Value, api: &ServerApi) -> Result<Vec<Broadcast>, ApiError> {
    let max_topic = api.max_topic_bytes();
    let mut invalid = Invalid::new();
    let list = match body {
        Value::Array(items) if items.is_empty() => {
            return Err(unprocessable(vec![(
                "body".into(),
                "must not be an empty array".into(),
            )]));
        }
        Value::Array(items) if items.len() > api.limits.max_broadcasts => {
            return Err(unprocessable(vec![(
                "body".into(),
                format!(
                    "holds {} broadcasts, over the limit of {} (--server-api-max-broadcasts)",
                    items.len(),
                    api.limits.max_broadcasts
                ),
            )]));
        }
        Value::Array(items) => (items.iter().enumerate())
            .filter_map(|(i, v)| parse_broadcast(v, &format!("[{i}]"), max_topic, &mut invalid))
            .collect(),
        Value::Object(_) => parse_broadcast(body, "", max_topic, &mut invalid)
            .into_iter()
            .collect(),
        _ => {
            return Err(unprocessable(vec![(
                "body".into(),
                "must be a broadcast object or a non-empty array of them".into(),
            )]));
        }
    };
    if invalid.is_empty() {
        Ok(list)
    } else {
        Err(unprocessable(invalid))
    }
}

/// `POST /api/server/broadcast`: `{topic, event, payload}` or an array of them, sent in order.
async fn broadcast(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ServerApi>,
) -> Result<HttpResponse, Refused> {
    api.authorize(&req)?;
    let body = json_body(&api.body(&req, payload).await?)?;
    let list = broadcasts(&body, &api)?;
    let n = list.len();
    for b in list {
        api.endpoint
            .broadcast(&b.topic, &b.event, Payload::Json(Value::Object(b.payload)));
    }
    Ok(HttpResponse::Accepted().json(json!({ "broadcasts": n })))
}

/// `POST /api/server/disconnect {socket_id}`: the sockets with that id close with 1001, on
/// every node (their clients reconnect, and the connect callback decides again).
async fn disconnect(
    req: HttpRequest,
    payload: web::Payload,
    api: web::Data<ServerApi>,
) -> Result<HttpResponse, Refused> {
    api.authorize(&req)?;
    let body = json_body(&api.body(&req, payload).await?)?;
    let Value::Object(m) = body else {
        let why = "must be an object with socket_id";
        return Err(unprocessable(vec![("body".into(), why.into())]).into());
    };
    let mut invalid = Invalid::new();
    only(&m, "", &["socket_id"], &mut invalid);
    let max = api.max_topic_bytes();
    let id = string(&m, "", "socket_id", Some(max), &mut invalid);
    let Some(id) = id.filter(|_| invalid.is_empty()) else {
        return Err(unprocessable(invalid).into());
    };
    log::info!("server API: disconnecting socket id {id}");
    api.endpoint.disconnect(&id);
    Ok(HttpResponse::Accepted().json(json!({ "socket_id": id })))
}

/// `GET /api/server/presence/{topic}`: who is on the topic, on every node.
async fn presence(
    req: HttpRequest,
    topic: web::Path<String>,
    api: web::Data<ServerApi>,
) -> Result<HttpResponse, Refused> {
    api.authorize(&req)?;
    let max = api.max_topic_bytes();
    let why = match topic.len() {
        0 => "can't be blank".to_owned(),
        n if n > max => format!("must be at most {max} bytes"),
        _ => return Ok(no_store(api.endpoint.presence().list(&topic))),
    };
    Err(unprocessable(vec![("topic".into(), why)]).into())
}

/// `GET /api/server/topics`: `{"topics": [{"topic", "subscribers"}]}`, sorted, this node's
/// count of client subscriptions (each joined channel, and each socket id).
async fn topics(req: HttpRequest, api: web::Data<ServerApi>) -> Result<HttpResponse, Refused> {
    api.authorize(&req)?;
    let topics: Vec<Value> = (api.endpoint.pubsub().client_topics().into_iter())
        .map(|(topic, subscribers)| json!({"topic": topic, "subscribers": subscribers}))
        .collect();
    Ok(no_store(json!({ "topics": topics })))
}

/// A 200 with `body`, never cached: it is live state.
fn no_store(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// Registers `/api/server/...`. Left unregistered (404) when the server has no key.
pub fn routes(cfg: &mut web::ServiceConfig, api: web::Data<ServerApi>) {
    use actix_web::web::{get, post, resource};
    cfg.service(
        web::scope("/api/server")
            .app_data(api)
            .service(resource("/broadcast").route(post().to(broadcast)))
            .service(resource("/disconnect").route(post().to(disconnect)))
            .service(resource("/presence/{topic:.*}").route(get().to(presence)))
            .service(resource("/topics").route(get().to(topics))),
    );
}
