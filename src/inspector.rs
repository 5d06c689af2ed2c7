//! `/admin`, the live inspector: counts, topics with their subscribers and presence, the frames
//! of one chosen topic, and a button that disconnects a socket id (its client reconnects by
//! itself). For admins only.
//!
//! Sign-in takes an admin's token once (a form POST carrying the sign-in form's own CSRF token,
//! double-submitted as a cookie) and answers with a session cookie: random, HttpOnly,
//! SameSite=Strict, `Secure` under TLS, scoped to `/admin`. The session keeps the token and
//! verifies it again on every request, so revoking the token or its expiry ends the session.
//! Every state-changing request is a POST that must carry the session's CSRF token in
//! `X-CSRF-Token` (or the form) and, when the browser sends one, an `Origin` of this host. Anonymous page requests are
//! redirected to the sign-in form, anonymous API calls get 401, signed-in non-admins 403.
//!
//! The page also charts this process's gauges over the last 15 minutes ([`gauges`]).

pub mod gauges;

use crate::accounts::{self, SignInError};
use crate::apps::AppState;
use crate::endpoint::Endpoint;
use crate::pubsub::{Dispatch, Subscriber};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rand::RngCore;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const COOKIE: &str = "fawkes_admin";
/// The sign-in form's CSRF token, double-submitted: in this cookie and in the form.
const SIGN_IN_COOKIE: &str = "fawkes_admin_sign_in";
/// How long a sign-in form stays usable.
const SIGN_IN_TTL: Duration = Duration::from_secs(3600);
/// How long a session lasts after sign-in, at most: the token's own expiry or revocation ends it
/// sooner.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 1000;
/// Frames of the watched topic kept for the page to fetch.
const TAP_FRAMES: usize = 200;
/// Largest frame payload shown, in bytes of JSON; longer ones are cut.
const TAP_MAX_PAYLOAD: usize = 4096;

const PAGE: &str = include_str!("../assets/inspector/inspector.html");
const SIGN_IN: &str = include_str!("../assets/inspector/sign_in.html");
const SCRIPT: &str = include_str!("../assets/inspector/inspector.js");

struct Session {
    /// What the admin signed in with, verified again on every request.
    token: String,
    csrf: String,
    expires: Instant,
}

/// The inspector's state: sessions, the one topic being watched, and the sampled gauges.
pub struct Inspector {
    endpoint: Endpoint,
    gauges: Arc<gauges::Gauges>,
    /// Whether the server speaks TLS (the cookie is then `Secure`).
    secure: bool,
    sessions: Mutex<HashMap<String, Session>>,
    tap: Mutex<Option<(String, u64, Arc<Tap>)>>,
}

impl Inspector {
    /// The inspector of `endpoint`; starts sampling its gauges every `sample_every` on the
    /// current actix runtime.
    pub fn new(endpoint: Endpoint, secure: bool, sample_every: Duration) -> Inspector {
        Inspector {
            gauges: gauges::Gauges::start(endpoint.clone(), sample_every),
            endpoint,
            secure,
            sessions: Mutex::new(HashMap::new()),
            tap: Mutex::new(None),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's (token, CSRF token), if the cookie names a live one.
    fn session(&self, req: &HttpRequest) -> Option<(String, String)> {
        let id = req.cookie(COOKIE)?.value().to_owned();
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // A hash map lookup: its timing tells nothing useful about an unguessable 256-bit id
        // (the CSRF token, compared to what a client sends, is compared in constant time).
        let s = sessions.get(&id)?;
        Some((s.token.clone(), s.csrf.clone()))
    }

    fn create_session(&self, token: String) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut sessions = self.sessions();
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                expires: Instant::now() + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    fn cookie(&self, value: String, max_age: Duration) -> Cookie<'static> {
        self.cookie_named(COOKIE, value, max_age)
    }

    fn cookie_named(
        &self,
        name: &'static str,
        value: String,
        max_age: Duration,
    ) -> Cookie<'static> {
        Cookie::build(name, value)
            .path("/admin")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure)
            .max_age(actix_web::cookie::time::Duration::seconds(
                max_age.as_secs() as i64,
            ))
            .finish()
    }

    /// Watches `topic` (replacing any other watched topic); its frames after `after`.
    fn frames(&self, topic: &str, after: u64) -> Value {
        let mut tap = self.tap.lock().unwrap_or_else(|e| e.into_inner());
        let ps = self.endpoint.pubsub();
        if tap.as_ref().map(|(t, _, _)| t.as_str()) != Some(topic) {
            if let Some((old, id, _)) = tap.take() {
                ps.unsubscribe(&old, id);
            }
            let id = ps.next_id();
            let t = Arc::new(Tap::default());
            ps.subscribe(topic, id, t.clone());
            *tap = Some((topic.to_owned(), id, t));
        }
        let (_, _, t) = tap.as_ref().expect("set above");
        let frames = t.frames.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<&Value> = frames
            .iter()
            .filter(|(n, _)| *n > after)
            .map(|(_, f)| f)
            .collect();
        let last = frames.back().map_or(after, |(n, _)| *n);
        json!({"topic": topic, "frames": list, "last": last})
    }
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records the broadcasts of the watched topic.
#[derive(Default)]
struct Tap {
    frames: Mutex<VecDeque<(u64, Value)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Subscriber for Tap {
    fn deliver(&self, dispatch: &Dispatch<'_>) {
        let b = dispatch.broadcast;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let payload = match &b.payload {
            crate::Payload::Json(v) => {
                let text = v.to_string();
                if text.len() > TAP_MAX_PAYLOAD {
                    let mut cut = TAP_MAX_PAYLOAD;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    Value::String(format!("{}… ({} bytes)", &text[..cut], text.len()))
                } else {
                    v.clone()
                }
            }
            crate::Payload::Binary(bytes) => {
                Value::String(format!("<{} binary bytes>", bytes.len()))
            }
            crate::Payload::UserBroadcast(u) => Value::String(format!(
                "<user broadcast {:?}, {} {} bytes>",
                u.event,
                u.data.len(),
                if u.json { "JSON" } else { "binary" }
            )),
        };
        let frame = json!({
            "n": n,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "event": b.event,
            "payload": payload,
        });
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.len() >= TAP_FRAMES {
            frames.pop_front();
        }
        frames.push_back((n, frame));
    }
}

/// Who is asking: nobody, someone who is not an admin, or an admin with the session's CSRF
/// token.
enum Caller {
    Anonymous,
    NotAdmin,
    Admin { csrf: String },
}

/// The caller of a request, from its session: its token is verified and its user looked up each
/// time, so a revoked or expired token ends the session, and an admin who loses the flag loses
/// the inspector at once.
async fn caller(
    req: &HttpRequest,
    ins: &Inspector,
    state: &AppState,
) -> Result<Caller, HttpResponse> {
    let Some((token, csrf)) = ins.session(req) else {
        return Ok(Caller::Anonymous);
    };
    match accounts::sign_in(&state.auth, &state.store, token).await {
        Ok(s) if s.user.admin => Ok(Caller::Admin { csrf }),
        Ok(_) => Ok(Caller::NotAdmin),
        Err(SignInError::Refused(_)) => {
            if let Some(c) = req.cookie(COOKIE) {
                ins.sessions().remove(c.value());
            }
            Ok(Caller::Anonymous)
        }
        Err(SignInError::Store(e)) => {
            log::error!("inspector: {e}");
            Err(HttpResponse::InternalServerError().finish())
        }
    }
}

/// The page: the inspector, or a redirect to sign-in, or 403.
async fn page(
    req: HttpRequest,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    match caller(&req, &ins, &state).await {
        Err(res) => res,
        Ok(Caller::Anonymous) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/admin/sign-in"))
            .finish(),
        Ok(Caller::NotAdmin) => forbidden(),
        Ok(Caller::Admin { csrf }) => html(PAGE.replace("{{csrf}}", &csrf)),
    }
}

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

fn forbidden() -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type("text/plain; charset=utf-8")
        .body("403: the inspector is for admins only\n")
}

async fn sign_in_page(ins: web::Data<Inspector>) -> HttpResponse {
    sign_in_form(&ins, "", actix_web::http::StatusCode::OK)
}

/// The sign-in form with a fresh CSRF token, also set as a cookie: a form posted from another
/// site (login CSRF) cannot know it.
fn sign_in_form(ins: &Inspector, error: &str, status: actix_web::http::StatusCode) -> HttpResponse {
    let csrf = random_token();
    let mut res = html(
        SIGN_IN
            .replace("{{error}}", error)
            .replace("{{csrf}}", &csrf),
    );
    *res.status_mut() = status;
    let cookie = ins.cookie_named(SIGN_IN_COOKIE, csrf, SIGN_IN_TTL);
    if let Err(e) = res.add_cookie(&cookie) {
        log::error!("inspector: {e}");
    }
    res
}

/// Whether a state-changing request comes from this site: its `Origin` (when the browser sends
/// one, as browsers do on POST) names this request's host.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        // Non-browser clients send none; the CSRF token still has to match.
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = req.connection_info().host().to_owned();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host))
}

#[derive(serde::Deserialize)]
struct SignInForm {
    token: String,
    /// The form's CSRF token; must match the sign-in cookie.
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/session` (form `token=`): an admin's token starts a session.
async fn create_session(
    req: HttpRequest,
    form: web::Form<SignInForm>,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let form = form.into_inner();
    let expected = req.cookie(SIGN_IN_COOKIE).map(|c| c.value().to_owned());
    let form_csrf_ok = expected
        .is_some_and(|e| !e.is_empty() && bool::from(e.as_bytes().ct_eq(form.csrf.as_bytes())));
    if !same_origin(&req) || !form_csrf_ok {
        return sign_in_form(
            &ins,
            "The sign-in form expired or came from another site: sign in again.",
            actix_web::http::StatusCode::FORBIDDEN,
        );
    }
    let token = form.token.trim().to_owned();
    if token.is_empty() {
        return sign_in_failed(&ins, "Give an admin's API token.");
    }
    match accounts::sign_in(&state.auth, &state.store, token.clone()).await {
        Ok(s) if s.user.admin => {
            let (id, _) = ins.create_session(token);
            log::info!("inspector: {} signed in", s.user.name);
            HttpResponse::SeeOther()
                .cookie(ins.cookie(id, SESSION_TTL))
                .insert_header((header::LOCATION, "/admin"))
                .finish()
        }
        Ok(s) => {
            log::info!("inspector: {} is not an admin", s.user.name);
            sign_in_form(
                &ins,
                "That user is not an admin.",
                actix_web::http::StatusCode::FORBIDDEN,
            )
        }
        Err(SignInError::Refused(_)) => sign_in_failed(&ins, "That token was not accepted."),
        Err(SignInError::Store(e)) => {
            log::error!("inspector sign-in: {e}");
            HttpResponse::InternalServerError().finish()
        }
    }
}

fn sign_in_failed(ins: &Inspector, why: &str) -> HttpResponse {
    sign_in_form(ins, why, actix_web::http::StatusCode::UNAUTHORIZED)
}

/// Checks an API call: 401 anonymous, 403 not an admin; for a POST, 403 without the session's
/// CSRF token or from another origin.
async fn admin_api(
    req: &HttpRequest,
    ins: &Inspector,
    state: &AppState,
    post_csrf: Option<&str>,
) -> Result<(), HttpResponse> {
    match caller(req, ins, state).await? {
        Caller::Anonymous => Err(HttpResponse::Unauthorized()
            .json(json!({"errors": {"detail": "sign in at /admin/sign-in"}}))),
        Caller::NotAdmin => {
            Err(HttpResponse::Forbidden().json(json!({"errors": {"detail": "admins only"}})))
        }
        Caller::Admin { csrf } => match post_csrf {
            None => Ok(()),
            Some(sent)
                if bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) && same_origin(req) =>
            {
                Ok(())
            }
            Some(_) => Err(HttpResponse::Forbidden()
                .json(json!({"errors": {"detail": "bad CSRF token or origin"}}))),
        },
    }
}

fn csrf_header(req: &HttpRequest) -> &str {
    req.headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `POST /admin/sign-out`.
async fn sign_out(
    req: HttpRequest,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(res) = admin_api(&req, &ins, &state, Some(csrf_header(&req))).await {
        return res;
    }
    if let Some(c) = req.cookie(COOKIE) {
        ins.sessions().remove(c.value());
    }
    HttpResponse::NoContent()
        .cookie(ins.cookie(String::new(), Duration::ZERO))
        .finish()
}

/// `GET /admin/api/stats`: counts, connections, and topics with subscribers and presence.
async fn stats(
    req: HttpRequest,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(res) = admin_api(&req, &ins, &state, None).await {
        return res;
    }
    let ep = &ins.endpoint;
    let c = ep.pubsub().counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    // The inspector's own watcher is not a client: client_topics leaves it out.
    let topics: Vec<Value> = (ep.pubsub().client_topics().into_iter())
        .map(|(topic, subscribers)| {
            json!({"topic": topic, "subscribers": subscribers, "presence": ep.presence().keys(&topic)})
        })
        .collect();
    let connections: Vec<Value> = ep
        .connections()
        .into_iter()
        .map(|c| json!({"id": c.id, "transport": c.transport, "serializer": c.serializer, "socket_id": c.socket_id}))
        .collect();
    let e = &crate::metrics::ENGINE;
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "connections": connections,
            "topics": topics,
            "broadcasts": load(&c.broadcasts),
            "deliveries": load(&c.deliveries),
            "queue_overflows": load(&e.queue_overflows) + load(&e.mailbox_overflows),
            "inbox_overflows": load(&c.inbox_overflows),
            "backends": state.proxy.status(),
            "change_capture": change_capture(&state),
            "backend_requests": crate::metrics::BACKEND
                .requests()
                .into_iter()
                .map(|(k, n)| (k, json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        }))
}

/// Change capture's slot (with `--cdc-tables`; `null` without): this node's view.
fn change_capture(state: &crate::apps::AppState) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let on = state
        .realtime
        .as_ref()
        .is_some_and(|r| !r.cdc_tables.is_empty());
    if !on {
        return Value::Null;
    }
    let c = &crate::metrics::CDC;
    json!({
        "reading": c.reading.load(Relaxed) == 1,
        "slot_lag_bytes": c.lag_bytes.load(Relaxed),
        "changes": c.changes.load(Relaxed),
        "slot_drops": c.slot_drops.load(Relaxed),
    })
}

#[derive(serde::Deserialize)]
struct GaugesQuery {
    /// Only samples taken after this (ms since the epoch): what the page has not got yet.
    #[serde(default)]
    after: u64,
}

/// `GET /admin/api/gauges?after=MS`: the sampled gauges, oldest first, over the last 15 minutes
/// (those after `after`), and the period they are sampled at.
async fn gauges(
    req: HttpRequest,
    q: web::Query<GaugesQuery>,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(res) = admin_api(&req, &ins, &state, None).await {
        return res;
    }
    let samples = ins.gauges.ring().after(q.after);
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "period_ms": ins.gauges.period().as_millis() as u64,
            "window_ms": gauges::WINDOW.as_millis() as u64,
            "samples": samples,
        }))
}

#[derive(serde::Deserialize)]
struct FramesQuery {
    topic: String,
    #[serde(default)]
    after: u64,
}

/// `GET /admin/api/frames?topic=T&after=N`: broadcasts on T since N (watching T from now).
async fn frames(
    req: HttpRequest,
    q: web::Query<FramesQuery>,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(res) = admin_api(&req, &ins, &state, None).await {
        return res;
    }
    let max = ins.endpoint.config().limits.max_topic_bytes;
    if q.topic.is_empty() || q.topic.len() > max {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"errors": {"topic": [format!("must be 1-{max} bytes")]}}));
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ins.frames(&q.topic, q.after))
}

/// `POST /admin/api/disconnect` `{"socket_id": "..."}`: closes that socket id's connections
/// (1001; clients reconnect).
async fn disconnect(
    req: HttpRequest,
    body: web::Bytes,
    ins: web::Data<Inspector>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(res) = admin_api(&req, &ins, &state, Some(csrf_header(&req))).await {
        return res;
    }
    let id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("socket_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some(id) = id.filter(|s| !s.is_empty() && s.len() <= 1024) else {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"errors": {"socket_id": ["must be a socket id"]}}));
    };
    let closing = ins
        .endpoint
        .connections()
        .iter()
        .filter(|c| c.socket_id.as_deref() == Some(id.as_str()))
        .count();
    log::info!("inspector: disconnecting socket id {id} ({closing} connection(s))");
    ins.endpoint.disconnect(&id);
    HttpResponse::Ok().json(json!({"socket_id": id, "connections": closing}))
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(SCRIPT)
}

/// Registers `/admin` and its API. Needs the apps' state registered (for sign-in).
pub fn routes(cfg: &mut web::ServiceConfig, inspector: web::Data<Inspector>) {
    cfg.app_data(inspector)
        .service(web::resource("/admin").route(web::get().to(page)))
        .service(web::resource("/admin/sign-in").route(web::get().to(sign_in_page)))
        .service(web::resource("/admin/session").route(web::post().to(create_session)))
        .service(web::resource("/admin/sign-out").route(web::post().to(sign_out)))
        .service(web::resource("/admin/inspector.js").route(web::get().to(script)))
        .service(web::resource("/admin/api/stats").route(web::get().to(stats)))
        .service(web::resource("/admin/api/gauges").route(web::get().to(gauges)))
        .service(web::resource("/admin/api/frames").route(web::get().to(frames)))
        .service(web::resource("/admin/api/disconnect").route(web::post().to(disconnect)));
}
