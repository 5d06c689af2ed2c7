//! Transports move frames between the network and a socket. What they share lives here: the
//! connect steps (origin check, `vsn`, the connect callback), in the order Phoenix runs them.

pub mod longpoll;
pub mod websocket;
pub(crate) mod ws_io;
pub mod ws_read;

/// Whole server frames are wire encoding, below the engine: [`crate::protocol::frame`]. Kept at
/// its old path.
pub use crate::protocol::frame;

use crate::config::CheckOrigin;
use crate::endpoint::{ConnectInfo, Connected, Endpoint, Params, Socket};
use crate::protocol::Serializer;
use actix_http::RequestHead;

/// A socket definition mounted at a path on an endpoint.
#[derive(Clone)]
pub struct Mount {
    pub endpoint: Endpoint,
    pub socket: Socket,
    pub sessions: std::sync::Arc<longpoll::Sessions>,
}

/// Why a connect was refused, for the log; the client only sees the status.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Origin(String),
    Vsn(String),
    Refused(crate::endpoint::Refused),
}

impl ConnectError {
    /// The connect callback's JSON body for the refusal, if it gave one.
    pub(crate) fn body(&self) -> Option<&serde_json::Value> {
        match self {
            ConnectError::Refused(r) => r.body.as_ref(),
            _ => None,
        }
    }

    /// 403, 500 when the connect callback failed to decide, or the callback's own status.
    pub(crate) fn status(&self) -> u16 {
        match self {
            ConnectError::Refused(r) => r.status,
            _ => 403,
        }
    }

    /// Logs the refusal: an error for a 500, information otherwise.
    pub(crate) fn log(&self, transport: &str, peer: Option<std::net::SocketAddr>) {
        if self.status() >= 500 {
            log::error!("{transport} connect from {peer:?} failed: {self}");
        } else {
            log::info!("{transport} connect from {peer:?} refused: {self}");
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Origin(o) => write!(f, "origin {o:?} not allowed"),
            ConnectError::Vsn(v) => write!(f, "unsupported vsn {v:?}"),
            ConnectError::Refused(r) => write!(f, "refused by connect: {}", r.reason),
        }
    }
}

/// Refuses a request whose `Origin` is not allowed (a request without one is not a browser's).
pub(crate) fn check_origin(mount: &Mount, req: &RequestHead) -> Result<(), ConnectError> {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    if let (CheckOrigin::Allow(allowed), Some(o)) = (&mount.endpoint.config().check_origin, origin)
    {
        if !origin_allowed(allowed, o) {
            return Err(ConnectError::Origin(o.to_owned()));
        }
    }
    Ok(())
}

/// Runs the connect steps for a request. `auth_token` comes from the transport's own carrier.
/// It takes the request's head, which both actix-web and the WebSocket upgrade path have.
pub(crate) async fn connect(
    mount: &Mount,
    req: &RequestHead,
    auth_token: Option<String>,
) -> Result<(Serializer, Connected), ConnectError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let origin = header("origin");
    check_origin(mount, req)?;
    let params = Params::parse(req.uri.query().unwrap_or_default());
    let vsn = params.get("vsn");
    let serializer = Serializer::from_vsn(vsn)
        .ok_or_else(|| ConnectError::Vsn(vsn.unwrap_or_default().to_owned()))?;
    let info = ConnectInfo {
        params,
        auth_token,
        peer_addr: req.peer_addr,
        origin,
        user_agent: header("user-agent"),
        x_headers: req
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
    };
    let connected = (mount.socket.connect)(info)
        .await
        .map_err(ConnectError::Refused)?;
    Ok((serializer, connected))
}

/// Allows `rate` messages per second with a burst of as many; says how long to wait when empty.
pub(crate) struct RateLimit {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl RateLimit {
    pub(crate) fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate: rate as f64,
            tokens: rate as f64,
            at: std::time::Instant::now(),
        }
    }

    pub(crate) fn take(&mut self) -> Option<std::time::Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let now = std::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| std::time::Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// Phoenix's `check_origin` list matching: each entry `scheme://host:port` with missing parts as
/// wildcards, and `*.` as "this domain or any subdomain".
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    let Some(o) = split_url(origin) else {
        return false;
    };
    let Some(o_host) = o.host.filter(|h| !h.is_empty()) else {
        return false;
    };
    allowed.iter().any(|entry| {
        let Some(a) = split_url(entry) else {
            return false;
        };
        let scheme_ok = a.scheme.is_none_or(|s| Some(s) == o.scheme);
        let port_ok = a.port.is_none_or(|p| Some(p) == o.port);
        let host_ok = match a.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(domain) => {
                    o_host.eq_ignore_ascii_case(domain)
                        || o_host
                            .to_ascii_lowercase()
                            .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
                }
                None => o_host.eq_ignore_ascii_case(h),
            },
        };
        scheme_ok && port_ok && host_ok
    })
}

struct UrlParts<'a> {
    scheme: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<u16>,
}

fn split_url(s: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = match s.split_once("//") {
        Some((sch, rest)) => (sch.strip_suffix(':').filter(|x| !x.is_empty()), rest),
        None => (None, s),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (authority, None),
    };
    let default_port = match scheme {
        Some("http") | Some("ws") => Some(80),
        Some("https") | Some("wss") => Some(443),
        _ => None,
    };
    Some(UrlParts {
        scheme,
        host: Some(host).filter(|h| !h.is_empty()),
        port: port.or(default_port),
    })
}

#[cfg(test)]
mod tests {
    use super::{origin_allowed, RateLimit};
    use std::time::Duration;

    #[test]
    fn rate_limit_allows_a_burst_then_asks_to_wait() {
        let mut r = RateLimit::new(3);
        assert!(r.take().is_none());
        assert!(r.take().is_none());
        assert!(r.take().is_none());
        let wait = r.take().unwrap();
        assert!(wait > Duration::from_millis(300) && wait <= Duration::from_millis(340));
        assert!(RateLimit::new(0).take().is_none());
    }

    #[test]
    fn origin_lists_match_as_phoenix_does() {
        let allow = |list: &[&str], o: &str| {
            origin_allowed(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), o)
        };
        assert!(allow(&["https://example.com"], "https://example.com"));
        assert!(!allow(&["https://example.com"], "http://example.com"));
        assert!(!allow(&["https://example.com"], "https://evil.com"));
        assert!(allow(&["//example.com"], "http://example.com"));
        assert!(allow(&["//example.com"], "https://EXAMPLE.com:8443"));
        assert!(allow(&["//*.example.com"], "https://a.b.example.com"));
        assert!(allow(&["//*.example.com"], "https://example.com"));
        assert!(!allow(&["//*.example.com"], "https://badexample.com"));
        assert!(allow(&["http://localhost:4000"], "http://localhost:4000"));
        assert!(!allow(&["http://localhost:4000"], "http://localhost:4001"));
        assert!(allow(&["https://example.com"], "https://example.com:443"));
        assert!(!allow(&["https://example.com"], "null"));
        assert!(!allow(&[], "https://example.com"));
    }
}
