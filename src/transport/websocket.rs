//! The WebSocket transport: `<mount>/websocket`.
//!
//! Reading uses actix-ws's frame decoder. Writing bypasses actix-ws's session: the response body
//! is the connection's own queue of complete frames, so a broadcast's shared bytes reach the
//! socket without being re-framed per subscriber, and several queued frames go out in one write.

use super::{connect, Mount};
use crate::connection::{close_code, Connection};
use crate::endpoint::Endpoint;
use crate::metrics::{Transport, ENGINE};
use crate::protocol::FrameKind;
use crate::socket::{End, SocketState};
use crate::transport::frame;
use actix_http::ws::{CloseReason, ProtocolError};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The prefix phoenix.js puts before the base64 token in `Sec-WebSocket-Protocol`.
const AUTH_PREFIX: &str = "base64url.bearer.phx.";

/// `GET <mount>/websocket`.
pub async fn handle(req: HttpRequest, body: web::Payload, mount: web::Data<Mount>) -> HttpResponse {
    let (auth_token, offers_phoenix) = subprotocols(&req);
    let (serializer, connected) = match connect(&mount, &req, auth_token).await {
        Ok(ok) => ok,
        Err(e) => {
            e.log("websocket", req.peer_addr());
            return match e.status() {
                403 => HttpResponse::Forbidden().finish(),
                _ => HttpResponse::InternalServerError().finish(),
            };
        }
    };
    // Validity of the upgrade itself is checked after connect, as Phoenix does.
    let (res, _session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => return HttpResponse::from_error(e),
    };
    let endpoint = mount.endpoint.clone();
    let conn = endpoint.register(serializer);
    let v2 = serializer == crate::protocol::Serializer::V2;
    ENGINE.opened(Transport::WebSocket, v2);
    let mut res = res.map_body(|_, _| BodyStream::new(Writer(conn.clone())).boxed());
    if offers_phoenix {
        res.headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("phoenix"));
    }
    let limits = &endpoint.config().limits;
    let stream = stream
        .max_frame_size(limits.max_frame_size)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_size);
    conn.describe(Transport::WebSocket, connected.id.clone());
    let state = SocketState::new(endpoint.clone(), mount.socket.clone(), conn, connected);
    actix_rt::spawn(async move {
        run(state, stream, endpoint).await;
        ENGINE.closed(Transport::WebSocket, v2);
    });
    res
}

/// The decoded auth token, if offered, and whether the client offered the `phoenix` subprotocol.
fn subprotocols(req: &HttpRequest) -> (Option<String>, bool) {
    let mut token = None;
    let mut phoenix = false;
    for offer in req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if offer == "phoenix" {
            phoenix = true;
        } else if let Some(b64) = offer.strip_prefix(AUTH_PREFIX) {
            token = decode_token(b64);
        }
    }
    (token, phoenix)
}

/// phoenix.js writes the token with `btoa` (standard alphabet) minus padding; accept URL-safe too.
fn decode_token(b64: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let b64 = b64.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(b64)
        .or_else(|_| URL_SAFE_NO_PAD.decode(b64))
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The response body: the connection's queued frames, as they are.
struct Writer(Arc<Connection>);

impl Stream for Writer {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_frame(cx).map(|f| f.map(Ok))
    }
}

enum Exit {
    /// Close with a code and reason.
    Close(u16, String),
    /// The client closed (`Some`: it sent a close frame, answered with its code) or vanished.
    Gone(Option<Option<CloseReason>>),
}

async fn run(
    mut state: SocketState,
    mut stream: actix_ws::AggregatedMessageStream,
    endpoint: Endpoint,
) {
    let conn = state.conn().clone();
    let limits = endpoint.config().limits.clone();
    let mut rate = super::RateLimit::new(limits.max_messages_per_second);
    let mut last_seen = Instant::now();
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);

    let exit = loop {
        tokio::select! {
            // Mail first: what a channel sent itself while handling a frame comes before the
            // next frame, as in Phoenix.
            biased;
            mail = conn.next_mail() => match mail {
                Some(m) => {
                    if let Some(End::Close(code, why)) = state.handle_mail(m).await {
                        break Exit::Close(code, why);
                    }
                }
                // Overflowed: the connection is already closing.
                None => break Exit::Gone(None),
            },
            msg = stream.recv() => {
                last_seen = Instant::now();
                let (kind, data) = match msg {
                    None => break Exit::Gone(None),
                    Some(Err(e)) => break protocol_error(conn.id, e),
                    Some(Ok(AggregatedMessage::Text(t))) => (FrameKind::Text, t.into_bytes()),
                    Some(Ok(AggregatedMessage::Binary(b))) => (FrameKind::Binary, b),
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        conn.push(frame::pong(&p));
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(r))) => break Exit::Gone(Some(r)),
                };
                ENGINE.frame_in(data.len());
                match conn.serializer.decode(kind, &data) {
                    Ok(msg) => state.handle(msg).await,
                    Err(e) => {
                        // The reason goes to the log only: Phoenix closes with an empty one.
                        log::warn!("connection {}: {e}; closing", conn.id);
                        break Exit::Close(close_code::BAD_FRAME, String::new());
                    }
                }
                if let Some(wait) = rate.take() {
                    log::debug!("connection {}: over {} msg/s, slowing reads", conn.id, limits.max_messages_per_second);
                    tokio::time::sleep(wait).await;
                }
            }
            _ = &mut idle => {
                let deadline = last_seen + limits.idle_timeout;
                if Instant::now() >= deadline {
                    log::info!("connection {}: nothing received for {:?}; closing", conn.id, limits.idle_timeout);
                    break Exit::Close(close_code::IDLE, String::new());
                }
                idle.as_mut().reset(deadline.into());
            }
        }
    };

    state.terminate().await;
    match exit {
        Exit::Close(code, why) => conn.close(code, &why),
        Exit::Gone(Some(r)) => conn.close(r.map_or(1000, |r| r.code.into()), ""),
        Exit::Gone(None) => conn.abandon(),
    }
    endpoint.unregister(conn.id);
}

fn protocol_error(id: u64, e: ProtocolError) -> Exit {
    match e {
        ProtocolError::Overflow => {
            log::warn!("connection {id}: frame over the size limit; closing");
            Exit::Close(close_code::TOO_BIG, String::new())
        }
        ProtocolError::Io(e) => {
            log::debug!("connection {id}: {e}");
            Exit::Gone(None)
        }
        e => {
            log::warn!("connection {id}: websocket protocol error: {e}; closing");
            Exit::Close(close_code::PROTOCOL, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_phoenix_js_auth_tokens() {
        // phoenix.js test vector: token "1234" -> base64url.bearer.phx.MTIzNA
        assert_eq!(decode_token("MTIzNA").as_deref(), Some("1234"));
        assert_eq!(decode_token("MTIzNA==").as_deref(), Some("1234"));
        // '+' and '/' from btoa, and their URL-safe forms.
        assert_eq!(decode_token("Pz8_").as_deref(), Some("???"));
        assert_eq!(decode_token("Pz8/").as_deref(), Some("???"));
        assert_eq!(decode_token("!!"), None);
    }
}
