//! The signed-in user's own REST routes: `GET /api/me`, `POST|DELETE /api/community/join`.

use crate::accounts::{community_member_topic, set_community_member, LEFT};
use crate::apps::api::{authenticate, ApiError, ApiResult};
use crate::apps::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// `GET /api/me`
pub async fn me(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    Ok(HttpResponse::Ok().json(user.json()))
}

/// `POST /api/community/join` and `DELETE /api/community/join`.
pub async fn join_community(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    let member = req.method() == actix_web::http::Method::POST;
    let user = authenticate(&state, &req).await?;
    // In the recorded streams' order: no feed event committed after a leave reaches the user.
    state
        .history
        .write(&state.endpoint, move |c, rec| {
            set_community_member(c, user.id, member)?;
            if !member {
                // Ends the user's open `community:feed` channels: they are no longer members.
                // Recorded, so that a node that missed it (Redis away) reads it from the log.
                rec.record(c, &community_member_topic(user.id), LEFT, json!({}))?;
            }
            Ok(())
        })
        .await
        .map_err(ApiError::from)?;
    Ok(HttpResponse::NoContent().finish())
}
