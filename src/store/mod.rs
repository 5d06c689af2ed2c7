//! The database: one Diesel connection type over SQLite (embedded, the default) and PostgreSQL,
//! an r2d2 pool, and migrations embedded in the binary, one set per backend.
//!
//! [`cdc`]: change capture, the committed changes of the app's own PostgreSQL tables from a
//! logical replication slot.
//!
//! Diesel calls block, so [`Store::run`] runs them on actix's blocking thread pool, never on a
//! worker thread. SQLite runs in WAL mode with `synchronous=FULL`: a commit is on disk when it
//! returns, so a `201 Created` survives a crash.

pub mod cdc;
pub mod schema;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "fawkes.db";

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

pub type Conn = PooledConnection<ConnectionManager<DbConnection>>;

/// A store error: a database failure, or the app's own "not found"/"forbidden" decided inside a
/// transaction (which rolls it back).
#[derive(Debug)]
pub enum StoreError {
    Db(diesel::result::Error),
    Pool(String),
    /// Too much work already waiting: refused at once rather than queued without bound.
    Busy(String),
    /// A write refused on purpose (rolled back): what the caller asked for, not what failed.
    Refused(Refusal),
}

/// Why a write was refused on purpose. The store knows no transport: the REST layer and the
/// channels each turn it into their own answer (a status, an error reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Forbidden,
    Unauthorized,
    /// The request itself is wrong, and why.
    Malformed(String),
    /// Fields, and what is wrong with each.
    Invalid(Vec<(String, String)>),
}

impl Refusal {
    pub fn invalid(field: &str, message: impl Into<String>) -> Refusal {
        Refusal::Invalid(vec![(field.to_owned(), message.into())])
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFound => f.write_str("not found"),
            Refusal::Forbidden => f.write_str("forbidden"),
            Refusal::Unauthorized => f.write_str("unauthorized"),
            Refusal::Malformed(why) => f.write_str(why),
            Refusal::Invalid(fields) => {
                let all: Vec<String> = fields.iter().map(|(k, m)| format!("{k} {m}")).collect();
                f.write_str(&all.join(", "))
            }
        }
    }
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        StoreError::Refused(r)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "database: {e}"),
            StoreError::Pool(e) => write!(f, "database pool: {e}"),
            StoreError::Busy(e) => write!(f, "busy: {e}"),
            StoreError::Refused(r) => write!(f, "{r}"),
        }
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        StoreError::Db(e)
    }
}

/// Numbers writes in the order they commit: a write that asks for a number commits under this
/// lock and takes the next number before letting go, so the numbers follow the commits while
/// the transactions themselves run side by side. Only the commit is serialized.
#[derive(Debug, Default)]
pub struct CommitOrder(Mutex<u64>);

/// A pool of connections to one database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<DbConnection>>,
    /// SQLite: one writing transaction at a time in this process. A transaction that reads
    /// before it writes cannot then be refused its write because another one committed
    /// in between (SQLite's BUSY_SNAPSHOT); PostgreSQL locks rows instead. Awaited before the
    /// job takes a blocking thread: writers in line hold no thread (the workers have only so
    /// many, `Server::blocking_threads`), and so never keep reads from running.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite settings every pooled connection needs.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        if let DbConnection::Sqlite(c) = conn {
            // One statement per query: SQLite prepares only the first of a batch.
            for pragma in [
                "PRAGMA busy_timeout = 10000",
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = FULL",
                "PRAGMA foreign_keys = ON",
            ] {
                diesel::sql_query(pragma)
                    .execute(c)
                    .map_err(diesel::r2d2::Error::QueryError)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates. `postgres://` or `postgresql://`
    /// selects PostgreSQL; anything else is a SQLite path (`sqlite://` prefix optional).
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            (Backend::Sqlite, path.to_owned())
        };
        let manager = ConnectionManager::<DbConnection>::new(url);
        let mut builder = Pool::builder().connection_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // SQLite takes one writer at a time; a few connections serve reads beside it.
            builder = builder
                .max_size(4)
                .connection_customizer(Box::new(SqlitePragmas));
        } else {
            builder = builder.max_size(16);
        }
        let pool = builder
            .build(manager)
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let write_lock =
            (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let store = Store { pool, write_lock };
        store.migrate()?;
        Ok(store)
    }

    /// Applies pending migrations; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let ran = match &mut *conn {
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
            DbConnection::Postgres(c) => c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.len()),
        }
        .map_err(|e| StoreError::Pool(format!("migrations: {e}")))?;
        if ran > 0 {
            log::info!("ran {ran} database migration(s)");
        }
        Ok(ran)
    }

    /// A pooled connection, for blocking code (the CLI, or inside [`Store::run`]).
    pub fn conn(&self) -> Result<Conn, StoreError> {
        let start = std::time::Instant::now();
        let conn = self.pool.get().map_err(|e| StoreError::Pool(e.to_string()));
        crate::metrics::observe(&crate::metrics::DB_POOL_WAIT, start.elapsed());
        conn
    }

    /// Runs blocking database work off the async executor.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        actix_web::web::block(move || {
            let mut conn = store.conn()?;
            let start = std::time::Instant::now();
            let result = f(&mut conn);
            crate::metrics::observe(&crate::metrics::DB_QUERY, start.elapsed());
            result
        })
        .await
        .map_err(|e| StoreError::Pool(format!("blocking pool: {e}")))?
    }

    /// Runs reads in one transaction off the async executor: they all see the same commit
    /// (REPEATABLE READ on PostgreSQL; a SQLite transaction reads one snapshot).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |c| {
            c.transaction(|c| {
                if let DbConnection::Postgres(pg) = c {
                    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        .execute(pg)?;
                }
                f(c)
            })
        })
        .await
    }

    /// Runs a writing transaction off the async executor: committed when it returns `Ok`,
    /// rolled back otherwise.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer(move |c| write_transaction(c, f)).await
    }

    /// Runs `job` (which makes its own transaction) as the one writer of this process on
    /// SQLite, off the async executor.
    async fn writer<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        // The write lock first, then a thread and a connection: writers in line hold neither,
        // so reads (sign-ins among them) always find both.
        let one_writer = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let store = self.clone();
        actix_web::web::block(move || {
            let _one_writer = one_writer;
            let mut conn = store.conn()?;
            let start = std::time::Instant::now();
            let result = job(&mut conn);
            crate::metrics::observe(&crate::metrics::DB_QUERY, start.elapsed());
            result
        })
        .await
        .map_err(|e| StoreError::Pool(format!("blocking pool: {e}")))?
    }
}

impl Store {
    /// [`Store::write`] for a write whose effects must leave in commit order: `f` returns its
    /// value and whether it needs a number; such a write commits under `order`'s lock and gets
    /// the next number (1, 2, 3, ...) with its value.
    pub async fn write_numbered<T, F>(
        &self,
        order: Arc<CommitOrder>,
        f: F,
    ) -> Result<(T, Option<u64>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<(T, bool), StoreError> + Send + 'static,
    {
        self.writer(move |c| {
            // The guard leaves the transaction with its value: the commit happens under it.
            let (value, guard) = write_transaction(c, |c| {
                let (value, numbered) = f(c)?;
                let guard = numbered.then(|| order.0.lock().unwrap_or_else(|e| e.into_inner()));
                Ok((value, guard))
            })?;
            let number = guard.map(|mut last| {
                *last += 1;
                *last
            });
            Ok((value, number))
        })
        .await
    }
}

fn sqlite(c: &mut DbConnection) -> Option<&mut SqliteConnection> {
    match c {
        DbConnection::Sqlite(s) => Some(s),
        DbConnection::Postgres(_) => None,
    }
}

/// A writing transaction. On SQLite it begins `BEGIN IMMEDIATE`: it takes the database's
/// write lock at once, waiting out another process's writer (busy_timeout), instead of at its
/// first write, where a commit by another process in between fails it with "database is
/// locked". Nested `transaction` calls inside `f` become savepoints, as usual.
fn write_transaction<T>(
    c: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    type Manager = AnsiTransactionManager;
    let Some(s) = sqlite(c) else {
        return c.transaction(f);
    };
    Manager::begin_transaction_sql(s, "BEGIN IMMEDIATE")?;
    let result = f(c);
    let Some(s) = sqlite(c) else {
        return result;
    };
    match result {
        Ok(v) => {
            <Manager as TransactionManager<SqliteConnection>>::commit_transaction(s)?;
            Ok(v)
        }
        Err(e) => {
            let _ = <Manager as TransactionManager<SqliteConnection>>::rollback_transaction(s);
            Err(e)
        }
    }
}

/// Whether JSON holds U+0000 in a string or a key. PostgreSQL's `text` and `jsonb` cannot hold
/// it (a `data::jsonb` cast fails on `\u0000`), so writers refuse it on both backends alike.
pub fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Why a string holding U+0000 is refused (see [`holds_nul`]).
pub const NUL_REFUSED: &str = "must not contain the NUL character (\\u0000)";

/// Milliseconds since the UNIX epoch: how times are stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stored time as ISO-8601 UTC with milliseconds, how the API shows times.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers queued for SQLite's write lock hold no pooled connection, so a read (a sign-in,
    /// say) never waits for them: eight slow writers, and a pool of four.
    #[actix_rt::test]
    async fn queued_writers_never_starve_reads() {
        let path = std::env::temp_dir().join(format!("fawkes-store-{}.db", std::process::id()));
        let store = Store::open(path.to_str().unwrap()).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                crate::task::spawn(async move {
                    store
                        .write(|_| {
                            std::thread::sleep(Duration::from_millis(300));
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let one: i64 = store
            .run(|c| {
                Ok(
                    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("1"))
                        .get_result(c)?,
                )
            })
            .await
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(one, 1);
        assert!(
            waited < Duration::from_millis(250),
            "the read waited {waited:?}"
        );
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Two stores on one SQLite file are what two processes are (the server and the CLI):
    /// read-then-write transactions from both interleave, and none fails as locked.
    #[actix_rt::test]
    async fn writers_of_two_processes_wait_for_each_other() {
        use crate::store::schema::users;
        let path = std::env::temp_dir().join(format!("fawkes-store2-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let url = path.to_str().unwrap();
        let (a, b) = (Store::open(url).unwrap(), Store::open(url).unwrap());
        let tasks: Vec<_> = [a, b]
            .into_iter()
            .enumerate()
            .flat_map(|(s, store)| {
                (0..10).map(move |i| {
                    let store = store.clone();
                    crate::task::spawn(async move {
                        store
                            .write(move |c| {
                                // Read first, then write: the pattern a deferred transaction
                                // could not upgrade once the other store had committed.
                                let n: i64 = users::table.count().get_result(c)?;
                                std::thread::sleep(Duration::from_millis(5));
                                diesel::insert_into(users::table)
                                    .values((
                                        users::name.eq(format!("u{s}_{i}_{n}")),
                                        users::name_key.eq(format!("u{s}_{i}_{n}")),
                                        users::inserted_at.eq(0),
                                    ))
                                    .execute(c)?;
                                Ok(())
                            })
                            .await
                    })
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let count: i64 = Store::open(url)
            .unwrap()
            .run(|c| Ok(users::table.count().get_result(c)?))
            .await
            .unwrap();
        assert_eq!(count, 20);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn times_render_as_iso_8601_utc_with_milliseconds() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_795_412_442_104), "2026-11-23T05:40:42.104Z");
    }
}
