//! Row-level security for captured changes, as Supabase checks it: a follower gets an insert or
//! update of a table with RLS on only if, running as its token's `role` with
//! `request.jwt.claims` set to its claims, it can select the row (by primary key) now. Policies
//! written over those settings (`auth.uid()`-style functions) work unchanged.
//!
//! Checks are batched per change: the followers that ask about one change within a moment
//! share one database transaction, one query per distinct set of claims, however many
//! channels asked. Deletes are not checked (the row is gone), as in Supabase.

use crate::auth::supabase::{role, Claims};
use crate::store::{DbConnection, Store, StoreError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long the first asker of a change waits for the others before the batch runs.
const GATHER: Duration = Duration::from_millis(2);

/// One change's row, as capture broadcasts its key.
pub struct Row<'a> {
    /// Capture's id of the change (its LSN and place in the transaction).
    pub id: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    /// `{name, type, value}` of each primary-key column.
    pub key: &'a [Value],
}

type Verdicts = Arc<HashMap<String, bool>>;

struct Batch {
    /// Distinct claims (as JSON text) asked about so far.
    asks: Vec<String>,
    done: watch::Receiver<Option<Verdicts>>,
}

/// The checks of one server.
pub struct RowSecurity {
    store: Store,
    batches: Mutex<HashMap<String, Batch>>,
}

impl RowSecurity {
    pub fn new(store: Store) -> RowSecurity {
        RowSecurity {
            store,
            batches: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `claims` may see `row`. A failed check is a no (logged).
    pub async fn visible(self: &Arc<Self>, row: &Row<'_>, claims: &Claims) -> bool {
        let asked = Value::Object(claims.clone()).to_string();
        let mut done = {
            let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            match batches.get_mut(row.id) {
                Some(b) => {
                    if !b.asks.contains(&asked) {
                        b.asks.push(asked.clone());
                    }
                    b.done.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    batches.insert(
                        row.id.to_owned(),
                        Batch {
                            asks: vec![asked.clone()],
                            done: rx.clone(),
                        },
                    );
                    let this = self.clone();
                    let (id, sql) = (row.id.to_owned(), select_by_key(row));
                    let key: Vec<Value> = row.key.to_vec();
                    crate::task::spawn(async move {
                        tokio::time::sleep(GATHER).await;
                        let asks = {
                            let mut b = this.batches.lock().unwrap_or_else(|e| e.into_inner());
                            b.remove(&id).map(|b| b.asks).unwrap_or_default()
                        };
                        let verdicts = this.check(sql, key, asks).await;
                        let _ = tx.send(Some(Arc::new(verdicts)));
                    });
                    rx
                }
            }
        };
        let verdicts = match done.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        verdicts.is_some_and(|v| v.get(&asked).copied().unwrap_or(false))
    }

    /// One transaction: for each claims, become its role with its claims set and look the row up.
    async fn check(
        &self,
        sql: Option<String>,
        key: Vec<Value>,
        asks: Vec<String>,
    ) -> HashMap<String, bool> {
        let Some(sql) = sql else {
            log::error!("row-level security: a change without a primary key cannot be checked");
            return HashMap::new();
        };
        let result = self
            .store
            .read(move |c| {
                let DbConnection::Postgres(pg) = c else {
                    return Ok(HashMap::new());
                };
                let mut out = HashMap::with_capacity(asks.len());
                for claims_text in asks {
                    let claims: Claims = serde_json::from_str(&claims_text).unwrap_or_default();
                    let yes = check_one(pg, &sql, &key, &claims, &claims_text)?;
                    out.insert(claims_text, yes);
                }
                Ok(out)
            })
            .await;
        result.unwrap_or_else(|e| {
            log::error!("row-level security check failed: {e:?}");
            HashMap::new()
        })
    }
}

fn check_one(
    pg: &mut diesel::PgConnection,
    sql: &str,
    key: &[Value],
    claims: &Claims,
    claims_text: &str,
) -> Result<bool, StoreError> {
    use diesel::sql_types::{Bool, Text};
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Yes {
        #[diesel(sql_type = Bool)]
        yes: bool,
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A failing check (a privilege since revoked, say) is a no, and spoils none of the others.
    diesel::sql_query("SAVEPOINT rls").execute(pg)?;
    let seen = (|| -> Result<bool, diesel::result::Error> {
        diesel::sql_query(
            "SELECT set_config('role', $1, true) IS NOT NULL AS yes, \
         set_config('request.jwt.claims', $2, true) IS NOT NULL AS a, \
         set_config('request.jwt.claim.sub', $3, true) IS NOT NULL AS b, \
         set_config('request.jwt.claim.role', $1, true) IS NOT NULL AS c",
        )
        .bind::<Text, _>(role(claims))
        .bind::<Text, _>(claims_text)
        .bind::<Text, _>(sub)
        .execute(pg)?;
        let mut q = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
        for k in key {
            let v = match k.get("value") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            q = q.bind::<Text, _>(v);
        }
        Ok(q.get_result::<Yes>(pg)?.yes)
    })();
    match seen {
        Ok(yes) => {
            diesel::sql_query("RESET ROLE").execute(pg)?;
            diesel::sql_query("RELEASE SAVEPOINT rls").execute(pg)?;
            Ok(yes)
        }
        Err(e) => {
            log::warn!(
                "row-level security: a check as {:?} failed: {e}",
                role(claims)
            );
            diesel::sql_query("ROLLBACK TO SAVEPOINT rls").execute(pg)?;
            Ok(false)
        }
    }
}

/// `SELECT EXISTS (SELECT 1 FROM "schema"."table" WHERE "k" = $1::text::"type" …)`; `None`
/// without a key.
fn select_by_key(row: &Row<'_>) -> Option<String> {
    if row.key.is_empty() {
        return None;
    }
    let conds: Vec<String> = row
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let name = k.get("name").and_then(Value::as_str).unwrap_or_default();
            let ty = k.get("type").and_then(Value::as_str).unwrap_or("text");
            format!("{} = ${}::text::{}", ident(name), i + 1, ident(ty))
        })
        .collect();
    Some(format!(
        "SELECT EXISTS (SELECT 1 FROM {}.{} WHERE {}) AS yes",
        ident(row.schema),
        ident(row.table),
        conds.join(" AND ")
    ))
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_lookup_quotes_every_name() {
        let key = [
            json!({"name": "id", "type": "int8", "value": 7}),
            json!({"name": "a\"b", "type": "text", "value": "x"}),
        ];
        let row = Row {
            id: "0/1#0",
            schema: "public",
            table: "my \"table\"",
            key: &key,
        };
        assert_eq!(
            select_by_key(&row).unwrap(),
            r#"SELECT EXISTS (SELECT 1 FROM "public"."my ""table""" WHERE "id" = $1::text::"int8" AND "a""b" = $2::text::"text") AS yes"#
        );
        assert!(select_by_key(&Row { key: &[], ..row }).is_none());
    }
}
