//! The floor: the smallest actix-web + actix-ws server that speaks enough Phoenix V2 for the
//! benchmark (`phx_join` on any topic, `heartbeat`, `ping`, `new_post`). Whatever it costs per
//! connection or per delivery is what actix-web + actix-ws cost; a real server can only add to it.
//!
//! `cargo run --release -p fawkes-bench --bin minimal-server -- --port 4001`

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{Message, Session};
use bytestring::ByteString;
use clap::Parser;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Parser)]
#[command(about = "Minimal actix-ws Phoenix V2 server: the floor the bench compares against")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 4001)]
    port: u16,
    /// Worker threads [default: one per core, as actix-web and Fawkes do].
    #[arg(long)]
    workers: Option<usize>,
    /// Set TCP_NODELAY on accepted sockets. Off by default, as in actix-web (and Fawkes): then
    /// Nagle's algorithm can hold a small frame written right after another for up to the
    /// client's delayed-ACK time (40 ms on Linux).
    #[arg(long)]
    nodelay: bool,
}

/// Joined sessions per topic, shared by all workers.
#[derive(Default)]
struct Registry {
    topics: Mutex<HashMap<String, Vec<(u64, Session)>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn join(&self, topic: &str, id: u64, session: &Session) {
        let mut topics = self.topics.lock().unwrap();
        let members = topics.entry(topic.to_string()).or_default();
        // A second join of the same topic replaces the first, as in Phoenix.
        members.retain(|(m, _)| *m != id);
        members.push((id, session.clone()));
    }

    fn leave(&self, topic: &str, id: u64) {
        if let Some(members) = self.topics.lock().unwrap().get_mut(topic) {
            members.retain(|(m, _)| *m != id);
        }
    }

    /// Sends one encoded frame to every member; the text is shared, not copied, per member.
    async fn broadcast(&self, topic: &str, frame: ByteString) {
        // Copy the member list out: the lock must not be held across awaits.
        let members = match self.topics.lock().unwrap().get(topic) {
            Some(m) => m.clone(),
            None => return,
        };
        for (_, mut session) in members {
            // A closed member is removed by its own task when it ends.
            let _ = session.text(frame.clone()).await;
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    match fawkes_bench::proc::raise_nofile_limit() {
        Ok((old, new)) => eprintln!("open-files limit raised from {old} to {new}"),
        Err(e) => eprintln!("could not raise the open-files limit: {e}"),
    }
    actix_web::rt::System::new().block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let registry = web::Data::new(Registry::default());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .route("/socket/websocket", web::get().to(websocket))
    });
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    if args.nodelay {
        server = server.tcp_nodelay(true);
    }
    let server = server.bind((args.host.as_str(), args.port))?;
    println!(
        "minimal server listening on ws://{}:{}/socket",
        args.host, args.port
    );
    server.run().await
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    registry: web::Data<Registry>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
    actix_web::rt::spawn(async move {
        let mut joined: Vec<String> = Vec::new();
        while let Some(Ok(msg)) = stream.recv().await {
            let ok = match msg {
                Message::Text(text) => {
                    handle(&text, id, &mut session, &registry, &mut joined).await
                }
                Message::Ping(bytes) => session.pong(&bytes).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !ok {
                break;
            }
        }
        for topic in &joined {
            registry.leave(topic, id);
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

/// Handles one client message; `false` ends the connection (malformed frame, or closed).
async fn handle(
    text: &str,
    id: u64,
    session: &mut Session,
    registry: &Registry,
    joined: &mut Vec<String>,
) -> bool {
    let Ok(Value::Array(mut msg)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    if msg.len() != 5 {
        return false;
    }
    let payload = msg.pop().unwrap_or_default();
    let (Some(topic), Some(event)) = (msg[2].as_str(), msg[3].as_str()) else {
        return false;
    };
    let response = match event {
        "phx_join" => {
            registry.join(topic, id, session);
            if !joined.iter().any(|t| t == topic) {
                joined.push(topic.to_string());
            }
            json!({})
        }
        "phx_leave" => {
            registry.leave(topic, id);
            joined.retain(|t| t != topic);
            json!({})
        }
        "new_post" => {
            let frame = json!([null, null, topic, "new_post", payload]).to_string();
            registry.broadcast(topic, frame.into()).await;
            json!({})
        }
        "ping" => payload,
        // heartbeat, and anything else: ok, empty.
        _ => json!({}),
    };
    let reply = json!([msg[0], msg[1], topic, "phx_reply", {"response": response, "status": "ok"}]);
    session.text(reply.to_string()).await.is_ok()
}
