//! The WebSocket transport: `<mount>/websocket`.
//!
//! A server built by [`crate::Server`] takes each upgrade request from actix-http's HTTP/1
//! dispatcher together with its socket ([`upgrade`]): after the handshake the connection's one
//! task owns the socket and holds no buffer while idle (see [`super::ws_io`]). REST and LongPoll
//! stay on actix-web, on the same listener.
//!
//! [`handle`] is the same endpoint as an actix-web route: it answers what is not an upgrade
//! (403 or 400, as Phoenix does) and still serves WebSockets for an actix-web `App` of one's own
//! (see [`crate::server::configure_sockets`]), reading through actix-web's payload and writing
//! through its response body (with actix-http's buffers, about 16 kB per connection).

use super::ws_io::{self, WsIo};
use super::ws_read::{Incoming, ReadError, Reader};
use super::{connect, Mount};
use crate::connection::Connection;
use crate::endpoint::{Connected, Endpoint};
use crate::metrics::Transport;
use crate::protocol::Serializer;
use crate::socket::SocketState;
use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_http::ws::ProtocolError;
use actix_http::{h1, Method, Request, RequestHead, Response, StatusCode};
use actix_service::Service;
use actix_web::body::BodyStream;
use actix_web::dev::ServiceResponse;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, Stream};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The prefix phoenix.js puts before the base64 token in `Sec-WebSocket-Protocol`.
const AUTH_PREFIX: &str = "base64url.bearer.phx.";

/// A handshake that succeeded: the 101 response and the connected socket's serializer.
struct Accepted {
    response: Response<()>,
    serializer: Serializer,
    connected: Connected,
}

/// The connect steps, then the handshake's own checks (after connect, as Phoenix does).
/// `Err`: the response that refuses the request.
async fn accept(mount: &Mount, head: &RequestHead) -> Result<Accepted, Response<BoxBody>> {
    let (auth_token, offers_phoenix) = subprotocols(head);
    let (serializer, connected) = match connect(mount, head, auth_token).await {
        Ok(ok) => ok,
        Err(e) => {
            e.log("websocket", head.peer_addr);
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(match e.body() {
                Some(body) => Response::build(status)
                    .content_type("application/json")
                    .body(body.to_string())
                    .map_into_boxed_body(),
                None => Response::new(status),
            });
        }
    };
    let mut response = match actix_http::ws::handshake(head) {
        Ok(mut builder) => builder.finish().drop_body(),
        Err(e) => return Err(Response::from(&e)),
    };
    if offers_phoenix {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("phoenix"));
    }
    Ok(Accepted {
        response,
        serializer,
        connected,
    })
}

/// The socket mounted at this request's path, if any serves WebSockets.
fn mount_for<'a>(mounts: &'a [(String, web::Data<Mount>)], path: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .find(|(base, m)| {
            m.socket.websocket && path.strip_prefix(base.as_str()) == Some("/websocket")
        })
        .map(|(_, m)| &***m)
}

/// Serves a request that asks for `Upgrade: websocket`, handed over by actix-http's HTTP/1
/// dispatcher with its socket. A request for another path goes to the actix-web `app` as any
/// other would (its response ends the connection: the socket is ours now).
pub(crate) async fn upgrade<T, S, B>(
    mounts: Rc<Vec<(String, web::Data<Mount>)>>,
    app: Rc<S>,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let Some(mount) = mount_for(&mounts, req.path()) else {
        let res: Response<BoxBody> = match app.call(req).await {
            Ok(res) => Response::from(res).map_into_boxed_body(),
            Err(e) => Response::from(e),
        };
        return respond(framed, res).await;
    };
    if req.method() != Method::GET {
        // Phoenix answers any other method with 400 and an empty body.
        return respond(framed, Response::new(StatusCode::BAD_REQUEST)).await;
    }
    let accepted = match accept(mount, req.head()).await {
        Ok(a) => a,
        Err(res) => return respond(framed, res).await,
    };
    // The request's header values are slices of the dispatcher's 8 KiB read buffer: holding
    // the request would hold that buffer for the connection's life.
    drop(req);
    let mut framed = framed;
    framed
        .send((accepted.response, BodySize::None).into())
        .await?;
    // Keep the socket and whatever the client sent after its request; drop actix-http's
    // buffers.
    let parts = framed.into_parts();
    let endpoint = mount.endpoint.clone();
    let reader = reader(&endpoint, &parts.read_buf);
    let io = ws_io::Owned::new(parts.io, reader);
    drop(parts.read_buf);
    drop(parts.write_buf);
    let conn = endpoint.register(accepted.serializer);
    conn.describe(Transport::WebSocket, accepted.connected.id.clone());
    let state = SocketState::new(
        endpoint.clone(),
        mount.socket.clone(),
        conn,
        accepted.connected,
    );
    // The connection gets a task of its own, sized for the connection loop alone: this
    // handshake's future, and the HTTP dispatcher's task holding it, end here.
    crate::task::spawn(ws_io::run(state, io, endpoint));
    Ok(())
}

/// A reader within the endpoint's limits; `early`: what the client sent after its request.
fn reader(endpoint: &Endpoint, early: &[u8]) -> Reader {
    let limits = &endpoint.config().limits;
    Reader::new(limits.max_frame_size, limits.max_fragments, early)
}

/// Writes a whole response on a socket taken from the HTTP dispatcher; the connection then ends.
async fn respond<T: AsyncRead + AsyncWrite + Unpin>(
    mut framed: Framed<T, h1::Codec>,
    res: Response<BoxBody>,
) -> Result<(), actix_web::Error> {
    let (mut head, body) = res.into_parts();
    head.head_mut()
        .set_connection_type(actix_http::ConnectionType::Close);
    // Whole: such responses are short (a status, an error, a page at most).
    let body = actix_http::body::to_bytes(body)
        .await
        .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
    let size = BodySize::Sized(body.len() as u64);
    framed.send(h1::Message::Item((head, size))).await?;
    if !body.is_empty() {
        framed.send(h1::Message::Chunk(Some(body))).await?;
    }
    framed.send(h1::Message::Chunk(None)).await?;
    Ok(())
}

/// `GET <mount>/websocket` through actix-web: a request that is no upgrade gets its 403 or
/// 400; an upgrade (in an actix-web `App` of one's own) is served through actix-web's payload
/// and response body.
pub async fn handle(req: HttpRequest, body: web::Payload, mount: web::Data<Mount>) -> HttpResponse {
    let accepted = match accept(&mount, req.head()).await {
        Ok(a) => a,
        Err(res) => return HttpResponse::from(res),
    };
    let endpoint = mount.endpoint.clone();
    let conn = endpoint.register(accepted.serializer);
    conn.describe(Transport::WebSocket, accepted.connected.id.clone());
    let res = HttpResponse::from(accepted.response)
        .set_body(BodyStream::new(Writer(conn.clone())).boxed());
    let state = SocketState::new(
        endpoint.clone(),
        mount.socket.clone(),
        conn,
        accepted.connected,
    );
    let reader = reader(&endpoint, &[]);
    crate::task::spawn(ws_io::run(
        state,
        Payload {
            body: body.into_inner(),
            reader,
        },
        endpoint,
    ));
    res
}

/// The decoded auth token, if offered, and whether the client offered the `phoenix` subprotocol.
fn subprotocols(req: &RequestHead) -> (Option<String>, bool) {
    let mut token = None;
    let mut phoenix = false;
    for offer in req
        .headers
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

/// A WebSocket read through actix-web's request payload (its frames go out as the body).
struct Payload {
    body: actix_http::Payload,
    reader: Reader,
}

impl WsIo for Payload {
    const WRITES: bool = false;

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>> {
        loop {
            if let Some(msg) = self.reader.parse() {
                return Poll::Ready(Some(msg));
            }
            match futures_util::ready!(Pin::new(&mut self.body).poll_next(cx)) {
                Some(Ok(bytes)) => self.reader.extend(&bytes),
                Some(Err(e)) => {
                    return Poll::Ready(Some(Err(ReadError::Protocol(ProtocolError::Io(
                        io::Error::other(e),
                    )))))
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn poll_send(&mut self, _: &mut Context<'_>, _: &Connection) -> Poll<()> {
        Poll::Pending
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
