//! Supabase Realtime's REST broadcasts, where realtime-js sends when its socket cannot (and
//! `httpSend`):
//!
//! - `POST /realtime/v1/api/broadcast` `{"messages": [{topic, event, payload, private}]}`:
//!   each to the subscribers of `realtime:<topic>` as `{type: "broadcast", event, payload}`.
//! - `POST /realtime/v1/api/broadcast/{topic}/events/{event}[?private=true]`: the body is the
//!   payload, JSON or (`application/octet-stream`) raw bytes, relayed as it came.
//!
//! Both answer 202 with no body. The caller's token is `Authorization: Bearer`, else the
//! `apikey` header (or parameter): 401 `{"message": "Unauthorized"}` without a valid one. A bad
//! message is 422 naming it; a private message the rules refuse is skipped, as in Realtime.

use super::{now, room, Realtime};
use crate::auth::supabase::Claims;
use crate::hub::Endpoint;
use crate::metrics::{RealtimeRefusal, REALTIME};
use crate::protocol::{Payload, UserBroadcast};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What the routes share.
pub struct Rest {
    pub realtime: Arc<Realtime>,
    pub endpoint: Endpoint,
}

/// Mounts the routes under [`super::MOUNT`].
pub fn routes(cfg: &mut web::ServiceConfig, rest: web::Data<Rest>) {
    let limit = rest.realtime.limits.max_rest_body_bytes;
    cfg.service(
        web::scope("/realtime/v1/api")
            .app_data(rest)
            .app_data(web::PayloadConfig::new(limit))
            .route("/broadcast", web::post().to(batch))
            .route("/broadcast/{topic}/events/{event}", web::post().to(single)),
    );
}

fn answer(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status).json(body)
}

fn unauthorized() -> HttpResponse {
    REALTIME.refuse(RealtimeRefusal::Token);
    answer(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"}))
}

/// The caller's verified claims, as Realtime's `AuthTenant` finds its token.
fn caller(req: &HttpRequest, realtime: &Realtime) -> Option<Claims> {
    let header_value = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header_value(header::AUTHORIZATION.as_str())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.to_owned());
    let query = crate::endpoint::Params::parse(req.query_string());
    let token = bearer
        .or_else(|| header_value("apikey").map(str::to_owned))
        .or_else(|| query.get("apikey").map(str::to_owned))?;
    realtime.keys.verify(&token, now()).ok()
}

/// Whether `claims` may broadcast to the channel: any valid key on a public one, the rules'
/// `write` on a private one.
fn may_write(realtime: &Realtime, name: &str, private: bool, claims: &Claims) -> bool {
    !private || realtime.rules.access(name, claims).write
}

/// `POST /realtime/v1/api/broadcast`.
async fn batch(req: HttpRequest, body: web::Bytes, rest: web::Data<Rest>) -> HttpResponse {
    let realtime = &rest.realtime;
    let Some(claims) = caller(&req, realtime) else {
        return unauthorized();
    };
    let messages = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) => match m.remove("messages") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            _ => {
                let why = "must be a non-empty list of {topic, event, payload, private}";
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": {"messages": [why]}}),
                );
            }
        },
        _ => {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"body": ["must be a JSON object with messages"]}}),
            )
        }
    };
    let max = realtime.limits.max_rest_messages;
    if messages.len() > max {
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": format!(
                "Too many messages to broadcast, please reduce the batch size (at most {max})"
            )}),
        );
    }
    // Every message checked before any is sent: a 422 sends none.
    let mut checked = Vec::with_capacity(messages.len());
    let mut errors = Vec::with_capacity(messages.len());
    for m in &messages {
        match message(m, realtime) {
            Ok(ok) => {
                checked.push(ok);
                errors.push(json!({}));
            }
            Err(e) => errors.push(Value::Object(e)),
        }
    }
    if checked.len() < messages.len() {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"errors": {"messages": errors}}),
        );
    }
    for (topic, event, payload, private) in checked {
        if !may_write(realtime, &topic, private, &claims) {
            REALTIME.refuse(RealtimeRefusal::Unauthorized);
            continue;
        }
        REALTIME.relayed();
        let payload = json!({"event": event, "payload": payload, "type": "broadcast"});
        rest.endpoint
            .broadcast(&room(&topic, private), "broadcast", Payload::Json(payload));
    }
    HttpResponse::Accepted().finish()
}

/// One message of a batch: `(topic, event, payload, private)`, or its errors by field.
fn message(
    m: &Value,
    realtime: &Realtime,
) -> Result<(String, String, Value, bool), Map<String, Value>> {
    let mut errors = Map::new();
    let mut error = |field: &str, why: &str| {
        errors.insert(field.to_owned(), json!([why]));
    };
    let Value::Object(m) = m else {
        error("message", "must be an object");
        return Err(errors);
    };
    let text = |field: &str| {
        m.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let topic = text("topic");
    let event = text("event");
    if topic.is_none() {
        error("topic", "can't be blank");
    }
    if event.is_none() {
        error("event", "can't be blank");
    }
    let payload = m.get("payload");
    match payload {
        Some(Value::Object(_)) => {}
        Some(_) => error("payload", "is invalid"),
        None => error("payload", "can't be blank"),
    }
    if payload.is_some_and(|p| crate::protocol::json_len(p) > realtime.limits.max_payload_bytes) {
        REALTIME.refuse(RealtimeRefusal::Size);
        error("payload", "Payload size exceeds tenant limit");
    }
    let private = match m.get("private") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            error("private", "is invalid");
            false
        }
    };
    match (topic, event, payload) {
        (Some(t), Some(e), Some(p)) if errors.is_empty() => {
            Ok((t.to_owned(), e.to_owned(), p.clone(), private))
        }
        _ => Err(errors),
    }
}

/// `POST /realtime/v1/api/broadcast/{topic}/events/{event}`.
async fn single(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    rest: web::Data<Rest>,
) -> HttpResponse {
    let realtime = &rest.realtime;
    let Some(claims) = caller(&req, realtime) else {
        return unauthorized();
    };
    let (topic, event) = path.into_inner();
    let query = crate::endpoint::Params::parse(req.query_string());
    let private = query.get("private") == Some("true");
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let json = if content_type.starts_with("application/json") {
        if !crate::protocol::is_json(&body) {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"payload": ["is not JSON"]}}),
            );
        }
        true
    } else if content_type.starts_with("application/octet-stream") {
        false
    } else {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"message": "Content-Type must be application/json or application/octet-stream"}),
        );
    };
    if body.len() > realtime.limits.max_payload_bytes {
        REALTIME.refuse(RealtimeRefusal::Size);
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"errors": {"payload": ["Payload size exceeds tenant limit"]}}),
        );
    }
    if !may_write(realtime, &topic, private, &claims) {
        REALTIME.refuse(RealtimeRefusal::Unauthorized);
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"message": format!(
                "You do not have permissions to write to this Channel topic: {topic}"
            )}),
        );
    }
    REALTIME.relayed();
    let user = UserBroadcast {
        event,
        json,
        data: body,
    };
    rest.endpoint.broadcast(
        &room(&topic, private),
        "broadcast",
        Payload::UserBroadcast(user),
    );
    HttpResponse::Accepted().finish()
}
