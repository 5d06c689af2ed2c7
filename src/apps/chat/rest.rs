//! `/api/channels`: rooms, members and message history.

use super::{history, readable, room_json, unread_count, Room, MEMBER_REMOVED};
use crate::accounts;
use crate::apps::api::{
    authenticate, object_body, paging, path_id, text_field, ApiError, ApiResult,
};
use crate::apps::state::AppState;
use crate::store::schema::{room_members, rooms, users};
use crate::store::{now_ms, DbConnection, StoreError};
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::prelude::*;
use serde_json::{json, Value};

const MAX_ROOM_NAME: usize = 80;

fn add_member(
    c: &mut DbConnection,
    room_id: i64,
    user_id: i64,
    admin: bool,
    max_members: i64,
) -> Result<(), StoreError> {
    if let DbConnection::Postgres(pg) = c {
        // Concurrent adds to one room count its members one after another.
        diesel::sql_query("SELECT id FROM rooms WHERE id = $1 FOR UPDATE")
            .bind::<diesel::sql_types::BigInt, _>(room_id)
            .execute(pg)?;
    }
    let exists = room_members::table
        .filter(room_members::room_id.eq(room_id))
        .filter(room_members::user_id.eq(user_id))
        .count()
        .get_result::<i64>(c)?
        > 0;
    if !exists {
        let members = room_members::table
            .filter(room_members::room_id.eq(room_id))
            .count()
            .get_result::<i64>(c)?;
        if members >= max_members {
            return Err(ApiError::invalid(
                "user_id",
                format!("cannot join: the room is full ({max_members} members)"),
            )
            .into());
        }
        diesel::insert_into(room_members::table)
            .values((
                room_members::room_id.eq(room_id),
                room_members::user_id.eq(user_id),
                room_members::admin.eq(admin as i32),
                room_members::inserted_at.eq(now_ms()),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// `POST /api/channels {name, private}`: the creator becomes a member and its admin.
pub async fn create(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let fields = object_body(&body)?;
    let name = text_field(&fields, "name", MAX_ROOM_NAME)?;
    let private = match fields.get("private") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("private", "must be true or false")),
    };
    let max_members = state.chat.max_room_members;
    let room = state
        .store
        .write(move |c| {
            let id = diesel::insert_into(rooms::table)
                .values((
                    rooms::name.eq(&name),
                    rooms::private.eq(private as i32),
                    rooms::inserted_at.eq(now_ms()),
                ))
                .returning(rooms::id)
                .get_result::<i64>(c)?;
            add_member(c, id, user.id, true, max_members)?;
            Ok(room_json(&Room { id, name, private }, 0))
        })
        .await?;
    Ok(HttpResponse::Created().json(room))
}

/// `GET /api/channels`: public rooms and the private ones I belong to, with my unread counts.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let items = state
        .store
        .run(move |c| {
            let mine: Vec<i64> = room_members::table
                .filter(room_members::user_id.eq(user.id))
                .select(room_members::room_id)
                .load(c)?;
            let visible = rooms::table
                .filter(rooms::private.eq(0).or(rooms::id.eq_any(&mine)))
                .order(rooms::id)
                .select((rooms::id, rooms::name, rooms::private))
                .load::<(i64, String, i32)>(c)?;
            visible
                .into_iter()
                .map(|(id, name, private)| {
                    let unread = unread_count(c, id, user.id)?;
                    Ok(room_json(
                        &Room {
                            id,
                            name,
                            private: private != 0,
                        },
                        unread,
                    ))
                })
                .collect::<Result<Vec<Value>, StoreError>>()
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `GET /api/channels/:id/members`
pub async fn members(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let room_id = path_id(&id)?;
    let items = state
        .store
        .run(move |c| {
            readable(c, room_id, &user)?;
            Ok(room_members::table
                .inner_join(users::table)
                .filter(room_members::room_id.eq(room_id))
                .order(room_members::user_id)
                .select((room_members::user_id, users::name, room_members::admin))
                .load::<(i64, String, i32)>(c)?
                .into_iter()
                .map(|(id, name, admin)| json!({"user_id": id, "name": name, "admin": admin != 0}))
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/channels/:id/members {user_id}`: admins add anyone; anyone may join a public room.
pub async fn add(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let room_id = path_id(&id)?;
    let target = object_body(&body)?
        .get("user_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::invalid("user_id", "must be a user id"))?;
    let max_members = state.chat.max_room_members;
    state
        .store
        .write(move |c| {
            let a = readable(c, room_id, &user)?;
            let allowed = a.is_admin() || (target == user.id && !a.room.private);
            if !allowed {
                return Err(ApiError::Forbidden.into());
            }
            if accounts::user_by_id(c, target)?.is_none() {
                return Err(ApiError::invalid("user_id", "does not exist").into());
            }
            add_member(c, room_id, target, false, max_members)
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `DELETE /api/channels/:id/members/:user_id`: admins remove anyone; anyone may leave. The
/// removed user's channels of the room end at once.
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let room_id = path_id(&path.0)?;
    let target = path_id(&path.1)?;
    // Recorded in the room's stream: on every node no message committed after the removal is
    // delivered before it, and a node that missed it (Redis away) reads it from the change log.
    state
        .history
        .write(&state.endpoint, move |c, rec| {
            let a = readable(c, room_id, &user)?;
            if !(a.is_admin() || target == user.id) {
                return Err(ApiError::Forbidden.into());
            }
            let gone = diesel::delete(
                room_members::table
                    .filter(room_members::room_id.eq(room_id))
                    .filter(room_members::user_id.eq(target)),
            )
            .execute(c)?;
            if gone == 0 {
                return Err(ApiError::NotFound.into());
            }
            let topic = super::room::room_topic(room_id);
            rec.record(c, &topic, MEMBER_REMOVED, json!({ "user_id": target }))?;
            Ok(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/channels/:id/messages?before=&limit=`: top-level messages, newest first.
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let room_id = path_id(&id)?;
    let (before, limit) = paging(&req, 50)?;
    let (items, more) = state
        .store
        .run(move |c| {
            readable(c, room_id, &user)?;
            let mut items = history(c, room_id, before, limit + 1)?;
            items.reverse();
            let more = items.len() as i64 > limit;
            items.truncate(limit as usize);
            Ok((items, more))
        })
        .await?;
    let next = if more {
        items.last().map(|m| m["id"].clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_before": next})))
}
