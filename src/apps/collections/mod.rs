//! Generic collections: JSON records under a name, written through a PocketBase-style REST API,
//! kept live on `collection:<name>`.
//!
//! A collection's change log is its topic's recorded stream ([`crate::history`]): every write
//! takes the next sequence number in its own transaction, so numbers are gap-free and strictly
//! increasing however writers race, and the last `log_size` changes let a client that
//! reconnects with `{"since": S}` get exactly what it missed. `change` broadcasts go out in
//! sequence order.
//!
//! [`rules`] decide who may list, view, create, update and delete records; each record keeps
//! its creator for the `owner` rule.

pub mod page;
/// Who may do what with a collection's records (below the apps: the shared state holds it).
pub use crate::apps::rules;
/// The collections' settings live with the apps' shared state; re-exported at their old path.
pub use crate::apps::state::CollectionsConfig;

use crate::accounts::User;
use crate::apps::api::{object_body, optional_user, ApiError, ApiResult};
use crate::apps::state::{current_user, AppState};
use crate::history::{self, Recorder, Retention};
use crate::protocol::json_len;
use crate::store::schema::collection_records;
use crate::store::{iso, now_ms, DbConnection, StoreError};
use crate::{async_trait, Channel, ChannelContext, Flow, Payload, Reply};
use actix_web::{web, HttpRequest, HttpResponse};
use diesel::prelude::*;
use rand::Rng;
pub use rules::valid_name;
use rules::{Decision, Rule};
use serde_json::{json, Map, Value};
use std::time::Duration;

const MAX_PER_PAGE: i64 = 500;
/// Keys the server owns: a client's values for them are ignored.
const SERVER_KEYS: [&str; 4] = ["id", "created", "updated", "seq"];

/// A write to a collection.
pub enum Write {
    Create(Map<String, Value>),
    Update(String, Map<String, Value>),
    Delete(String),
}

/// A record as the API shows it: the client's fields plus `id`, `created`, `updated`.
fn render(id: &str, data: &str, created: i64, updated: i64) -> Value {
    let mut m: Map<String, Value> = serde_json::from_str(data).unwrap_or_default();
    m.insert("id".into(), json!(id));
    m.insert("created".into(), json!(iso(created)));
    m.insert("updated".into(), json!(iso(updated)));
    Value::Object(m)
}

fn client_fields(mut m: Map<String, Value>) -> Map<String, Value> {
    for k in SERVER_KEYS {
        m.remove(k);
    }
    m
}

fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..15)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

type RecordRow = (String, String, i64, i64);

const RECORD_COLUMNS: (
    collection_records::id,
    collection_records::data,
    collection_records::created,
    collection_records::updated,
) = (
    collection_records::id,
    collection_records::data,
    collection_records::created,
    collection_records::updated,
);

/// A record and its creator.
fn find(
    c: &mut DbConnection,
    name: &str,
    id: &str,
) -> Result<(RecordRow, Option<i64>), StoreError> {
    Ok(collection_records::table
        .filter(collection_records::collection.eq(name))
        .filter(collection_records::id.eq(id))
        .select((RECORD_COLUMNS, collection_records::owner))
        .first::<(RecordRow, Option<i64>)>(c)?)
}

/// A rule's decision as the REST API answers it.
fn check(decision: Decision) -> Result<(), ApiError> {
    match decision {
        Decision::Allowed => Ok(()),
        Decision::SignIn => Err(ApiError::Unauthorized),
        Decision::Forbidden => Err(ApiError::Forbidden),
    }
}

/// Who writes, and under which rule (the one for the write's action).
pub struct Writer<'a> {
    pub user: Option<&'a User>,
    pub rule: Rule,
}

/// A committed write: the `change` payload `{"action", "record", "seq"}` and the record's
/// creator.
pub struct Change {
    pub payload: Value,
    pub owner: Option<i64>,
}

/// The topic of a collection, whose recorded stream is its change log.
pub fn topic(name: &str) -> String {
    format!("collection:{name}")
}

/// Applies a write if the writer's rule allows it and records its `change` on the collection's
/// stream, which keeps the last `log_size` changes. Run it inside a transaction
/// ([`crate::history::History::write`]): the sequence number is taken, used and logged in the
/// same one, and a refusal rolls it all back. The recorded change also names the record's
/// owner ([`OWNER_KEY`]), for the channels to filter on; they never send it.
pub fn apply(
    c: &mut DbConnection,
    rec: &mut Recorder<'_>,
    name: &str,
    write: Write,
    log_size: i64,
    writer: &Writer<'_>,
) -> Result<Change, StoreError> {
    {
        let existing = match &write {
            Write::Create(_) => None,
            Write::Update(id, _) | Write::Delete(id) => Some(find(c, name, id)?),
        };
        check(
            writer
                .rule
                .decide(writer.user, existing.as_ref().map(|(_, o)| *o)),
        )?;
        let now = now_ms();
        let mut owner = existing.as_ref().and_then(|(_, o)| *o);
        let (action, record) = match write {
            Write::Create(fields) => {
                let id = new_id();
                let data = Value::Object(client_fields(fields)).to_string();
                owner = writer.user.map(|u| u.id);
                diesel::insert_into(collection_records::table)
                    .values((
                        collection_records::collection.eq(name),
                        collection_records::id.eq(&id),
                        collection_records::data.eq(&data),
                        collection_records::created.eq(now),
                        collection_records::updated.eq(now),
                        collection_records::owner.eq(owner),
                    ))
                    .execute(c)?;
                ("create", render(&id, &data, now, now))
            }
            Write::Update(id, fields) => {
                let ((_, data, created, _), _) = existing.expect("found above");
                let mut merged: Map<String, Value> =
                    serde_json::from_str(&data).unwrap_or_default();
                merged.extend(client_fields(fields));
                let data = Value::Object(merged).to_string();
                diesel::update(
                    collection_records::table
                        .filter(collection_records::collection.eq(name))
                        .filter(collection_records::id.eq(&id)),
                )
                .set((
                    collection_records::data.eq(&data),
                    collection_records::updated.eq(now),
                ))
                .execute(c)?;
                ("update", render(&id, &data, created, now))
            }
            Write::Delete(id) => {
                let ((_, data, created, updated), _) = existing.expect("found above");
                diesel::delete(
                    collection_records::table
                        .filter(collection_records::collection.eq(name))
                        .filter(collection_records::id.eq(&id)),
                )
                .execute(c)?;
                ("delete", render(&id, &data, created, updated))
            }
        };
        // A count-only log: a collection's changes do not age out.
        let keep = Retention {
            max_events: log_size,
            max_age: Duration::from_secs(100 * 365 * 24 * 3600),
        };
        let change = json!({"action": action, "record": record, OWNER_KEY: owner});
        let mut payload = rec.record_kept(c, &topic(name), "change", change, keep)?;
        if let Value::Object(m) = &mut payload {
            m.remove(OWNER_KEY);
        }
        Ok(Change { payload, owner })
    }
}

/// What a join or `reload` answers with.
pub enum Snapshot {
    /// `{"items": [...], "seq": S}` (with `"reset": true` when a `since` could not be served).
    Full {
        items: Vec<Value>,
        seq: i64,
    },
    /// `{"changes": [...], "seq": S}`: everything after the client's `since`.
    Changes {
        changes: Vec<Value>,
        seq: i64,
    },
    TooLarge(i64),
}

/// Reads the collection: the records (oldest first) or the changes after `since`, with the
/// sequence number they are current to; with `only_owner`, only that user's records and
/// changes. Run it in one read transaction ([`crate::store::Store::read`]), so all its reads
/// see the same commit.
pub fn snapshot(
    c: &mut DbConnection,
    name: &str,
    since: Option<i64>,
    limit: i64,
    only_owner: Option<i64>,
) -> Result<Snapshot, StoreError> {
    let seq = history::latest_seq(c, &topic(name))?;
    if let Some(since) = since.filter(|&s| s <= seq) {
        let changes = history::events_after(c, &topic(name), since)?;
        // Served only if the log still holds every change after `since`.
        if changes.len() as i64 == seq - since {
            let changes = changes
                .into_iter()
                .map(|(_, _, change)| change)
                .filter(|change| only_owner.is_none() || change[OWNER_KEY].as_i64() == only_owner)
                .map(|mut change| {
                    if let Value::Object(m) = &mut change {
                        m.remove(OWNER_KEY);
                    }
                    change
                })
                .collect();
            return Ok(Snapshot::Changes { changes, seq });
        }
    }
    let records = || {
        let mut q = collection_records::table
            .filter(collection_records::collection.eq(name))
            .into_boxed();
        if let Some(o) = only_owner {
            q = q.filter(collection_records::owner.eq(o));
        }
        q
    };
    let total = records().count().get_result::<i64>(c)?;
    if total > limit {
        return Ok(Snapshot::TooLarge(total));
    }
    let items = records()
        .order((collection_records::created, collection_records::id))
        .select(RECORD_COLUMNS)
        .load::<RecordRow>(c)?
        .iter()
        .map(|(id, data, cr, up)| render(id, data, *cr, *up))
        .collect();
    Ok(Snapshot::Full { items, seq })
}

/// Writes if `user` may, then broadcasts the change in sequence order (the recorded streams'
/// order, see [`crate::history::History::write`]). The broadcast also carries the record's
/// `owner`, which [`CollectionChannel`] uses and takes out before pushing.
pub async fn write_collection(
    state: &AppState,
    name: &str,
    write: Write,
    user: Option<User>,
) -> Result<Value, ApiError> {
    let rules = state.collections.rules.of(name);
    let rule = match write {
        Write::Create(_) => rules.create,
        Write::Update(..) => rules.update,
        Write::Delete(_) => rules.delete,
    };
    if let Write::Create(fields) | Write::Update(_, fields) = &write {
        if let Some((field, _)) = fields
            .iter()
            .find(|(k, v)| k.contains('\0') || crate::store::holds_nul(v))
        {
            return Err(ApiError::invalid(field, crate::store::NUL_REFUSED));
        }
    }
    let (n, log) = (name.to_owned(), state.collections.log_size);
    let change = state
        .history
        .write(&state.endpoint, move |c, rec| {
            let writer = Writer {
                user: user.as_ref(),
                rule,
            };
            apply(c, rec, &n, write, log, &writer)
        })
        .await?;
    Ok(change.payload)
}

fn checked_name(name: &str) -> ApiResult<&str> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(ApiError::NotFound)
    }
}

/// The key of a recorded `change` that names the record's creator, for the channels to
/// filter on; never sent to clients.
pub const OWNER_KEY: &str = "owner";

/// The caller, and whether `rule` lets them read (anonymous callers are asked to sign in).
async fn reader(state: &AppState, req: &HttpRequest, rule: Rule) -> ApiResult<Option<User>> {
    let user = optional_user(state, req).await?;
    check(rule.decide(user.as_ref(), None))?;
    Ok(user)
}

/// `GET /api/collections/:name/records?page=&perPage=&sort=`
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult {
    let name = checked_name(&path)?.to_owned();
    let rule = state.collections.rules.of(&name).list;
    let only_owner = rule.only_owner(reader(&state, &req, rule).await?.as_ref());
    let params = crate::endpoint::Params::parse(req.query_string());
    let int = |key: &str, default: i64| -> ApiResult<i64> {
        match params.get(key) {
            None | Some("") => Ok(default),
            Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::BadRequest(format!("{key} must be an integer from 1 to {}", i64::MAX))
            }),
        }
    };
    let page = int("page", 1)?;
    let per_page = int("perPage", 30)?.min(MAX_PER_PAGE);
    let offset = (page - 1)
        .checked_mul(per_page)
        .ok_or_else(|| ApiError::BadRequest(format!("page {page} is out of range")))?;
    let sort = page::Sort::parse(params.get("sort").unwrap_or("created")).ok_or_else(|| {
        ApiError::BadRequest("sort must be a field name, optionally after - or +".into())
    })?;
    let found = state
        .store
        .run(move |c| page::page(c, &name, only_owner, &sort, per_page, offset))
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "page": page,
        "perPage": per_page,
        "totalItems": found.total,
        "totalPages": (found.total + per_page - 1) / per_page,
        "items": found.items,
    })))
}

/// `GET /api/collections/:name/records/:id`
pub async fn show(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    let (name, id) = path.into_inner();
    checked_name(&name)?;
    let rule = state.collections.rules.of(&name).view;
    let user = reader(&state, &req, rule).await?;
    let ((id, data, cr, up), owner) = state.store.run(move |c| find(c, &name, &id)).await?;
    check(rule.decide(user.as_ref(), Some(owner)))?;
    Ok(HttpResponse::Ok().json(render(&id, &data, cr, up)))
}

/// `POST /api/collections/:name/records`
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let name = checked_name(&path)?.to_owned();
    let user = optional_user(&state, &req).await?;
    let fields = object_body(&body)?;
    let change = write_collection(&state, &name, Write::Create(fields), user).await?;
    Ok(HttpResponse::Created().json(&change["record"]))
}

/// `PATCH /api/collections/:name/records/:id`: merges top-level fields.
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> ApiResult {
    let (name, id) = path.into_inner();
    checked_name(&name)?;
    let user = optional_user(&state, &req).await?;
    let fields = object_body(&body)?;
    let change = write_collection(&state, &name, Write::Update(id, fields), user).await?;
    Ok(HttpResponse::Ok().json(&change["record"]))
}

/// `DELETE /api/collections/:name/records/:id`
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    let (name, id) = path.into_inner();
    checked_name(&name)?;
    let user = optional_user(&state, &req).await?;
    write_collection(&state, &name, Write::Delete(id), user).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `collection:<name>`: the join reply is the collection (or what a `since` missed); every
/// committed write follows as `change`, with no gap and no overlap.
pub struct CollectionChannel {
    pub state: web::Data<AppState>,
    name: String,
    /// Under an `owner` list rule, the only creator whose records this client sees.
    only_owner: Option<i64>,
}

impl CollectionChannel {
    pub fn new(state: web::Data<AppState>) -> CollectionChannel {
        CollectionChannel {
            state,
            name: String::new(),
            only_owner: None,
        }
    }

    async fn read(&self, since: Option<i64>) -> Result<Snapshot, Payload> {
        let (name, limit) = (self.name.clone(), self.state.collections.join_limit);
        let only_owner = self.only_owner;
        self.state
            .store
            .read(move |c| snapshot(c, &name, since, limit, only_owner))
            .await
            .map_err(|e| {
                log::error!("collection {}: {e}", self.name);
                reason("could not read the collection")
            })
    }

    /// The reply for a snapshot; the changes it covers are not sent again.
    fn answer(
        &self,
        snap: Snapshot,
        reset: bool,
        ctx: &ChannelContext,
    ) -> Result<Payload, Payload> {
        let (reply, seq) = match snap {
            Snapshot::Full { items, seq } => {
                let mut v = json!({"items": items, "seq": seq});
                if reset {
                    v["reset"] = json!(true);
                }
                (v, seq)
            }
            Snapshot::Changes { changes, seq } => (json!({"changes": changes, "seq": seq}), seq),
            Snapshot::TooLarge(n) => {
                return Err(reason(&format!(
                    "collection has {n} records, over the join limit of {}: page through the REST API instead",
                    self.state.collections.join_limit
                )))
            }
        };
        let (bytes, max) = (json_len(&reply), self.state.collections.max_reply_bytes);
        if bytes > max {
            return Err(reason(&format!(
                "the reply would be {bytes} bytes, over the limit of {max}: page through the REST API instead"
            )));
        }
        ctx.skip_recorded_through(seq);
        Ok(Payload::Json(reply))
    }
}

fn reason(r: &str) -> Payload {
    Payload::Json(json!({ "reason": r }))
}

#[async_trait(?Send)]
impl Channel for CollectionChannel {
    async fn join(
        &mut self,
        topic: &str,
        params: Payload,
        ctx: &mut ChannelContext,
    ) -> Result<Payload, Payload> {
        let name = topic.strip_prefix("collection:").unwrap_or_default();
        if !valid_name(name) {
            return Err(reason("invalid collection name"));
        }
        self.name = name.to_owned();
        let rule = self.state.collections.rules.of(name).list;
        let user = current_user(ctx);
        if rule.decide(user.as_ref(), None) != Decision::Allowed {
            return Err(reason("unauthorized"));
        }
        self.only_owner = rule.only_owner(user.as_ref());
        let since = history::since_param(&params).map_err(|r| reason(&r))?;
        let snap = self.read(since).await?;
        // A `since` that could not be served gets everything, marked as a reset.
        let reset = since.is_some() && matches!(snap, Snapshot::Full { .. });
        self.answer(snap, reset, ctx)
    }

    fn intercepts(&self) -> &'static [&'static str] {
        &["change"]
    }

    fn handle_out(&mut self, event: &str, payload: &Payload, ctx: &mut ChannelContext) -> Flow {
        // Changes a join reply (or a reload) covered never get here (the engine drops them).
        let Some(Value::Object(change)) = payload.json() else {
            return Flow::Continue;
        };
        let owner = change.get(OWNER_KEY).and_then(Value::as_i64);
        if self.only_owner.is_none() || owner == self.only_owner {
            let mut change = change.clone();
            change.remove(OWNER_KEY);
            ctx.push(event, Value::Object(change));
        }
        Flow::Continue
    }

    async fn handle_in(&mut self, event: &str, _: Payload, ctx: &mut ChannelContext) -> Reply {
        if event != "reload" {
            return Reply::error(reason(&format!("unknown event {event:?}")));
        }
        // A reload reads and sends the whole collection: it spends the socket's budget.
        if let Err(p) = ctx.spend_costly_push() {
            return Reply::error(p);
        }
        match self
            .read(None)
            .await
            .and_then(|s| self.answer(s, false, ctx))
        {
            Ok(p) => {
                ctx.charge_reply_bytes(p.encoded_len());
                Reply::ok(p)
            }
            Err(p) => Reply::error(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(valid_name("orders"));
        assert!(valid_name("menu_items_2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Orders"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(&"a".repeat(65)));
        let id = new_id();
        assert_eq!(id.len(), 15);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn server_keys_are_the_servers() {
        let m = json!({"id": "x", "created": 1, "updated": 2, "seq": 3, "name": "tea"});
        let Value::Object(m) = m else { unreachable!() };
        assert_eq!(Value::Object(client_fields(m)), json!({"name": "tea"}));
        let r = render("abc", r#"{"name":"tea"}"#, 0, 1);
        assert_eq!(
            r,
            json!({"id": "abc", "name": "tea", "created": "1970-01-01T00:00:00.000Z", "updated": "1970-01-01T00:00:00.001Z"})
        );
    }
}
