//! Supabase's clients, unmodified, against `fawkes serve --supabase-jwt-secret`: the real npm
//! packages (`@supabase/supabase-js` 2.119 with realtime-js's V2 binary broadcasts, and
//! realtime-js 2.90.1, V1 JSON) drive `protocol_tests/js/test/supabase/*.test.js` over real
//! sockets, on one node and on two nodes sharing a real redis-server. The keys they use come
//! from `fawkes supabase keys`, as a newcomer would get them.

mod support;

use std::path::Path;
use std::process::Command;

const SECRET: &str = "a-supabase-project-jwt-secret-of-32-bytes-or-more";

fn supabase_cli(args: &[&str]) -> String {
    support::supabase_cli(SECRET, args)
}

fn keys() -> (String, String) {
    support::supabase_keys(SECRET)
}

/// The rules the suites expect: each user's own `room-<sub>`, and `staff-*` that staff read
/// and only the service_role key writes.
const RULES: &str = r#"
["room-{sub}"]
read = "authenticated"
write = "authenticated"
presence = "authenticated"

["staff-*"]
read = ["staff"]
write = "service_role"
presence = "service_role"
"#;

fn serve(dir: &Path, extra: &[&str]) -> support::Serve {
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let db = dir.join("fawkes.db");
    let mut args = vec![];
    // A database of the dir's own unless `extra` names one.
    if !extra.contains(&"--database-url") {
        args.extend(["--database-url", db.to_str().unwrap()]);
    }
    args.extend([
        "--supabase-jwt-secret",
        SECRET,
        "--realtime-rules",
        "rules.toml",
        "--realtime-max-payload-bytes",
        "4096",
        "--realtime-events-per-second",
        "50",
    ]);
    args.extend_from_slice(extra);
    support::Serve::start(dir, &args)
}

fn envs(anon: &str, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FAWKES_SUPABASE_SECRET", SECRET.to_owned()),
        ("FAWKES_ANON_KEY", anon.to_owned()),
        ("FAWKES_SERVICE_KEY", service.to_owned()),
    ]
}

#[test]
fn supabase_clients_against_fawkes_serve() {
    let dir = support::temp_dir("supabase");
    let server = serve(&dir, &[]);
    let (anon, service) = keys();
    let mut env = envs(&anon, &service);
    env.push(("FAWKES_SUPABASE_URL", server.url()));
    support::node_test("test/supabase/realtime.test.js", &env, 15);
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn supabase_clients_on_two_nodes_over_redis() {
    let redis = support::Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let dir = support::temp_dir("supabase-cluster");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let node = |dir: &Path, name: &str| {
        let args = [
            "--redis-url",
            url.as_str(),
            "--node-name",
            name,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        serve(dir, &args)
    };
    let (a, b) = (node(&dir_a, "a"), node(&dir_b, "b"));
    support::wait_linked(&a);
    support::wait_linked(&b);
    let (anon, service) = keys();
    let mut env = envs(&anon, &service);
    env.push(("FAWKES_SUPABASE_URL_A", a.url()));
    env.push(("FAWKES_SUPABASE_URL_B", b.url()));
    support::node_test("test/supabase/cluster.test.js", &env, 4);
}

/// `postgres_changes` on the Fawkes collections, written through REST, on `db`.
fn collections_suite(name: &str, db: &str) {
    let dir = support::temp_dir(name);
    std::fs::write(dir.join("collections.toml"), "[secret]\nlist = \"auth\"\n").unwrap();
    let writer = support::create_user(&dir, db, &["--name", "writer"]);
    let server = serve(
        &dir,
        &[
            "--database-url",
            db,
            "--collection-rules",
            "collections.toml",
        ],
    );
    let (anon, service) = keys();
    let mut env = envs(&anon, &service);
    env.push(("FAWKES_SUPABASE_URL", server.url()));
    env.push(("FAWKES_WRITER_TOKEN", writer));
    support::node_test("test/supabase/collections.test.js", &env, 3);
}

#[test]
fn postgres_changes_of_the_collections_on_sqlite() {
    let dir = support::temp_dir("supabase-collections-db");
    let db = dir.join("fawkes.db");
    collections_suite("supabase-collections-sqlite", db.to_str().unwrap());
}

#[test]
fn postgres_changes_of_the_collections_on_postgres() {
    let db = support::fresh_postgres("supabase_collections");
    collections_suite("supabase-collections-pg", &db);
}

/// `fawkes supabase token` prints a user token the server takes, and the CLI refuses to sign
/// without a secret.
#[test]
fn the_cli_signs_keys_and_user_tokens_with_the_project_secret() {
    let token = supabase_cli(&["token", "--sub", "alice", "--ttl", "60"]);
    let token = token.lines().last().unwrap();
    let project = fawkes::auth::supabase::ProjectKeys::new(SECRET.as_bytes()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = project.verify(token, now).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["role"], "authenticated");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((now + 59..=now + 61).contains(&exp), "exp {exp}, now {now}");
    let (anon, service) = keys();
    assert_eq!(project.verify(&anon, now).unwrap()["role"], "anon");
    assert_eq!(
        project.verify(&service, now).unwrap()["role"],
        "service_role"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["supabase", "keys"])
        .env_remove("FAWKES_SUPABASE_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--supabase-jwt-secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
