//! The `fawkes` binary as a newcomer uses it: `users create` prints a token, `serve` with no
//! flags creates its SQLite database and serves it, and a 201 survives SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fawkes(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // A failure's reason is on stderr.
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fawkes serve` with no database flag, waiting until it listens.
fn serve(dir: &Path, port: u16) -> Child {
    serve_with(dir, port, &[])
}

fn serve_with(dir: &Path, port: u16, flags: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--port", &port.to_string()])
        .args(flags)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    child
}

fn http(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_newcomer_creates_a_user_serves_posts_and_loses_nothing_to_sigkill() {
    let dir = std::env::temp_dir().join(format!("fawkes-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (ok, out) = fawkes(
        &dir,
        &["users", "create", "--name", "ann", "--community-member"],
    );
    assert!(ok, "{out}");
    let token = last_line(&out);
    assert_eq!(
        token.len(),
        43,
        "the token is alone on the last line: {out:?}"
    );
    assert!(
        dir.join("fawkes.db").exists(),
        "the default SQLite file is created"
    );
    let (ok, _) = fawkes(&dir, &["users", "create", "--name", "ANN"]);
    assert!(!ok, "names are unique whatever their case");
    let (ok, out) = fawkes(&dir, &["migrate"]);
    assert!(ok, "{out}");

    let port = free_port();
    let mut server = serve(&dir, port);
    let (status, me) = http(port, "GET", "/api/me", &token, "");
    assert_eq!(status, 200, "{me}");
    assert!(me.contains(r#""name":"ann""#), "{me}");
    let (status, post) = http(
        port,
        "POST",
        "/api/community/posts",
        &token,
        r#"{"body":"durable"}"#,
    );
    assert_eq!(status, 201, "{post}");
    // Killed right after the 201: no chance to flush anything more.
    server.kill().unwrap();
    server.wait().unwrap();

    let port = free_port();
    let mut server = serve(&dir, port);
    let (status, list) = http(port, "GET", "/api/community/posts", &token, "");
    assert_eq!(status, 200);
    assert!(list.contains(r#""body":"durable""#), "{list}");

    // A second token works; a revoked one does not.
    let (ok, out) = fawkes(&dir, &["tokens", "create", "--user", "Ann"]);
    assert!(ok, "{out}");
    let second = last_line(&out);
    assert_eq!(http(port, "GET", "/api/me", &second, "").0, 200);
    let (ok, _) = fawkes(&dir, &["tokens", "revoke", &second]);
    assert!(ok);
    assert_eq!(http(port, "GET", "/api/me", &second, "").0, 401);
    assert_eq!(http(port, "GET", "/api/me", &token, "").0, 200);
    let (ok, _) = fawkes(&dir, &["tokens", "revoke", &second]);
    assert!(!ok, "revoking twice is an error");
    // A token is URL-safe base64, so one in 64 starts with `-`: it is a token, not a flag.
    let (ok, out) = fawkes(
        &dir,
        &["tokens", "revoke", "-RstXf9lrPs6CeAIpzOkrjVdjG7A8Fo"],
    );
    assert!(!ok);
    assert!(out.contains("fawkes: no such live token"), "{out}");
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The conformance fixture's secret_key_base, which minted the tokens of
/// protocol_tests/reference/phoenix-token.md.
const SKB: &str = "conformance-fixture-secret-key-base-0123456789abcdef0123456789abcdef0123456789";

#[test]
fn an_existing_phoenix_apps_users_sign_in_with_its_tokens_and_rules_apply() {
    let dir = std::env::temp_dir().join(format!("fawkes-cli-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (ok, out) = fawkes(
        &dir,
        &["users", "create", "--name", "zed", "--external-id", "42"],
    );
    assert!(ok, "{out}");
    let (ok, out) = fawkes(&dir, &["users", "create", "--name", "root", "--admin"]);
    assert!(ok, "{out}");
    let root = last_line(&out);
    let (ok, _) = fawkes(
        &dir,
        &["users", "create", "--name", "zed2", "--external-id", "42"],
    );
    assert!(!ok, "external ids are unique");

    // A token minted here is the one the Phoenix app would mint: data 42, as an integer.
    let (ok, _) = fawkes(&dir, &["tokens", "phoenix", "--user", "zed"]);
    assert!(!ok, "minting needs the secret_key_base");
    let (ok, out) = fawkes(
        &dir,
        &[
            "tokens",
            "phoenix",
            "--user",
            "zed",
            "--max-age",
            "600",
            "--phoenix-secret-key-base",
            SKB,
        ],
    );
    assert!(ok, "{out}");
    let minted = last_line(&out);
    // A user without an external id gets no Phoenix.Token: tokens name external ids only.
    let mint_for = |user: &str| {
        let args = [
            "tokens",
            "phoenix",
            "--user",
            user,
            "--phoenix-secret-key-base",
            SKB,
        ];
        fawkes(&dir, &args)
    };
    let (ok, out) = mint_for("root");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "fawkes: root has no external id: a Phoenix.Token names a user by external id only"
        ),
        "{out}"
    );
    let (ok, out) = fawkes(
        &dir,
        &[
            "users",
            "set-external-id",
            "--name",
            "root",
            "--external-id",
            "42",
        ],
    );
    assert!(!ok, "external ids stay unique: {out}");
    assert!(out.contains("external_id"), "{out}");
    let (ok, out) = fawkes(
        &dir,
        &[
            "users",
            "set-external-id",
            "--name",
            "root",
            "--external-id",
            "ops-1",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = mint_for("root");
    assert!(ok, "{out}");
    assert!(
        out.contains("a Phoenix.Token for root (data ops-1"),
        "{out}"
    );
    let verifier = fawkes::auth::PhoenixTokens::new(SKB, "user socket", None);
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        verifier.verify(&minted, now),
        Ok(fawkes::auth::Subject::Int(42))
    );
    assert!(
        verifier.verify(&minted, now + 601_000).is_err(),
        "its max age is 600 s"
    );

    std::fs::write(dir.join("rules.toml"), "[menu]\ncreate = \"admin\"\n").unwrap();
    let (ok, out) = fawkes(
        &dir,
        &["collections", "rules", "--collection-rules", "rules.toml"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("menu                     public  public  admin   owner   owner"),
        "{out}"
    );
    assert!(
        out.contains("* (any other)            public  public  auth    owner   owner"),
        "{out}"
    );
    std::fs::write(dir.join("bad.toml"), "[menu]\ncreate = \"everyone\"\n").unwrap();
    let (ok, _) = fawkes(
        &dir,
        &["collections", "rules", "--collection-rules", "bad.toml"],
    );
    assert!(!ok, "an unknown rule is an error");

    let port = free_port();
    let flags = [
        "--phoenix-secret-key-base",
        SKB,
        "--collection-rules",
        "rules.toml",
    ];
    let mut server = serve_with(&dir, port, &flags);
    // Phoenix's own token for user 42 (ten years' max age), and the minted one.
    let long_int = "SFMyNTY.g2gDYSpuBgBUtGAqogFiEswDAA.TS4P5MssDWBclqvPQr0yU82hGumSUJDsJ6_p4rKk7IQ";
    for token in [long_int, minted.as_str()] {
        let (status, me) = http(port, "GET", "/api/me", token, "");
        assert_eq!(status, 200, "{me}");
        assert!(me.contains(r#""name":"zed""#), "{me}");
    }
    let expired = "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.oZadrq1kuFls1GcnkmSDhW3Y_2PLNLdiIb9suL1Ssz8";
    assert_eq!(http(port, "GET", "/api/me", expired, "").0, 401);
    assert_eq!(
        http(port, "POST", "/api/collections/menu/records", &minted, "{}").0,
        403
    );
    assert_eq!(
        http(port, "POST", "/api/collections/menu/records", &root, "{}").0,
        201
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
