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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_fawkes"))
        .args(["serve", "--port", &port.to_string()])
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
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
