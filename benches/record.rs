//! What one chat message to a 10,000-member room costs in recorded events: one
//! `unread_updated` per member on its own `user:<id>` stream, in one transaction. Compares
//! recording them one by one (`Recorder::record`, four statements each) with
//! `Recorder::record_all` (five statements in all), on SQLite and, when
//! `FAWKES_TEST_POSTGRES_URL` names a server, PostgreSQL.
//!
//! `cargo bench --bench record`

use criterion::{criterion_group, criterion_main, Criterion};
use fawkes::history::{HistoryConfig, Recorder};
use fawkes::store::{DbConnection, Store, StoreError};
use serde_json::json;

const MEMBERS: usize = 10_000;

fn events() -> Vec<(String, String, serde_json::Value)> {
    (0..MEMBERS)
        .map(|i| {
            let payload = json!({"channel_id": 1, "count": 1});
            (format!("user:{i}"), "unread_updated".to_owned(), payload)
        })
        .collect()
}

fn one_by_one(c: &mut DbConnection, config: &HistoryConfig) -> Result<(), StoreError> {
    let mut rec = Recorder::new(config);
    for (topic, event, payload) in events() {
        rec.record(c, &topic, &event, payload)?;
    }
    Ok(())
}

fn all_at_once(c: &mut DbConnection, config: &HistoryConfig) -> Result<(), StoreError> {
    Recorder::new(config).record_all(c, events())?;
    Ok(())
}

fn stores() -> Vec<(&'static str, Store)> {
    let dir = std::env::temp_dir().join(format!("fawkes-bench-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = vec![(
        "sqlite",
        Store::open(dir.join("bench.db").to_str().unwrap()).unwrap(),
    )];
    if let Ok(admin) = std::env::var("FAWKES_TEST_POSTGRES_URL") {
        use diesel::{Connection, RunQueryDsl};
        let mut c = diesel::PgConnection::establish(&admin).unwrap();
        let name = format!("fawkes_bench_record_{}", std::process::id());
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut c)
            .unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        out.push(("postgres", Store::open(&format!("{base}/{name}")).unwrap()));
    }
    out
}

fn record(c: &mut Criterion) {
    let config = HistoryConfig::default();
    let rt = actix_rt::System::new();
    let mut group = c.benchmark_group("record_10000_members");
    group.sample_size(10);
    for (backend, store) in stores() {
        for (how, f) in [
            ("one_by_one", one_by_one as fn(&mut _, &_) -> _),
            ("record_all", all_at_once),
        ] {
            group.bench_function(format!("{backend}/{how}"), |b| {
                b.iter(|| {
                    let (store, config) = (store.clone(), config.clone());
                    rt.block_on(store.write(move |c| f(c, &config))).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
