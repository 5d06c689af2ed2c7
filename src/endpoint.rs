//! The socket definitions mounted on an endpoint: what a Phoenix socket module is, a connect
//! callback (what it sees, how it accepts or refuses) and a channel [`Router`].
//!
//! The [`Endpoint`] handle itself is defined below the channels that hold it, in
//! [`crate::hub`], and re-exported here.

use crate::channel::{Assigns, Router};
pub use crate::hub::Endpoint;
use futures_util::future::LocalBoxFuture;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The query parameters of a connect, in order. Where a name repeats, the last value wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(query: &str) -> Params {
        Params(
            serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_else(|_| {
                // Undecodable pairs are skipped rather than failing the whole connect.
                query
                    .split('&')
                    .filter_map(|kv| serde_urlencoded::from_str::<Vec<(String, String)>>(kv).ok())
                    .flatten()
                    .collect()
            }),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a connect callback sees.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    /// The query string's parameters, `vsn` included.
    pub params: Params,
    /// The token phoenix.js sends with its `authToken` option (WebSocket subprotocol or the
    /// LongPoll `X-Phoenix-AuthToken` header), decoded.
    pub auth_token: Option<String>,
    pub peer_addr: Option<SocketAddr>,
    pub origin: Option<String>,
    pub user_agent: Option<String>,
    /// The request's `x-*` headers (names lowercase), as Phoenix's `connect_info: [:x_headers]`
    /// gives them: proxies and some clients (Supabase's `x-api-key`) put credentials there.
    pub x_headers: Vec<(String, String)>,
}

impl ConnectInfo {
    /// The value of an `x-*` header (lowercase name).
    pub fn x_header(&self, name: &str) -> Option<&str> {
        self.x_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An accepted connect: the socket's assigns and, optionally, its id. Broadcasting
/// `disconnect` to the id (see [`Endpoint::disconnect`]) closes every socket that has it.
#[derive(Default)]
pub struct Connected {
    pub assigns: Assigns,
    pub id: Option<String>,
}

/// A refused connect. The reason is logged; the client gets the status and, on WebSocket,
/// the body if one is set.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: String,
    /// What the client is told: 403 (HTTP 403 on WebSocket, `{"status":403}` on LongPoll) when
    /// it may not connect; 500 when the server could not decide (a database error, say).
    pub status: u16,
    /// A JSON body for the refused WebSocket upgrade (Supabase's clients read
    /// `{"error": …}`); none by default, as Phoenix sends none.
    pub body: Option<serde_json::Value>,
}

impl Refused {
    /// The client may not connect (403).
    pub fn new(reason: impl Into<String>) -> Refused {
        Refused {
            reason: reason.into(),
            status: 403,
            body: None,
        }
    }

    /// Refused with another HTTP status (401, 429, ...) and a JSON body that says why.
    pub fn with_body(status: u16, reason: impl Into<String>, body: serde_json::Value) -> Refused {
        Refused {
            reason: reason.into(),
            status,
            body: Some(body),
        }
    }

    /// The server failed to decide (500); logged as an error.
    pub fn internal(reason: impl Into<String>) -> Refused {
        Refused {
            reason: reason.into(),
            status: 500,
            body: None,
        }
    }
}

type ConnectFn =
    Arc<dyn Fn(ConnectInfo) -> LocalBoxFuture<'static, Result<Connected, Refused>> + Send + Sync>;

/// A socket definition, what a Phoenix socket module is: a connect callback and a router.
#[derive(Clone)]
pub struct Socket {
    pub(crate) connect: ConnectFn,
    pub(crate) router: Router,
    pub(crate) websocket: bool,
    pub(crate) longpoll: bool,
}

impl Socket {
    /// A socket that accepts every connect, anonymously, and routes by `router`.
    pub fn new(router: Router) -> Socket {
        Socket {
            connect: Arc::new(|_| Box::pin(async { Ok(Connected::default()) })),
            router,
            websocket: true,
            longpoll: true,
        }
    }

    /// Turns transports on or off (both are on by default). A transport that is off has no
    /// route: its path answers 404.
    pub fn transports(mut self, websocket: bool, longpoll: bool) -> Socket {
        self.websocket = websocket;
        self.longpoll = longpoll;
        self
    }

    /// Sets the connect callback.
    pub fn on_connect<F, Fut>(mut self, f: F) -> Socket
    where
        F: Fn(ConnectInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Connected, Refused>> + 'static,
    {
        self.connect = Arc::new(move |info| Box::pin(f(info)));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_last_value_wins_and_decode() {
        let p = Params::parse("token=t1&vsn=2.0.0&token=abc%20d&x=a+b&");
        assert_eq!(p.get("token"), Some("abc d"));
        assert_eq!(p.get("vsn"), Some("2.0.0"));
        assert_eq!(p.get("x"), Some("a b"));
        assert_eq!(p.get("nope"), None);
        assert_eq!(Params::parse("").0, vec![]);
    }
}
