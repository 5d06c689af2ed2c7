//! Following one table's changes, for both kinds of follower (supabase-js `postgres_changes`
//! subscriptions, phoenix.js `postgres:` topics): where a table's changes are broadcast, whether
//! a token may follow them, and whether row-level security lets it see one change.

use super::changes::{Change, Kind, Subscription};
use super::{collections, rls, Realtime};
use crate::auth::supabase::Claims;
use crate::store::{cdc, DbConnection, Store};
use serde_json::Value;

/// A table a token may follow.
pub struct Target {
    /// The topic its changes are broadcast on.
    pub topic: String,
    /// `schema.table`.
    pub table: String,
    /// Row-level security is on (and the token is not the service_role key): each change is
    /// checked.
    pub rls: bool,
}

/// Where `s`'s changes come from, if a token with `role` may follow them: a table
/// `--cdc-tables` covers (the role must have `SELECT` on it, and a filter name one of its
/// columns), else a Fawkes collection (schema `public`).
pub async fn target(rt: &Realtime, s: &Subscription, role: &str) -> Result<Target, String> {
    let table = s
        .table
        .as_deref()
        .ok_or_else(|| "a table is required (this server follows tables one by one)".to_owned())?;
    let name = format!("{}.{table}", s.schema);
    if cdc::covers(&rt.cdc_tables, &s.schema, table) {
        let store = rt.store.clone().ok_or("change capture has no database")?;
        let column = s.filter.as_ref().map(|f| f.column.clone());
        let rls = may_select(store, role, &s.schema, table, column).await?;
        return Ok(Target {
            topic: cdc::topic(&s.schema, table),
            table: name,
            rls: rls && role != "service_role",
        });
    }
    if s.schema != collections::SCHEMA {
        return Err(format!(
            "schema {:?}: this server serves the Fawkes collections, in schema {:?}, and the tables --cdc-tables names",
            s.schema,
            collections::SCHEMA
        ));
    }
    collections::may_follow(&rt.collection_rules, table, role)?;
    Ok(Target {
        topic: collections::topic(table),
        table: name,
        rls: false,
    })
}

/// Whether a follower with `claims` may see a captured change of a table whose row-level
/// security is `rls` (always without it, and for a delete, as in Supabase).
pub async fn visible(
    rt: &Realtime,
    rls: bool,
    change: &Change,
    data: &Value,
    claims: &Claims,
) -> bool {
    if !rls || change.kind == Kind::Delete {
        return true;
    }
    let (Some(checks), Some(id), Some(key)) = (
        &rt.row_security,
        data.get("_id").and_then(Value::as_str),
        data.get("_key").and_then(Value::as_array),
    ) else {
        return false;
    };
    let row = rls::Row {
        id,
        schema: &change.schema,
        table: &change.table,
        key,
    };
    checks.visible(&row, claims).await
}

/// Whether PostgreSQL lets `role` read `schema.table` (the service_role key always may), as a
/// follower of its changes must, and has `column` if a filter names one; `Ok` says whether
/// row-level security is on (then each change is checked, see [`rls`]).
async fn may_select(
    store: Store,
    role: &str,
    schema: &str,
    table: &str,
    column: Option<String>,
) -> Result<bool, String> {
    use diesel::sql_types::{Bool, Text};
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Access {
        #[diesel(sql_type = Bool)]
        rls: bool,
        #[diesel(sql_type = Bool)]
        may: bool,
        #[diesel(sql_type = Bool)]
        has_column: bool,
    }
    let (r, s, t) = (role.to_owned(), schema.to_owned(), table.to_owned());
    let col = column.clone().unwrap_or_default();
    let found = store
        .read(move |c| {
            let DbConnection::Postgres(pg) = c else {
                return Ok(Err("change capture needs PostgreSQL".to_owned()));
            };
            let q = diesel::sql_query(
                "SELECT c.relrowsecurity AS rls, \
                 CASE WHEN $1 = 'service_role' THEN true \
                      ELSE has_table_privilege($1, c.oid, 'SELECT') END AS may, \
                 ($4 = '' OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                      AND a.attname = $4 AND a.attnum > 0 AND NOT a.attisdropped)) AS has_column \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $2 AND c.relname = $3",
            )
            .bind::<Text, _>(&r)
            .bind::<Text, _>(&s)
            .bind::<Text, _>(&t)
            .bind::<Text, _>(&col)
            .load::<Access>(pg);
            Ok(q.map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| format!("checking {schema}.{table}: {e:?}"))??;
    match found.first() {
        None => Err(format!("no table {schema}.{table}")),
        Some(a) if !a.may => Err(format!(
            "role {role:?} may not SELECT from {schema}.{table}"
        )),
        Some(a) if !a.has_column => Err(format!(
            "the filter's column {:?} is not a column of {schema}.{table}",
            column.unwrap_or_default()
        )),
        Some(a) => Ok(a.rls),
    }
}
