//! The community feed: posts, likes and comments over REST, live on `community:feed`.
//! Every write records its event on the topic's stream (see [`crate::history`]) and broadcasts it,
//! with its `seq`, after its transaction commits, never for a write that failed.

use crate::accounts::User;
use crate::apps::api::{
    authenticate, object_body, paging, path_id, text_field, ApiError, ApiResult,
};
use crate::apps::state::{current_user, AppState};
use crate::history::Recorder;
use crate::store::schema::{comments, post_likes, posts, users};
use crate::store::{iso, now_ms, DbConnection, StoreError};
use crate::{async_trait, Channel, ChannelContext, Payload, Reply};
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

pub const TOPIC: &str = "community:feed";

type PostRow = (i64, i64, String, i64, i64, String);

const POST_COLUMNS: (
    posts::id,
    posts::user_id,
    posts::body,
    posts::inserted_at,
    posts::updated_at,
    users::name,
) = (
    posts::id,
    posts::user_id,
    posts::body,
    posts::inserted_at,
    posts::updated_at,
    users::name,
);

/// Posts as the API shows them, with likes and comment counts, in the order given.
fn render_posts(c: &mut DbConnection, rows: Vec<PostRow>) -> Result<Vec<Value>, StoreError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut likes: HashMap<i64, Vec<i64>> = HashMap::new();
    for (post, user) in post_likes::table
        .filter(post_likes::post_id.eq_any(&ids))
        .order((post_likes::inserted_at, post_likes::user_id))
        .select((post_likes::post_id, post_likes::user_id))
        .load::<(i64, i64)>(c)?
    {
        likes.entry(post).or_default().push(user);
    }
    let counts: HashMap<i64, i64> = comments::table
        .filter(comments::post_id.eq_any(&ids))
        .group_by(comments::post_id)
        .select((comments::post_id, diesel::dsl::count_star()))
        .load::<(i64, i64)>(c)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|(id, user_id, body, inserted, updated, author)| {
            let liked = likes.remove(&id).unwrap_or_default();
            json!({
                "id": id,
                "body": body,
                "user_id": user_id,
                "author_name": author,
                "inserted_at": iso(inserted),
                "updated_at": iso(updated),
                "likes_count": liked.len(),
                "liked_by_user_ids": liked,
                "comments_count": counts.get(&id).copied().unwrap_or(0),
            })
        })
        .collect())
}

fn load_post(c: &mut DbConnection, id: i64) -> Result<Value, StoreError> {
    let row = posts::table
        .inner_join(users::table)
        .filter(posts::id.eq(id))
        .select(POST_COLUMNS)
        .first::<PostRow>(c)?;
    Ok(render_posts(c, vec![row])?.remove(0))
}

/// The author of a post, or 404.
fn post_author(c: &mut DbConnection, id: i64) -> Result<i64, StoreError> {
    Ok(posts::table
        .find(id)
        .select(posts::user_id)
        .first::<i64>(c)?)
}

fn member(user: &User) -> ApiResult<()> {
    if user.community_member {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `GET /api/community/posts?before=&limit=`: newest first.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> ApiResult {
    // Reads need membership, as `community:feed` does.
    member(&authenticate(&state, &req).await?)?;
    let (before, limit) = paging(&req, 20)?;
    let (items, more) = state
        .store
        .run(move |c| {
            let mut q = posts::table
                .inner_join(users::table)
                .select(POST_COLUMNS)
                .order(posts::id.desc())
                .limit(limit + 1)
                .into_boxed();
            if let Some(b) = before {
                q = q.filter(posts::id.lt(b));
            }
            let mut rows = q.load::<PostRow>(c)?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            Ok((render_posts(c, rows)?, more))
        })
        .await?;
    let next = if more {
        items.last().map(|p| p["id"].clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_before": next})))
}

/// `GET /api/community/posts/:id`
pub async fn show(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    // Reads need membership, as `community:feed` does.
    member(&authenticate(&state, &req).await?)?;
    let id = path_id(&id)?;
    let post = state.store.run(move |c| load_post(c, id)).await?;
    Ok(HttpResponse::Ok().json(post))
}

/// `POST /api/community/posts {body}`
pub async fn create(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let text = text_field(&object_body(&body)?, "body", state.limits.max_post_length)?;
    member(&user)?;
    let post = state
        .history
        .write(&state.endpoint, move |c, rec| {
            let now = now_ms();
            let id = diesel::insert_into(posts::table)
                .values((
                    posts::user_id.eq(user.id),
                    posts::body.eq(&text),
                    posts::inserted_at.eq(now),
                    posts::updated_at.eq(now),
                ))
                .returning(posts::id)
                .get_result::<i64>(c)?;
            let post = load_post(c, id)?;
            rec.record(c, TOPIC, "new_post", post.clone())?;
            Ok(post)
        })
        .await?;
    Ok(HttpResponse::Created().json(post))
}

/// `PATCH /api/community/posts/:id {body}`: the author only.
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let id = path_id(&id)?;
    let text = text_field(&object_body(&body)?, "body", state.limits.max_post_length)?;
    let post = state
        .history
        .write(&state.endpoint, move |c, rec| {
            if post_author(c, id)? != user.id {
                return Err(ApiError::Forbidden.into());
            }
            diesel::update(posts::table.find(id))
                .set((posts::body.eq(&text), posts::updated_at.eq(now_ms())))
                .execute(c)?;
            let post = load_post(c, id)?;
            rec.record(c, TOPIC, "post_updated", post.clone())?;
            Ok(post)
        })
        .await?;
    Ok(HttpResponse::Ok().json(post))
}

/// `DELETE /api/community/posts/:id`: the author only.
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let id = path_id(&id)?;
    state
        .history
        .write(&state.endpoint, move |c, rec| {
            if post_author(c, id)? != user.id {
                return Err(ApiError::Forbidden.into());
            }
            diesel::delete(post_likes::table.filter(post_likes::post_id.eq(id))).execute(c)?;
            diesel::delete(comments::table.filter(comments::post_id.eq(id))).execute(c)?;
            diesel::delete(posts::table.find(id)).execute(c)?;
            rec.record(c, TOPIC, "post_deleted", json!({ "id": id }))?;
            Ok(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/community/posts/:id/like`: toggles the caller's like.
pub async fn like(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let id = path_id(&id)?;
    member(&user)?;
    let likes = state
        .history
        .write(&state.endpoint, move |c, rec| {
            post_author(c, id)?;
            let mine = post_likes::table
                .filter(post_likes::post_id.eq(id))
                .filter(post_likes::user_id.eq(user.id));
            if diesel::delete(mine).execute(c)? == 0 {
                diesel::insert_into(post_likes::table)
                    .values((
                        post_likes::post_id.eq(id),
                        post_likes::user_id.eq(user.id),
                        post_likes::inserted_at.eq(now_ms()),
                    ))
                    .execute(c)?;
            }
            let post = load_post(c, id)?;
            let likes = json!({
                "id": id,
                "likes_count": post["likes_count"],
                "liked_by_user_ids": post["liked_by_user_ids"],
            });
            rec.record(c, TOPIC, "post_likes_updated", likes.clone())?;
            Ok(likes)
        })
        .await?;
    Ok(HttpResponse::Ok().json(likes))
}

type CommentRow = (i64, i64, String, i64, i64, String);

fn render_comment((id, post_id, body, user_id, inserted, author): CommentRow) -> Value {
    json!({
        "id": id,
        "post_id": post_id,
        "body": body,
        "user_id": user_id,
        "author_name": author,
        "inserted_at": iso(inserted),
    })
}

const COMMENT_COLUMNS: (
    comments::id,
    comments::post_id,
    comments::body,
    comments::user_id,
    comments::inserted_at,
    users::name,
) = (
    comments::id,
    comments::post_id,
    comments::body,
    comments::user_id,
    comments::inserted_at,
    users::name,
);

/// Records `post_comments_updated` with the post's comment count.
fn comments_updated(
    c: &mut DbConnection,
    rec: &mut Recorder<'_>,
    post_id: i64,
) -> Result<(), StoreError> {
    let count: i64 = comments::table
        .filter(comments::post_id.eq(post_id))
        .count()
        .get_result(c)?;
    let payload = json!({"id": post_id, "comments_count": count});
    rec.record(c, TOPIC, "post_comments_updated", payload)?;
    Ok(())
}

/// `GET /api/community/posts/:id/comments`: oldest first.
pub async fn list_comments(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    // Reads need membership, as `community:feed` does.
    member(&authenticate(&state, &req).await?)?;
    let id = path_id(&id)?;
    let items = state
        .store
        .run(move |c| {
            post_author(c, id)?;
            Ok(comments::table
                .inner_join(users::table)
                .filter(comments::post_id.eq(id))
                .order(comments::id)
                .select(COMMENT_COLUMNS)
                .load::<CommentRow>(c)?
                .into_iter()
                .map(render_comment)
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/community/posts/:id/comments {body}`
pub async fn create_comment(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let post_id = path_id(&id)?;
    let text = text_field(&object_body(&body)?, "body", state.limits.max_post_length)?;
    member(&user)?;
    let comment = state
        .history
        .write(&state.endpoint, move |c, rec| {
            post_author(c, post_id)?;
            let id = diesel::insert_into(comments::table)
                .values((
                    comments::post_id.eq(post_id),
                    comments::user_id.eq(user.id),
                    comments::body.eq(&text),
                    comments::inserted_at.eq(now_ms()),
                ))
                .returning(comments::id)
                .get_result::<i64>(c)?;
            let row = comments::table
                .inner_join(users::table)
                .filter(comments::id.eq(id))
                .select(COMMENT_COLUMNS)
                .first::<CommentRow>(c)?;
            comments_updated(c, rec, post_id)?;
            Ok(render_comment(row))
        })
        .await?;
    Ok(HttpResponse::Created().json(comment))
}

/// `DELETE /api/community/comments/:id`: the author only.
pub async fn delete_comment(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = authenticate(&state, &req).await?;
    let id = path_id(&id)?;
    state
        .history
        .write(&state.endpoint, move |c, rec| {
            let (post_id, author) = comments::table
                .find(id)
                .select((comments::post_id, comments::user_id))
                .first::<(i64, i64)>(c)?;
            if author != user.id {
                return Err(ApiError::Forbidden.into());
            }
            diesel::delete(comments::table.find(id)).execute(c)?;
            comments_updated(c, rec, post_id)
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `community:feed`: joined by community members; every event comes from the REST writes.
pub struct FeedChannel {
    pub state: web::Data<AppState>,
}

#[async_trait(?Send)]
impl Channel for FeedChannel {
    async fn join(
        &mut self,
        _: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let unauthorized = || Payload::Json(json!({"reason": "unauthorized"}));
        let user = current_user(ctx).ok_or_else(unauthorized)?;
        // Leaving the community (a recorded event of the user's own stream) ends this channel;
        // listening before the check below means a leave that lands in between is not missed.
        let leaves = crate::accounts::community_member_topic(user.id);
        ctx.stop_on_recorded(&leaves, |b| b.event == crate::accounts::LEFT);
        // Membership may have changed since connect: ask the database.
        let t = leaves.clone();
        let (fresh, seq) = self
            .state
            .store
            .read(move |c| {
                let u = crate::accounts::user_by_id(c, user.id)?;
                Ok((u, crate::history::latest_seq(c, &t)?))
            })
            .await
            .map_err(|e| {
                log::error!("feed join: {e}");
                unauthorized()
            })?;
        ctx.stop_covered_through(&leaves, seq);
        match fresh {
            Some(u) if u.community_member => self.state.history.join(ctx, &params).await,
            _ => Err(unauthorized()),
        }
    }

    async fn handle_in(&mut self, event: &str, _: Payload, _: &mut ChannelContext) -> Reply {
        // The feed is written through REST; say so rather than failing the channel.
        Reply::error(
            json!({"reason": format!("unknown event {event:?}: write through the REST API")}),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_feed_is_a_recorded_topic() {
        assert!(crate::apps::state::RECORDED_PREFIXES.contains(&super::TOPIC));
    }
}
