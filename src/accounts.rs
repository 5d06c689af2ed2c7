//! Users and API tokens. Tokens are random and shown once; only their SHA-256 (hex) is stored.
//! A user may also sign in with a token their Phoenix app minted (Phoenix.Token) or a JWT,
//! naming them by the app's own id for them (`external_id`), never by Fawkes's id. Below the
//! apps: every transport and REST route signs in through [`sign_in`]; the REST routes of one's
//! own account are `crate::apps::account`.

use crate::auth::{Subject, Verdict, Verifiers};
use crate::endpoint::Endpoint;
use crate::store::schema::{api_tokens, users};
use crate::store::{now_ms, DbConnection, Refusal, Store, StoreError};
use base64::Engine;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub community_member: bool,
    /// Passes every collection rule.
    pub admin: bool,
}

impl User {
    pub fn json(&self) -> serde_json::Value {
        json!({"id": self.id, "name": self.name, "community_member": self.community_member})
    }
}

/// Where leaving the community is recorded (a stream per user), to end the user's
/// `community:feed` channels on every node, also one that missed it while Redis was away.
pub fn community_member_topic(user_id: i64) -> String {
    format!("{COMMUNITY_MEMBER_PREFIX}{user_id}")
}

pub const COMMUNITY_MEMBER_PREFIX: &str = "community_member:";

/// The event of [`community_member_topic`] that ends a membership.
pub const LEFT: &str = "left";

/// The socket id of every socket opened with one token: revoking it disconnects them.
pub fn token_socket_id(token_id: i64) -> String {
    format!("api_token:{token_id}")
}

pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Names: 1 to 32 letters, digits, `_`, `-` or `.`, so `@name` mentions can find them.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

type UserRow = (i64, String, i32, i32);

fn to_user((id, name, member, admin): UserRow) -> User {
    User {
        id,
        name,
        community_member: member != 0,
        admin: admin != 0,
    }
}

const USER_COLUMNS: (
    users::id,
    users::name,
    users::community_member,
    users::admin,
) = (
    users::id,
    users::name,
    users::community_member,
    users::admin,
);

/// A user to create.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub name: String,
    pub community_member: bool,
    pub admin: bool,
    /// The id the user's own app knows them by (Phoenix.Token data, JWT `sub`).
    pub external_id: Option<String>,
}

/// Creates a user and a first token.
pub fn create_user(
    c: &mut DbConnection,
    name: &str,
    community_member: bool,
) -> Result<(User, String), StoreError> {
    create(
        c,
        &NewUser {
            name: name.to_owned(),
            community_member,
            ..NewUser::default()
        },
    )
}

/// Creates a user and a first token. Names are unique whatever their case; external ids are
/// unique as given.
pub fn create(c: &mut DbConnection, new: &NewUser) -> Result<(User, String), StoreError> {
    let name = new.name.as_str();
    if !valid_name(name) {
        return Err(Refusal::invalid("name", "must be 1-32 letters, digits, _, - or .").into());
    }
    if let Some(ext) = &new.external_id {
        check_external_id(ext)?;
    }
    c.transaction(|c| {
        let taken = users::table
            .filter(users::name_key.eq(name.to_lowercase()))
            .count()
            .get_result::<i64>(c)?;
        if taken > 0 {
            return Err(Refusal::invalid("name", "has already been taken").into());
        }
        if let Some(ext) = &new.external_id {
            external_id_free(c, ext)?;
        }
        let id = diesel::insert_into(users::table)
            .values((
                users::name.eq(name),
                users::name_key.eq(name.to_lowercase()),
                users::community_member.eq(new.community_member as i32),
                users::admin.eq(new.admin as i32),
                users::external_id.eq(&new.external_id),
                users::inserted_at.eq(now_ms()),
            ))
            .returning(users::id)
            .get_result::<i64>(c)?;
        let token = insert_token(c, id)?;
        Ok((
            User {
                id,
                name: name.to_owned(),
                community_member: new.community_member,
                admin: new.admin,
            },
            token,
        ))
    })
}

fn check_external_id(ext: &str) -> Result<(), StoreError> {
    if ext.trim().is_empty() || ext.len() > 255 {
        return Err(Refusal::invalid("external_id", "must be 1-255 bytes, not blank").into());
    }
    Ok(())
}

fn external_id_free(c: &mut DbConnection, ext: &str) -> Result<(), StoreError> {
    let taken = users::table
        .filter(users::external_id.eq(ext))
        .count()
        .get_result::<i64>(c)?;
    if taken > 0 {
        return Err(Refusal::invalid("external_id", "has already been taken").into());
    }
    Ok(())
}

/// Gives an existing user (by name, any case) an external id, unique as given.
pub fn set_external_id(c: &mut DbConnection, name: &str, ext: &str) -> Result<(), StoreError> {
    check_external_id(ext)?;
    c.transaction(|c| {
        let user = user_by_name(c, name)?.ok_or(Refusal::NotFound)?;
        external_id_free(c, ext)?;
        diesel::update(users::table.find(user.id))
            .set(users::external_id.eq(ext))
            .execute(c)?;
        Ok(())
    })
}

fn insert_token(c: &mut DbConnection, user_id: i64) -> Result<String, StoreError> {
    let token = new_token();
    diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::user_id.eq(user_id),
            api_tokens::token_hash.eq(hash_token(&token)),
            api_tokens::inserted_at.eq(now_ms()),
        ))
        .execute(c)?;
    Ok(token)
}

/// A new token for an existing user (by name, any case).
pub fn create_token(c: &mut DbConnection, name: &str) -> Result<String, StoreError> {
    let user = user_by_name(c, name)?.ok_or(Refusal::NotFound)?;
    insert_token(c, user.id)
}

/// Revokes a token; false if it was unknown or already revoked. Revocations are numbered in
/// commit order, so a watcher that has seen number N has seen every revocation before it: one
/// statement takes the next number (SQLite runs it under its write lock, waiting out other
/// writers, even of other processes); on PostgreSQL a transaction-scoped advisory lock
/// serializes them first.
pub fn revoke_token(c: &mut DbConnection, token: &str) -> Result<bool, StoreError> {
    const REVOKE: &str = "UPDATE api_tokens SET revoked_at = {at}, \
         revoked_seq = (SELECT COALESCE(MAX(revoked_seq), 0) + 1 FROM api_tokens) \
         WHERE token_hash = {hash} AND revoked_at IS NULL";
    let (at, hash) = (now_ms(), hash_token(token));
    let n = match c {
        DbConnection::Sqlite(c) => {
            diesel::sql_query(REVOKE.replace("{at}", "?").replace("{hash}", "?"))
                .bind::<BigInt, _>(at)
                .bind::<Text, _>(&hash)
                .execute(c)?
        }
        DbConnection::Postgres(c) => c.transaction(|c| {
            diesel::sql_query("SELECT pg_advisory_xact_lock(7461726576)").execute(c)?;
            diesel::sql_query(REVOKE.replace("{at}", "$1").replace("{hash}", "$2"))
                .bind::<BigInt, _>(at)
                .bind::<Text, _>(&hash)
                .execute(c)
        })?,
    };
    Ok(n > 0)
}

pub fn user_by_name(c: &mut DbConnection, name: &str) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .filter(users::name_key.eq(name.to_lowercase()))
        .select(USER_COLUMNS)
        .first::<UserRow>(c)
        .optional()?
        .map(to_user))
}

pub fn user_by_id(c: &mut DbConnection, id: i64) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .find(id)
        .select(USER_COLUMNS)
        .first::<UserRow>(c)
        .optional()?
        .map(to_user))
}

/// The user of a live (not revoked) token, and the token's id.
pub fn user_by_token(c: &mut DbConnection, token: &str) -> Result<Option<(User, i64)>, StoreError> {
    Ok(api_tokens::table
        .inner_join(users::table)
        .filter(api_tokens::token_hash.eq(hash_token(token)))
        .filter(api_tokens::revoked_at.is_null())
        .select((USER_COLUMNS, api_tokens::id))
        .first::<(UserRow, i64)>(c)
        .optional()?
        .map(|(u, t)| (to_user(u), t)))
}

/// A user's external id, if they have one.
pub fn external_id(c: &mut DbConnection, user_id: i64) -> Result<Option<String>, StoreError> {
    Ok(users::table
        .find(user_id)
        .select(users::external_id)
        .first::<Option<String>>(c)
        .optional()?
        .flatten())
}

/// The user a foreign token's subject names: the user whose external id it is, and no one else.
/// Fawkes's own ids are never matched: a Phoenix app's user 2 is not Fawkes's user 2, and a
/// number that names no one's external id is refused like an unknown token.
pub fn user_by_subject(
    c: &mut DbConnection,
    subject: &Subject,
) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .filter(users::external_id.eq(subject.to_string()))
        .select(USER_COLUMNS)
        .first::<UserRow>(c)
        .optional()?
        .map(to_user))
}

/// Who signed in with a token, and the socket id their sockets get.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    /// `api_token:<id>` for an API token (revoking it closes the sockets);
    /// `users_socket:<subject>` for a Phoenix.Token or JWT, the id a Phoenix app gives its
    /// user sockets, so the app's `Endpoint.broadcast("users_socket:42", "disconnect", %{})`
    /// applies.
    pub socket_id: String,
    /// What the token said, for an app's backend (see `apps::proxy`): its `kind`
    /// (`phoenix_token`, `jwt`, `api_token`) and, for a token minted by the app, the `sub`ject
    /// it named (the user's id in the app).
    pub claims: serde_json::Value,
}

/// Why a token did not sign anyone in.
#[derive(Debug)]
pub enum SignInError {
    /// Unknown, revoked, expired, badly signed: the reason is for the log only.
    Refused(String),
    Store(StoreError),
}

/// Signs in with any token this server accepts: a Phoenix.Token or JWT when configured
/// (checked without the database), else an API token. Logs why a token is refused, never the
/// token itself.
pub async fn sign_in(
    auth: &Verifiers,
    store: &Store,
    token: String,
) -> Result<SignedIn, SignInError> {
    let refused = |why: String| {
        log::info!("sign-in refused: {why}");
        SignInError::Refused(why)
    };
    match auth.verify(&token, now_ms()) {
        Verdict::Refused { kind, why } => Err(refused(format!("{kind} {why}"))),
        Verdict::Valid { kind, subject } => {
            let s = subject.clone();
            let user = store
                .run(move |c| user_by_subject(c, &s))
                .await
                .map_err(SignInError::Store)?;
            match user {
                Some(user) => Ok(SignedIn {
                    user,
                    socket_id: format!("users_socket:{subject}"),
                    claims: json!({
                        "kind": if kind == "JWT" { "jwt" } else { "phoenix_token" },
                        "sub": match &subject {
                            Subject::Int(i) => json!(i),
                            Subject::Str(s) => json!(s),
                        },
                    }),
                }),
                None => Err(refused(format!("{kind} names no known user ({subject})"))),
            }
        }
        Verdict::NotMine => {
            let found = store
                .run(move |c| user_by_token(c, &token))
                .await
                .map_err(SignInError::Store)?;
            match found {
                Some((user, token_id)) => Ok(SignedIn {
                    user,
                    socket_id: token_socket_id(token_id),
                    claims: json!({"kind": "api_token"}),
                }),
                None => Err(refused("unknown or revoked API token".into())),
            }
        }
    }
}

/// Tokens revoked after revocation number `since`, with their numbers, in order.
pub fn revoked_since(c: &mut DbConnection, since: i64) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(api_tokens::table
        .filter(api_tokens::revoked_seq.gt(since))
        .order(api_tokens::revoked_seq)
        .select((api_tokens::id, api_tokens::revoked_seq.assume_not_null()))
        .load::<(i64, i64)>(c)?)
}

/// The number of the latest revocation (0 for none).
pub fn last_revocation(c: &mut DbConnection) -> Result<i64, StoreError> {
    Ok(api_tokens::table
        .select(diesel::dsl::max(api_tokens::revoked_seq))
        .first::<Option<i64>>(c)?
        .unwrap_or(0))
}

pub fn set_community_member(
    c: &mut DbConnection,
    user_id: i64,
    member: bool,
) -> Result<(), StoreError> {
    diesel::update(users::table.find(user_id))
        .set(users::community_member.eq(member as i32))
        .execute(c)?;
    Ok(())
}

/// Closes the live sockets of revoked tokens, including tokens revoked by another process (the
/// CLI): it watches the table, since that is what both share. It follows revocation numbers,
/// not clocks, so none committed after a poll is missed.
pub fn watch_revocations(store: Store, endpoint: Endpoint) {
    crate::task::spawn(async move {
        let mut since = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let Some(from) = since else {
                match store.run(last_revocation).await {
                    Ok(last) => since = Some(last),
                    Err(e) => log::warn!("watching revoked tokens: {e}"),
                }
                continue;
            };
            match store.run(move |c| revoked_since(c, from)).await {
                Ok(revoked) => {
                    for (token_id, seq) in revoked {
                        since = Some(from.max(seq));
                        log::info!("token {token_id} revoked: closing its sockets");
                        endpoint.disconnect(&token_socket_id(token_id));
                    }
                }
                Err(e) => log::warn!("watching revoked tokens: {e}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(new_token().len(), 43);
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn names_are_mentionable() {
        assert!(valid_name("alice"));
        assert!(valid_name("Bob_1.x-y"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("@at"));
        assert!(!valid_name(&"a".repeat(33)));
    }
}
