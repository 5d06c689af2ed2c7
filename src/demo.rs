//! The demo pages `fawkes serve` shows at `/`: the community feed, a chat room and a café order
//! board, each a small page on the official phoenix.js talking to the apps' own REST API and
//! topics. Everything is built into the binary (nothing is fetched from the internet).
//!
//! With `--demo`, `POST /demo/users` creates a community member and answers its token, so a
//! visitor can try the pages with one click; without it, pages ask for an API token.
//!
//! With proxied channels declared (`apps::proxy`), the index links to `/demo/proxy`, a page
//! speaking the chat of `examples/proxy_chat` on them; without, neither link nor page.

use crate::accounts::{self, NewUser};
use crate::apps::api::{object_body, ApiError, ApiResult};
use crate::apps::AppState;
use actix_web::body::MessageBody;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

/// phoenix.js 1.8.16, `priv/static/phoenix.mjs` of the npm package `phoenix@1.8.16` (the
/// version `protocol_tests/js/package.json` pins), unmodified.
const PHOENIX_JS: &str = include_str!("../assets/vendor/phoenix-1.8.16.mjs");

/// Static files: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/demo/feed",
        "text/html; charset=utf-8",
        include_str!("../assets/demo/feed.html"),
    ),
    (
        "/demo/chat",
        "text/html; charset=utf-8",
        include_str!("../assets/demo/chat.html"),
    ),
    (
        "/demo/orders",
        "text/html; charset=utf-8",
        include_str!("../assets/demo/orders.html"),
    ),
    (
        "/assets/phoenix.mjs",
        "text/javascript; charset=utf-8",
        PHOENIX_JS,
    ),
    (
        "/assets/demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/demo/demo.js"),
    ),
    (
        "/assets/feed.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/demo/feed.js"),
    ),
    (
        "/assets/chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/demo/chat.js"),
    ),
    (
        "/assets/proxy.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/demo/proxy.js"),
    ),
    (
        "/assets/orders.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/demo/orders.js"),
    ),
    (
        "/assets/demo.css",
        "text/css; charset=utf-8",
        include_str!("../assets/demo/demo.css"),
    ),
];

const INDEX: &str = include_str!("../assets/demo/index.html");
const PROXY_PAGE: &str = include_str!("../assets/demo/proxy.html");

/// The demo's settings.
#[derive(Debug)]
pub struct DemoConfig {
    /// Whether `POST /demo/users` creates users.
    pub open_signup: bool,
    /// Most users `POST /demo/users` creates over the process's life; then 429.
    pub max_users: usize,
    /// The topic patterns of the declared (proxied) channels, in order.
    pub proxied: Vec<String>,
    created: AtomicUsize,
}

impl DemoConfig {
    pub fn new(open_signup: bool, max_users: usize) -> DemoConfig {
        DemoConfig {
            open_signup,
            max_users,
            proxied: Vec::new(),
            created: AtomicUsize::new(0),
        }
    }

    /// With these declared channels' patterns, the index links to the proxied channels' page.
    pub fn with_proxied(mut self, patterns: Vec<String>) -> DemoConfig {
        self.proxied = patterns;
        self
    }
}

/// Text for HTML, escaped: patterns come from the configuration, not from visitors, but a `<`
/// in one must still not make markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The declared patterns as a list of `<code>` items.
fn patterns(demo: &DemoConfig) -> String {
    demo.proxied
        .iter()
        .map(|p| format!("<code>{}</code>", escape(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /`: the index, with a card for the proxied channels' page when some are declared.
async fn index(demo: web::Data<DemoConfig>) -> HttpResponse {
    let card = if demo.proxied.is_empty() {
        String::new()
    } else {
        format!(
            "    <li class=\"card\"><a href=\"/demo/proxy\">Proxied channels</a>: {}, handled by \
             the app's own backend (<code>examples/proxy_chat</code> is one in Python).</li>\n",
            patterns(&demo)
        )
    };
    page(INDEX.replace("<!--proxied-->", &card))
}

/// `GET /demo/proxy`: the proxied channels' page; 404 when none are declared.
async fn proxy_page(demo: web::Data<DemoConfig>) -> HttpResponse {
    let Some(first) = demo.proxied.first() else {
        return HttpResponse::NotFound().finish();
    };
    // A topic the first pattern serves, to start from: `room:*` gives `room:lobby`.
    let topic = match first.strip_suffix('*') {
        Some(prefix) => format!("{prefix}lobby"),
        None => first.clone(),
    };
    page(
        PROXY_PAGE
            .replace("{{patterns}}", &patterns(&demo))
            .replace("{{topic}}", &escape(&topic)),
    )
}

/// A page made at request time, with the assets' headers.
fn page(body: String) -> HttpResponse {
    asset("text/html; charset=utf-8", body)
}

/// A static page or script, with a content security policy that allows only this origin.
fn asset(content_type: &'static str, body: impl MessageBody + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// `GET /demo/config`: whether one-click demo users are on.
async fn config(demo: web::Data<DemoConfig>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "signup": demo.open_signup }))
}

/// `POST /demo/users` `{"name": "..."}`: a community member and its first token (201), only
/// with `--demo`; 404 without it, 422 for a bad or taken name, 429 past the limit.
async fn create_user(
    state: web::Data<AppState>,
    demo: web::Data<DemoConfig>,
    body: web::Bytes,
) -> ApiResult {
    if !demo.open_signup {
        return Err(ApiError::NotFound);
    }
    let name = object_body(&body)?
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid("name", "can't be blank"))?;
    // Counted before the write, so racing requests cannot pass the bound together.
    if demo.created.fetch_add(1, Ordering::Relaxed) >= demo.max_users {
        demo.created.fetch_sub(1, Ordering::Relaxed);
        return Ok(HttpResponse::TooManyRequests().json(json!({
            "errors": {"detail": format!("this server creates at most {} demo users", demo.max_users)}
        })));
    }
    let created = state
        .store
        .write(move |c| {
            accounts::create(
                c,
                &NewUser {
                    name,
                    community_member: true,
                    ..NewUser::default()
                },
            )
        })
        .await;
    match created {
        Ok((user, token)) => {
            log::info!("demo user {} created (id {})", user.name, user.id);
            Ok(HttpResponse::Created().json(json!({ "user": user.json(), "token": token })))
        }
        Err(e) => {
            demo.created.fetch_sub(1, Ordering::Relaxed);
            Err(e.into())
        }
    }
}

/// Registers the pages, their assets and `/demo/*`.
pub fn routes(cfg: &mut web::ServiceConfig, demo: web::Data<DemoConfig>) {
    for &(path, content_type, body) in ASSETS {
        cfg.service(
            web::resource(path)
                .route(web::get().to(move || async move { asset(content_type, body) })),
        );
    }
    cfg.service(
        web::resource("/")
            .app_data(demo.clone())
            .route(web::get().to(index)),
    )
    .service(
        web::resource("/demo/proxy")
            .app_data(demo.clone())
            .route(web::get().to(proxy_page)),
    )
    .service(
        web::resource("/demo/config")
            .app_data(demo.clone())
            .route(web::get().to(config)),
    )
    .service(
        web::resource("/demo/users")
            .app_data(demo)
            .route(web::post().to(create_user)),
    );
}
