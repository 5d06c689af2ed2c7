//! Runs the `fawkes` binary as a user would: `users create` for tokens, `serve` on a free port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory under the target's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `fawkes` command with `args`, which must succeed: its stdout.
fn fawkes_cli(args: &[&str], dir: Option<&Path>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fawkes"));
    c.args(args);
    if let Some(dir) = dir {
        c.current_dir(dir);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `fawkes users create --database-url DB ARGS...`: the token it prints last.
pub fn create_user(dir: &Path, db: &str, args: &[&str]) -> String {
    let args = [&["users", "create", "--database-url", db], args].concat();
    let out = fawkes_cli(&args, Some(dir));
    out.lines().last().unwrap().to_owned()
}

/// `fawkes supabase ARGS --supabase-jwt-secret SECRET`: its stdout.
pub fn supabase_cli(secret: &str, args: &[&str]) -> String {
    let args = [&["supabase"], args, &["--supabase-jwt-secret", secret]].concat();
    fawkes_cli(&args, None)
}

/// The anon and service_role keys `fawkes supabase keys` prints for `secret`.
pub fn supabase_keys(secret: &str) -> (String, String) {
    let out = supabase_cli(secret, &["keys"]);
    let key = |var: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("no {var} in {out}"))
            .to_owned()
    };
    (key("SUPABASE_ANON_KEY"), key("SUPABASE_SERVICE_ROLE_KEY"))
}

/// A running `fawkes serve`, stopped on drop. Its log is `serve.log` in its directory.
pub struct Serve {
    child: Child,
    /// What it printed on start: `listening on`, then the demo, inspector and metrics URLs.
    pub banner: Vec<String>,
    pub addr: String,
}

impl Serve {
    /// `fawkes serve --port 0 ARGS...`, once it listens.
    pub fn start(dir: &Path, args: &[&str]) -> Serve {
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fawkes"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        for _ in 0..4 {
            match lines.next() {
                Some(Ok(l)) => banner.push(l),
                _ => panic!(
                    "fawkes serve stopped: {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                ),
            }
        }
        let addr = banner[0]
            .strip_prefix("fawkes listening on http://")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected banner {banner:?}"))
            .to_owned();
        Serve {
            child,
            banner,
            addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The metrics URL the banner gives.
    pub fn metrics_url(&self) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("metrics:"))
            .map(|u| u.trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `npm ci` in the JS test directory unless its packages are there.
pub fn npm_ci(js: &Path) {
    let packages = [
        "playwright-core",
        "phoenix",
        "@supabase/supabase-js",
        "realtime-js-v1",
        "supabase-js-v1",
    ];
    if packages
        .iter()
        .all(|p| js.join("node_modules").join(p).exists())
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js)
        .output()
        .expect("npm must be installed (Node 20+)");
    assert!(
        out.status.success(),
        "npm ci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.1 request: (status, head, body). Bodies are small and not chunked here.
pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    // Chunked bodies (actix streams larger ones): join the chunks.
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, head.to_owned(), body.to_owned());
    }
    let (mut rest, mut joined) = (body, String::new());
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        joined.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (status, head.to_owned(), joined)
}

/// Runs one Node test file of `protocol_tests/js` (`npm ci` first if needed) and checks that
/// exactly `passes` tests passed and none failed; returns node's report.
pub fn node_test(file: &str, envs: &[(&str, String)], passes: usize) -> String {
    node_test_within(file, envs, passes, 60)
}

/// [`node_test`] for a file whose tests wait out longer timeouts: `secs` for the whole file.
pub fn node_test_within(file: &str, envs: &[(&str, String)], passes: usize, secs: u64) -> String {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol_tests/js");
    npm_ci(&js);
    let timeout = format!("--test-timeout={}", secs * 1000);
    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1", &timeout, file])
        .current_dir(&js)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node (20+) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{file} failed");
    assert!(
        text.contains(&format!("# pass {passes}")) && text.contains("# fail 0"),
        "expected {passes} passing tests in {file}:\n{text}"
    );
    text
}

/// A new database on the PostgreSQL server `FAWKES_TEST_POSTGRES_URL` names (`.ci/run` sets it).
pub fn fresh_postgres(name: &str) -> String {
    use diesel::{Connection, RunQueryDsl};
    let admin = std::env::var("FAWKES_TEST_POSTGRES_URL").expect(
        "FAWKES_TEST_POSTGRES_URL must name a PostgreSQL server (bash .ci/run starts one and sets it)",
    );
    let name = format!("fawkes_{name}_{}", std::process::id());
    let mut c = diesel::PgConnection::establish(&admin).expect("connect to PostgreSQL");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        diesel::sql_query(sql).execute(&mut c).unwrap();
    }
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// The inspector's sign-in, as a browser does it (tests/inspector.rs, and tests reading
/// `/admin/api/stats`).
pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The value of the `Set-Cookie` named `name` in a response head.
pub fn set_cookie(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The sign-in form's CSRF cookie (`name=value`) and the token its form carries.
pub fn sign_in_form(addr: &str) -> (String, String) {
    let (status, head, page) = http_raw(addr, "GET", "/admin/sign-in", &[], "");
    assert_eq!(status, 200);
    let cookie = set_cookie(&head, "fawkes_admin_sign_in").expect("a sign-in cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let csrf = page
        .split_once(r#"name="csrf" value=""#)
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(t, _)| t.to_owned())
        .expect("a CSRF token in the form");
    assert_eq!(cookie, format!("fawkes_admin_sign_in={csrf}"));
    (cookie, csrf)
}

/// Posts the sign-in form as a browser would (its cookie, its token, this origin).
pub fn sign_in(addr: &str, token: &str) -> (u16, String, String) {
    let (cookie, csrf) = sign_in_form(addr);
    let origin = format!("http://{addr}");
    http_raw(
        addr,
        "POST",
        "/admin/session",
        &[FORM, ("Origin", &origin), ("Cookie", &cookie)],
        &format!("token={token}&csrf={csrf}"),
    )
}

/// Signs an admin in; the session cookie (`fawkes_admin=…`).
pub fn session(addr: &str, token: &str) -> String {
    let (status, head, _) = sign_in(addr, token);
    assert_eq!(status, 303, "{head}");
    let c = set_cookie(&head, "fawkes_admin").expect("a session cookie");
    c.split(';').next().unwrap().to_owned()
}

/// `/admin/api/stats` as an admin sees it, signed in with `token` through the sign-in form.
pub fn admin_stats(addr: &str, token: &str) -> serde_json::Value {
    let session = session(addr, token);
    let (status, _, body) = http_raw(addr, "GET", "/admin/api/stats", &[("Cookie", &session)], "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A CA (`name.pem`, `name.key`) made with the openssl command (tests of TLS to backends and
/// to Redis).
pub fn make_ca(dir: &Path, name: &str) {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=Fawkes test {name}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed")
        .success();
    assert!(ok, "openssl req -x509 failed");
}

/// A certificate for 127.0.0.1 (`server.pem`, `server.key`) signed by the CA `ca`.
pub fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}

/// A redis-server on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        Redis::spawn(port, &["--port", &port.to_string()])
    }

    /// A redis-server with more settings (`--requirepass PW`, `--user …`).
    pub fn start_with(args: &[&str]) -> Redis {
        let port = free_port();
        let mut all = vec!["--port".to_owned(), port.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Redis::spawn(port, &all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A redis-server speaking only TLS, with a certificate for 127.0.0.1 that a CA made here
    /// signed (`dir/ca.pem`), and a password: its URL is `rediss://:PASSWORD@127.0.0.1:PORT`.
    pub fn start_tls(dir: &Path, password: &str) -> Redis {
        make_ca(dir, "ca");
        Redis::start_tls_on(dir, password, free_port())
    }

    /// As [`Redis::start_tls`], on `port`, with the CA already in `dir` (`ca.pem`, `ca.key`);
    /// its certificate is `dir/server.pem`. Clients show none.
    pub fn start_tls_on(dir: &Path, password: &str, port: u16) -> Redis {
        make_server_cert(dir, "ca");
        let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        Redis::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &file("server.pem"),
                "--tls-key-file",
                &file("server.key"),
                "--tls-ca-cert-file",
                &file("ca.pem"),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                password,
            ],
        )
    }

    fn spawn(port: u16, args: &[&str]) -> Redis {
        let mut child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server must be installed (Debian: apt-get install redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.contains("Ready to accept connections") {
                // Its later log lines are read and dropped, so that its writes never fail.
                std::thread::spawn(move || lines.for_each(drop));
                return Redis { child, port };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server stopped before it was ready");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the node's link to Redis is up (`fawkes_redis_up 1`), subscribed.
pub fn wait_linked(node: &Serve) {
    let metrics = node.metrics_url();
    let addr = metrics
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("a metrics URL in {:?}", node.banner))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http_raw(&addr, "GET", "/metrics", &[], "");
        if body.lines().any(|l| l == "fawkes_redis_up 1") {
            return;
        }
        assert!(Instant::now() < deadline, "the node never linked to Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL server of the test's own with `wal_level = logical` (change capture needs it),
/// on a free port, in a fresh directory; stopped and removed on drop. As root (initdb refuses
/// root) it runs as the `postgres` user. Its superuser is `fawkes`, trusted on 127.0.0.1.
pub struct LogicalPostgres {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

impl LogicalPostgres {
    pub fn start() -> LogicalPostgres {
        // The newest PostgreSQL Debian installed (its wal2json must match: .ci/run installs it).
        let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL (apt-get install postgresql)")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        versions.sort();
        let bin = PathBuf::from(format!(
            "/usr/lib/postgresql/{}/bin",
            versions.last().expect("a PostgreSQL version")
        ));
        let bin = bin.as_path();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Under /tmp: the postgres user must be able to reach it.
        let dir = PathBuf::from(format!("/tmp/fawkes-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        let as_owner = |program: &Path| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            c.current_dir("/tmp");
            c
        };
        if root {
            assert!(Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let data = dir.join("data");
        let out = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "fawkes", "--auth=trust"])
            .output()
            .expect("initdb (apt-get install postgresql)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let child = as_owner(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
            ])
            .args(["-c", "max_replication_slots=8", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("postgres://fawkes@127.0.0.1:{port}/postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Listening is not yet accepting: wait for a query to pass.
        use diesel::Connection;
        while diesel::PgConnection::establish(&url).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        LogicalPostgres { child, dir, url }
    }

    /// Runs SQL statements, one after another.
    pub fn sql(&self, statements: &[&str]) {
        use diesel::{Connection, RunQueryDsl};
        let mut c = diesel::PgConnection::establish(&self.url).unwrap();
        for s in statements {
            diesel::sql_query(*s)
                .execute(&mut c)
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}

impl Drop for LogicalPostgres {
    fn drop(&mut self) {
        // SIGTERM through the runuser wrapper would leave the server; stop it by its own pid.
        let pid_file = self.dir.join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
        {
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
