//! The smallest Fawkes app: one channel on `room:*`, served at ws://127.0.0.1:4000/socket.
//! `cargo run --example room`

use fawkes::{
    async_trait, Channel, ChannelContext, Config, Connected, Endpoint, Payload, Refused, Reply,
    Router, Server, Socket,
};
use serde_json::json;

struct Room;

#[async_trait(?Send)]
impl Channel for Room {
    async fn join(
        &mut self,
        _topic: &str,
        _params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        match ctx.socket_id() {
            Some(_) => Ok(Payload::empty()),
            None => Err(json!({"reason": "unauthorized"}).into()),
        }
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut ChannelContext,
    ) -> Reply {
        match event {
            "shout" => {
                ctx.broadcast("shout", payload);
                Reply::ok(Payload::empty())
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
    let socket =
        Socket::new(Router::new().channel("room:*", || Room)).on_connect(|info| async move {
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
