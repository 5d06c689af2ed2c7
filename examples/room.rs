//! The smallest Fawkes app: one channel on `room:*`, served at ws://127.0.0.1:4000/socket.
//! Its `shout`s are recorded (in `room.db`, SQLite), so a client that rejoins with
//! `{"since": <last seq>}` gets the ones it missed. `cargo run --example room`

use fawkes::history::{History, HistoryConfig};
use fawkes::store::Store;
use fawkes::{
    async_trait, Channel, ChannelContext, Config, Connected, Endpoint, Payload, Refused, Reply,
    Router, Server, Socket,
};
use serde_json::{json, Value};
use std::sync::Arc;

struct Room {
    history: Arc<History>,
}

#[async_trait(?Send)]
impl Channel for Room {
    async fn join(
        &mut self,
        _topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        if ctx.socket_id().is_none() {
            return Err(json!({"reason": "unauthorized"}).into());
        }
        // `{"seq": N}`, plus `"missed"` (or `"reset": true`) for a join with `since`.
        self.history.join(ctx, &params).await
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        match event {
            "shout" => {
                let Some(body) = payload.json().cloned().filter(Value::is_object) else {
                    return Reply::error(json!({"reason": "a shout is a JSON object"}));
                };
                // Stored as the topic's next event, then broadcast with its "seq".
                let topic = ctx.topic().to_owned();
                match self
                    .history
                    .broadcast_recorded(ctx.endpoint(), &topic, "shout", body)
                    .await
                {
                    Ok(recorded) => Reply::ok(json!({"seq": recorded["seq"]})),
                    Err(e) => Reply::error(json!({"reason": e.to_string()})),
                }
            }
            "typing" => {
                ctx.broadcast_from("typing", payload);
                Reply::None
            }
            _ => Reply::error(json!({"reason": "unknown event"})),
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let store = Store::open("room.db").map_err(|e| std::io::Error::other(e.to_string()))?;
    let history = Arc::new(History::new(store, HistoryConfig::default()));
    let router = Router::new().channel("room:*", move || Room {
        history: history.clone(),
    });
    let socket = Socket::new(router).on_connect(|info| async move {
        // A real app checks the token; here any non-empty one names the user.
        match info.params.get("token") {
            Some(t) if !t.is_empty() => Ok(Connected {
                id: Some(format!("user_socket:{t}")),
                ..Connected::default()
            }),
            _ => Err(Refused::new("no token")),
        }
    });
    let server = Server::new(Endpoint::new(Config::default()))
        .socket("/socket", socket)
        .bind("127.0.0.1:4000")?;
    println!("listening on ws://{}/socket", server.local_addr());
    server.run().await
}
