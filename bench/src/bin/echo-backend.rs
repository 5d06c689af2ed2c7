//! A proxied channel's backend for `bench echo` through Fawkes's proxy (`apps::proxy`): it checks
//! each request's signature, as a real backend must, and answers the push with its payload as an
//! `ok` reply. Small on purpose, so that what a proxied push costs is Fawkes's, measured apart
//! from this process's CPU (`bench echo --backend-pid`).
//!
//! `cargo run --release -p fawkes-bench --bin echo-backend -- --port 4100 --secret s3cret`, then
//! `fawkes serve --channel-topic bench:echo --channel-push-url http://127.0.0.1:4100/push
//! --backend-secret s3cret`.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

#[derive(Parser)]
#[command(
    about = "Echo backend for a Fawkes proxied channel: every push answered with its payload"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 4100)]
    port: u16,
    /// The secret Fawkes signs with (`--backend-secret`).
    #[arg(long)]
    secret: String,
    /// Worker threads [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
}

/// Whether `header` is `sha256=<hex of HMAC-SHA256(body, secret)>`, compared in constant time.
fn signed(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(given) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

async fn push(req: HttpRequest, body: web::Bytes, secret: web::Data<Vec<u8>>) -> HttpResponse {
    let header = req
        .headers()
        .get("x-fawkes-signature")
        .and_then(|v| v.to_str().ok());
    if !signed(&secret, &body, header) {
        return HttpResponse::Unauthorized().json(json!({"error": "bad signature"}));
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let payload = request["payload"].take();
    HttpResponse::Ok().json(json!({"reply": {"status": "ok", "response": payload}}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let secret = web::Data::new(args.secret.into_bytes());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(secret.clone())
            .route("/push", web::post().to(push))
    });
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    let server = server.bind((args.host.as_str(), args.port))?;
    println!("echo backend listening on http://{}", server.addrs()[0]);
    server.run().await
}
