//! Declared channels proxied to the app's own HTTP backend: Fawkes keeps the sockets, and
//! each join, push and leave of a declared topic (`[[channels]]` in `fawkes.toml`) is a signed
//! JSON POST to the backend, whose answer decides. So an app's channel logic stays in its own
//! language (Rails, Django, Node, Go...), as Centrifugo's proxy allows.
//!
//! A request is `{topic, event, payload, params, user, socket_id, join_ref, ref, node,
//! assigns}` (`event` is `phx_join` for a join and `phx_leave` for a leave, whose payload is
//! `{"reason": "left" | "closed" | ...}`), signed with `x-fawkes-signature: sha256=<hex of
//! HMAC-SHA256(body, --backend-secret)>`. An answer is an object: `reply` (`{status,
//! response}`), `broadcast`, `push`, `assigns`, `close`, and on a join `track`
//! ([`answer::Answer`]).
//!
//! A socket-level `--connect-url` (`connect-url` in the file) is asked once per socket connect,
//! as Phoenix's `connect/3` runs: a request `{event: "connect", params, user, socket_id, node}`
//! answered by `reply` (`ok` allows, any other status refuses: HTTP 403, as `connect/3`
//! returning `:error`, the reason logged and never sent) and `assigns`, which every channel of
//! the socket then starts from. A failed request (down, slow, garbage) refuses the connect as a
//! connect that could not decide (HTTP 500): the client retries with its backoff.
//!
//! With no URL for an event, a channel keeps Phoenix's defaults where they make sense: with no
//! `join_url` every join is accepted (declaring the topic is the consent, as a Phoenix
//! `join/3` that returns `{:ok, socket}`); with no `push_url` a push is refused with a reason;
//! with no `leave_url` nothing is told.
//!
//! - [`config`]: `[[channels]]`, the URLs, the backend bounds.
//! - [`client`]: signed requests within the bounds, the circuit, the size cap.
//! - [`answer`]: what an answer may say.
//! - [`tls`]: how https backends are trusted.
//! - `channel`: the channel kind itself.

pub mod answer;
mod channel;
pub mod client;
pub mod config;
pub mod tls;

use crate::endpoint::Params;
use crate::Router;
use answer::ConnectAnswer;
use client::{Backend, Failure};
use config::{BackendLimits, ChannelSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a socket's connect tells the backend: set in its assigns at connect.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The connect params (the socket URL's query), as an object of strings.
    pub params: Value,
    /// `{"id", "claims"}` of the signed-in user, or `null`.
    pub user: Value,
    /// What the `connect_url` answer asked to keep (`{}` without one): each channel of the
    /// socket starts from it, as a Phoenix channel's socket starts with the connect's assigns.
    pub assigns: Value,
}

impl Caller {
    /// `user` is who signed in: their id in the app (the subject of a token the app minted,
    /// else Fawkes's own user id) and the token's claims with the user's Fawkes name and id.
    pub fn new(params: &Params, user: Option<(&crate::accounts::User, &Value)>) -> Caller {
        let params = params
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let user = user.map_or(Value::Null, |(u, claims)| {
            let mut claims = claims.clone();
            let id = claims.get("sub").cloned().unwrap_or(json!(u.id));
            if let Some(c) = claims.as_object_mut() {
                c.insert("name".into(), json!(u.name));
                c.insert("fawkes_user_id".into(), json!(u.id));
            }
            json!({"id": id, "claims": claims})
        });
        Caller {
            params: Value::Object(params),
            user,
            assigns: Value::Object(Default::default()),
        }
    }
}

/// Where one kind of event of a declared channel goes.
#[derive(Clone)]
struct Route {
    url: String,
    backend: Arc<Backend>,
}

/// A declared channel, ready to route.
struct Declared {
    pattern: String,
    join: Option<Route>,
    push: Option<Route>,
    leave: Option<Route>,
    timeout: Duration,
    node: Arc<str>,
}

/// How requests are made, whatever the channel.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: BackendLimits,
    /// Signs every request; required once a channel is declared.
    pub secret: Option<String>,
    /// This node's name, sent as `node`.
    pub node: String,
    /// Asked at every socket connect (see the module's doc).
    pub connect_url: Option<String>,
    /// How long the connect request may take, queue wait included.
    pub connect_timeout: Duration,
    /// The CAs https backends are checked against, instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: BackendLimits::default(),
            secret: None,
            node: String::new(),
            connect_url: None,
            connect_timeout: Duration::from_millis(config::DEFAULT_TIMEOUT_MS),
            ca_file: None,
        }
    }
}

/// The socket-level connect check.
struct Connect {
    route: Route,
    timeout: Duration,
    node: Arc<str>,
}

/// The declared channels of a server and its connect check (none by default).
#[derive(Default)]
pub struct Proxy {
    declared: Vec<Arc<Declared>>,
    connect: Option<Connect>,
    backends: Vec<Arc<Backend>>,
}

/// Why a connect was not allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectRefusal {
    /// The backend said no, with this response (logged, never sent).
    Refused(Value),
    /// The backend gave no usable answer.
    Failed(Failure),
}

impl Proxy {
    /// Checks the declarations and sets up one [`Backend`] per origin their URLs name.
    pub fn new(specs: Vec<ChannelSpec>, settings: Settings) -> Result<Proxy, String> {
        if specs.is_empty() && settings.connect_url.is_none() {
            return Ok(Proxy::default());
        }
        let secret = match settings.secret.as_deref() {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => {
                return Err(
                    "declared channels and --connect-url need --backend-secret (or \
                     --backend-secret-file): it signs their requests so the backend can trust them"
                        .into(),
                )
            }
        };
        let https = specs
            .iter()
            .flat_map(|s| s.urls().map(|(_, u)| u))
            .chain(settings.connect_url.as_deref())
            .any(|u| u.starts_with("https://"));
        let tls = tls::client_config(settings.ca_file.as_deref(), https)?;
        let node: Arc<str> = settings.node.into();
        let mut backends: BTreeMap<String, Arc<Backend>> = BTreeMap::new();
        let mut route = |url: &Option<String>| -> Result<Option<Route>, String> {
            let Some(url) = url else { return Ok(None) };
            let origin = config::origin(url)?;
            let backend = backends
                .entry(origin.clone())
                .or_insert_with(|| {
                    Arc::new(Backend::new(
                        origin,
                        settings.limits.clone(),
                        secret.clone(),
                        tls.clone(),
                    ))
                })
                .clone();
            Ok(Some(Route {
                url: url.clone(),
                backend,
            }))
        };
        let connect = match route(&settings.connect_url) {
            Err(e) => return Err(format!("--connect-url {:?}: {e}", settings.connect_url)),
            Ok(r) => r.map(|route| Connect {
                route,
                timeout: settings.connect_timeout,
                node: node.clone(),
            }),
        };
        if settings.connect_timeout.is_zero() && connect.is_some() {
            return Err("--connect-timeout-ms must be above 0".into());
        }
        let mut declared = Vec::new();
        for spec in specs {
            spec.check()?;
            declared.push(Arc::new(Declared {
                join: route(&spec.join_url)?,
                push: route(&spec.push_url)?,
                leave: route(&spec.leave_url)?,
                timeout: spec.timeout(),
                node: node.clone(),
                pattern: spec.topic,
            }));
        }
        Ok(Proxy {
            declared,
            connect,
            backends: backends.into_values().collect(),
        })
    }

    /// Whether sockets need a [`Caller`] in their assigns: a channel is declared or connects
    /// are asked about.
    pub fn is_on(&self) -> bool {
        !self.declared.is_empty() || self.connect.is_some()
    }

    /// Asks `connect_url` whether the socket of `caller` may connect (`Ok` with no request
    /// when there is none); on `Ok`, `caller.assigns` holds what the backend asked to keep.
    /// Every verdict is counted in `fawkes_backend_connects_total`.
    pub async fn connect(
        &self,
        caller: &mut Caller,
        socket_id: Option<&str>,
    ) -> Result<(), ConnectRefusal> {
        let Some(c) = &self.connect else {
            return Ok(());
        };
        let body = json!({
            "event": "connect",
            "params": caller.params,
            "user": caller.user,
            "socket_id": socket_id,
            "node": &*c.node,
        });
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let answer = c
            .route
            .backend
            .post(&c.route.url, body, c.timeout, |bytes| {
                serde_json::from_slice::<ConnectAnswer>(bytes).map_err(|e| e.to_string())
            })
            .await;
        let verdict = match answer {
            Err(f) => Err(ConnectRefusal::Failed(f)),
            Ok(ConnectAnswer { reply: Some(r), .. }) if r.status != "ok" => {
                Err(ConnectRefusal::Refused(r.response))
            }
            Ok(a) => {
                if let Some(assigns) = a.assigns {
                    caller.assigns = assigns;
                }
                Ok(())
            }
        };
        crate::metrics::BACKEND.connected(match &verdict {
            Ok(()) => crate::metrics::ConnectVerdict::Allowed,
            Err(ConnectRefusal::Refused(_)) => crate::metrics::ConnectVerdict::Refused,
            Err(ConnectRefusal::Failed(_)) => crate::metrics::ConnectVerdict::Failed,
        });
        verdict
    }

    /// The topic patterns of the declared channels, in order.
    pub fn patterns(&self) -> Vec<String> {
        self.declared.iter().map(|d| d.pattern.clone()).collect()
    }

    /// The origins requests go to.
    pub fn backends(&self) -> impl Iterator<Item = &str> {
        self.backends.iter().map(|b| b.origin())
    }

    /// Each backend's state now (see [`Backend::status`]), in origin order.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.backends.iter().map(|b| b.status()).collect()
    }

    /// Adds the declared channels to `router`. A pattern that would share a topic with one
    /// already routed (a built-in app's, or another declared one) is refused: which channel
    /// serves a topic must never depend on the order of declarations.
    pub fn mount(&self, mut router: Router) -> Result<Router, String> {
        for d in &self.declared {
            if let Some(taken) = router.overlap(&d.pattern) {
                return Err(format!(
                    "declared channel {:?} overlaps the channel already served at {taken:?}: \
                     topics it names would be served by either; give it a pattern of its own",
                    d.pattern
                ));
            }
            let d2 = d.clone();
            router = router.channel(&d.pattern, move || channel::ProxyChannel::new(d2.clone()));
        }
        Ok(router)
    }
}
