//! The apps served by `fawkes serve`, written on the protocol engine like any Phoenix app:
//! each with its REST handlers, channels and queries together.
//!
//! - [`account`]: the signed-in user's own routes: `/api/me`, joining the community.
//! - [`feed`]: the community feed and `community:feed`.
//! - [`chat`]: rooms, messages, threads, mentions, presence and voice signaling.
//! - [`collections`]: JSON records with gap-free sequence numbers and `collection:<name>`.
//! - [`proxy`]: channels declared in `fawkes.toml`, proxied to the app's own HTTP backend.
//! - [`realtime`]: Supabase Realtime's `realtime:*` channels and REST broadcasts, for
//!   unmodified supabase-js clients.
//! - [`api`]: what every REST route shares (errors, auth, body parsing).
//! - [`server_api`]: `/api/server/...`, which the app's own backend calls with the server key
//!   to broadcast, disconnect sockets and read presence and topics (the binary registers it
//!   when given `--server-api-key`).

pub mod account;
pub mod api;
pub mod chat;
pub mod collections;
pub mod feed;
pub mod proxy;
pub mod realtime;
pub mod rules;
pub mod server_api;
pub mod state;

pub use state::{current_user, AppLimits, AppState, SocketUser, RECORDED_PREFIXES};

/// Users, tokens and sign-in live below the apps; re-exported at their old path.
pub use crate::accounts;
use crate::endpoint::{Connected, Refused, Socket};
use crate::{Assigns, Router};
use actix_web::web;

/// The apps' socket: `?token=` (or phoenix.js's `authToken`) is an API token, a Phoenix.Token
/// or a JWT (see [`accounts::sign_in`]); a bad one is refused (403), none at all gives an
/// anonymous socket. A socket's id comes from its token, so revoking the token closes it.
/// The declared channels ([`proxy`]) are mounted after the built-in ones; one that would
/// share their topics is refused (the error says which).
pub fn socket(state: web::Data<AppState>) -> Result<Socket, String> {
    let router = Router::new()
        .channel(feed::TOPIC, {
            let state = state.clone();
            move || feed::FeedChannel {
                state: state.clone(),
            }
        })
        .channel("collection:*", {
            let state = state.clone();
            move || collections::CollectionChannel::new(state.clone())
        })
        .channel("channel:*", {
            let state = state.clone();
            move || chat::room::RoomChannel::new(state.clone())
        })
        .channel("thread:*", {
            let state = state.clone();
            move || chat::room::ThreadChannel {
                state: state.clone(),
            }
        })
        .channel("user:*", {
            let state = state.clone();
            move || chat::user::UserChannel {
                state: state.clone(),
            }
        })
        .channel("voice:*", {
            let state = state.clone();
            move || chat::voice::VoiceChannel::new(state.clone())
        });
    let router = match &state.realtime {
        Some(realtime) => realtime.mount(router),
        None => router,
    };
    let router = state.proxy.mount(router)?;
    let proxied = state.proxy.is_on();
    Ok(Socket::new(router).on_connect(move |info| {
        let state = state.clone();
        // Supabase clients on this socket (a bare Realtime URL) send the project's apikey; a
        // bad one is refused as Realtime refuses it.
        let api_key = state
            .realtime
            .as_ref()
            .map(|r| r.api_key(&info))
            .transpose();
        async move {
            let api_key = api_key?.flatten();
            let token = info
                .params
                .get("token")
                .map(str::to_owned)
                .or(info.auth_token.clone())
                .filter(|t| !t.is_empty());
            let signed_in = match token {
                None => None,
                Some(token) => match accounts::sign_in(&state.auth, &state.store, token).await {
                    Ok(s) => Some(s),
                    Err(accounts::SignInError::Refused(why)) => return Err(Refused::new(why)),
                    Err(accounts::SignInError::Store(e)) => {
                        return Err(Refused::internal(format!("token lookup failed: {e}")))
                    }
                },
            };
            let mut assigns = Assigns::new();
            if let Some(key) = api_key {
                assigns.insert(key);
            }
            let id = signed_in.as_ref().map(|s| s.socket_id.clone());
            if proxied {
                // What a proxied channel's backend is told of the socket; the connect_url (if
                // any) decides now, once the token has.
                let user = signed_in.as_ref().map(|s| (&s.user, &s.claims));
                let mut caller = proxy::Caller::new(&info.params, user);
                match state.proxy.connect(&mut caller, id.as_deref()).await {
                    Ok(()) => {}
                    Err(proxy::ConnectRefusal::Refused(why)) => {
                        return Err(Refused::new(format!("the backend refused: {why}")))
                    }
                    Err(proxy::ConnectRefusal::Failed(f)) => {
                        return Err(Refused::internal(format!("the backend's connect_url: {f}")))
                    }
                }
                assigns.insert(caller);
            }
            if let Some(s) = signed_in {
                assigns.insert(SocketUser(s.user));
            }
            Ok(Connected { assigns, id })
        }
    }))
}

/// The REST API.
pub fn routes(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    use actix_web::web::{delete, get, patch, post, resource};
    cfg.app_data(state)
        .service(resource("/api/me").route(get().to(account::me)))
        .service(
            resource("/api/community/join")
                .route(post().to(account::join_community))
                .route(delete().to(account::join_community)),
        )
        .service(
            resource("/api/community/posts")
                .route(get().to(feed::list))
                .route(post().to(feed::create)),
        )
        .service(
            resource("/api/community/posts/{id}")
                .route(get().to(feed::show))
                .route(patch().to(feed::update))
                .route(delete().to(feed::delete)),
        )
        .service(resource("/api/community/posts/{id}/like").route(post().to(feed::like)))
        .service(
            resource("/api/community/posts/{id}/comments")
                .route(get().to(feed::list_comments))
                .route(post().to(feed::create_comment)),
        )
        .service(resource("/api/community/comments/{id}").route(delete().to(feed::delete_comment)))
        .service(
            resource("/api/channels")
                .route(get().to(chat::rest::list))
                .route(post().to(chat::rest::create)),
        )
        .service(
            resource("/api/channels/{id}/members")
                .route(get().to(chat::rest::members))
                .route(post().to(chat::rest::add)),
        )
        .service(
            resource("/api/channels/{id}/members/{user_id}").route(delete().to(chat::rest::remove)),
        )
        .service(resource("/api/channels/{id}/messages").route(get().to(chat::rest::messages)))
        .service(
            resource("/api/collections/{name}/records")
                .route(get().to(collections::list))
                .route(post().to(collections::create)),
        )
        .service(
            resource("/api/collections/{name}/records/{id}")
                .route(get().to(collections::show))
                .route(patch().to(collections::update))
                .route(delete().to(collections::delete)),
        );
}
