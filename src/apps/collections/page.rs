//! One page of a collection's records, sorted, counted and sliced in the database: a list never
//! loads the whole collection.

use super::render;
use crate::store::{DbConnection, StoreError};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use serde_json::Value;

/// How a list is sorted: by a top-level field (`created`, `updated` and `id` are the record's
/// own), ascending or descending. Ties keep creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub field: String,
    pub desc: bool,
}

impl Sort {
    /// `field`, `+field` or `-field`; a field is letters, digits and `_`.
    pub fn parse(s: &str) -> Option<Sort> {
        let (desc, field) = match s.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let ok = !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        ok.then(|| Sort {
            field: field.to_owned(),
            desc,
        })
    }
}

/// A page: the records in it and how many there are in all.
pub struct Page {
    pub total: i64,
    pub items: Vec<Value>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    data: String,
    #[diesel(sql_type = BigInt)]
    created: i64,
    #[diesel(sql_type = BigInt)]
    updated: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The ORDER BY for a sort. A JSON field's values order the same way on both databases:
/// missing and null first, then booleans (false, true), numbers, strings (by their bytes), and
/// arrays and objects (by their text). `sort.field` is letters, digits and `_` only
/// ([`Sort::parse`]), which is what makes it safe inside the SQL text.
fn order_by(dialect: Dialect, sort: &Sort) -> String {
    let dir = if sort.desc { "DESC" } else { "ASC" };
    let (id, tie) = match dialect {
        Dialect::Sqlite => ("id", "created ASC, id ASC"),
        Dialect::Postgres => ("id COLLATE \"C\"", "created ASC, id COLLATE \"C\" ASC"),
    };
    let f = sort.field.as_str();
    match f {
        "created" | "updated" => format!("{f} {dir}, {tie}"),
        "id" => format!("{id} {dir}, {tie}"),
        _ => match dialect {
            Dialect::Sqlite => {
                let t = format!("json_type(data, '$.\"{f}\"')");
                let v = format!("json_extract(data, '$.\"{f}\"')");
                format!(
                    "CASE {t} WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'integer' THEN 2 \
                     WHEN 'real' THEN 2 WHEN 'text' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 4 \
                     ELSE 0 END {dir}, \
                     CASE {t} WHEN 'true' THEN 1 WHEN 'false' THEN 0 WHEN 'integer' THEN {v} \
                     WHEN 'real' THEN {v} END {dir}, \
                     CASE {t} WHEN 'text' THEN {v} WHEN 'array' THEN {v} WHEN 'object' THEN {v} END {dir}, \
                     {tie}"
                )
            }
            Dialect::Postgres => {
                let j = format!("(data::jsonb -> '{f}')");
                let t = format!("jsonb_typeof{j}");
                format!(
                    "CASE {t} WHEN 'boolean' THEN 1 WHEN 'number' THEN 2 WHEN 'string' THEN 3 \
                     WHEN 'array' THEN 4 WHEN 'object' THEN 4 ELSE 0 END {dir}, \
                     CASE {t} WHEN 'boolean' THEN (CASE WHEN {j} = 'true'::jsonb THEN 1 ELSE 0 END)::numeric \
                     WHEN 'number' THEN ({j} #>> '{{}}')::numeric END {dir}, \
                     (CASE {t} WHEN 'string' THEN {j} #>> '{{}}' WHEN 'array' THEN {j}::text \
                     WHEN 'object' THEN {j}::text END) COLLATE \"C\" {dir}, \
                     {tie}"
                )
            }
        },
    }
}

/// Records `offset..offset + limit` of `collection` in `sort` order, only `only_owner`'s when
/// given, and the total.
pub fn page(
    c: &mut DbConnection,
    collection: &str,
    only_owner: Option<i64>,
    sort: &Sort,
    limit: i64,
    offset: i64,
) -> Result<Page, StoreError> {
    let (dialect, p) = match c {
        DbConnection::Sqlite(_) => (Dialect::Sqlite, ["?", "?", "?", "?", "?"]),
        DbConnection::Postgres(_) => (Dialect::Postgres, ["$1", "$2", "$2", "$3", "$4"]),
    };
    // SQLite numbers `?` in order; PostgreSQL reuses `$2`.
    let filter = format!(
        "FROM collection_records WHERE collection = {} AND ({} IS NULL OR owner = {})",
        p[0], p[1], p[2]
    );
    let count_sql = format!("SELECT COUNT(*) AS n {filter}");
    let rows_sql = format!(
        "SELECT id, data, created, updated {filter} ORDER BY {} LIMIT {} OFFSET {}",
        order_by(dialect, sort),
        p[3],
        p[4]
    );
    let (total, rows) = match c {
        DbConnection::Sqlite(c) => {
            let total = diesel::sql_query(count_sql)
                .bind::<Text, _>(collection)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .get_result::<Count>(c)?
                .n;
            let rows = diesel::sql_query(rows_sql)
                .bind::<Text, _>(collection)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .bind::<BigInt, _>(limit)
                .bind::<BigInt, _>(offset)
                .load::<Row>(c)?;
            (total, rows)
        }
        DbConnection::Postgres(c) => {
            let total = diesel::sql_query(count_sql)
                .bind::<Text, _>(collection)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .get_result::<Count>(c)?
                .n;
            let rows = diesel::sql_query(rows_sql)
                .bind::<Text, _>(collection)
                .bind::<Nullable<BigInt>, _>(only_owner)
                .bind::<BigInt, _>(limit)
                .bind::<BigInt, _>(offset)
                .load::<Row>(c)?;
            (total, rows)
        }
    };
    let items = rows
        .iter()
        .map(|r| render(&r.id, &r.data, r.created, r.updated))
        .collect();
    Ok(Page { total, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_parse_to_safe_field_names() {
        let s = |desc, f: &str| {
            Some(Sort {
                field: f.into(),
                desc,
            })
        };
        assert_eq!(Sort::parse("created"), s(false, "created"));
        assert_eq!(Sort::parse("-price"), s(true, "price"));
        assert_eq!(Sort::parse("+name_2"), s(false, "name_2"));
        for bad in ["", "-", "a;b", "a'b", "a.b", "--x", "a b", "é"] {
            assert_eq!(Sort::parse(bad), None, "{bad}");
        }
    }
}
