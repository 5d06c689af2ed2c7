//! `fawkes.toml` and `fawkes config print`: keys are the flags' names; flags beat the
//! environment, which beats the file, which beats the defaults; secrets are masked; unknown keys
//! are refused; `log-format = "json"` makes every log line a JSON object.

mod support;

use std::path::Path;
use std::process::Command;

fn fawkes(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fawkes"));
    cmd.args(args).current_dir(dir);
    for var in [
        "FAWKES_CONFIG",
        "DATABASE_URL",
        "FAWKES_MAX_CHANNELS",
        "FAWKES_PORT",
        "FAWKES_LOG_FORMAT",
        "FAWKES_REDIS_URL",
        "FAWKES_REDIS_CA_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_print_shows_each_value_and_its_source_with_secrets_masked() {
    let dir = support::temp_dir("config-print");
    std::fs::write(
        dir.join("custom.toml"),
        r#"
max-queue = 77
max_channels = 9
metrics-token = "file-secret"
check-origin = ["https://a.example", "//b.example"]
demo = true
port = 1111
"#,
    )
    .unwrap();
    let (ok, out, err) = fawkes(
        &dir,
        &[
            "config",
            "print",
            "--config",
            "custom.toml",
            "--port",
            "4321",
        ],
        &[
            ("FAWKES_MAX_CHANNELS", "5"),
            ("DATABASE_URL", "postgres://fawkes:pw@127.0.0.1:5432/app"),
        ],
    );
    assert!(ok, "{err}");
    for line in [
        "# config file: custom.toml",
        "max-queue = 77  # file",
        "max-channels = 5  # env",
        "port = 4321  # flag",
        "metrics-token = ***  # file",
        "check-origin = https://a.example,//b.example  # file",
        "demo = true  # file",
        "idle-timeout = 60  # default",
        "database-url = postgres://fawkes:***@127.0.0.1:5432/app  # env",
        "log-format = text  # default",
        "metrics-addr = (unset)  # unset",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    assert!(
        !out.contains("file-secret") && !out.contains(":pw@"),
        "{out}"
    );
}

/// The Redis settings: the URL shown without its password, the CA file as any path.
#[test]
fn config_print_shows_the_redis_url_with_its_password_masked_and_the_ca_file() {
    let dir = support::temp_dir("config-redis");
    std::fs::write(
        dir.join("fawkes.toml"),
        "redis-url = \"rediss://app:pw-in-file@redis.example:6380/1\"\n\
         redis-ca-file = \"managed-ca.pem\"\n",
    )
    .unwrap();
    let (ok, out, err) = fawkes(&dir, &["config", "print"], &[]);
    assert!(ok, "{err}");
    for line in [
        "redis-url = rediss://app:***@redis.example:6380/1  # file",
        "redis-ca-file = managed-ca.pem  # file",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    assert!(!out.contains("pw-in-file"), "{out}");
}

#[test]
fn fawkes_toml_in_the_working_directory_is_read_and_bad_keys_are_refused() {
    let dir = support::temp_dir("config-default");
    std::fs::write(dir.join("fawkes.toml"), "max-frame-size = 4096\n").unwrap();
    let (ok, out, _) = fawkes(&dir, &["config", "print"], &[]);
    assert!(ok);
    assert!(
        out.lines().any(|l| l == "max-frame-size = 4096  # file"),
        "{out}"
    );

    std::fs::write(dir.join("fawkes.toml"), "max-fram-size = 4096\n").unwrap();
    let (ok, _, err) = fawkes(&dir, &["config", "print"], &[]);
    assert!(!ok);
    assert!(err.contains("unknown key `max-fram-size`"), "{err}");

    std::fs::write(dir.join("fawkes.toml"), "max-frame-size = \n").unwrap();
    let (ok, _, err) = fawkes(&dir, &["config", "print"], &[]);
    assert!(!ok);
    assert!(err.contains("fawkes.toml"), "{err}");

    let (ok, _, err) = fawkes(&dir, &["config", "print", "--config", "missing.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}

/// The file's `[[channels]]` are printed after the flags, as TOML that reads back to the same
/// declarations (defaults filled in); an invalid one fails `config print` as it fails `serve`.
#[test]
fn config_print_shows_the_declared_channels_as_toml() {
    let dir = support::temp_dir("config-channels");
    std::fs::write(
        dir.join("fawkes.toml"),
        r#"
backend-secret = "s"

[[channels]]
topic = "room:*"
join_url = "http://127.0.0.1:8000/join"
push_url = "http://127.0.0.1:8000/push"
leave_url = "http://127.0.0.1:8000/leave"
timeout_ms = 1500

[[channels]]
topic = "lobby"
"#,
    )
    .unwrap();
    let (ok, out, err) = fawkes(&dir, &["config", "print"], &[]);
    assert!(ok, "{err}");
    let (flags, channels) = out
        .split_once("\n# declared channels  # file\n")
        .unwrap_or_else(|| panic!("no declared channels in:\n{out}"));
    assert!(flags.lines().any(|l| l == "backend-secret = ***  # file"));
    let read: toml::Table = toml::from_str(channels).unwrap();
    let want: toml::Table = toml::from_str(
        r#"
[[channels]]
topic = "room:*"
join_url = "http://127.0.0.1:8000/join"
push_url = "http://127.0.0.1:8000/push"
leave_url = "http://127.0.0.1:8000/leave"
timeout_ms = 1500

[[channels]]
topic = "lobby"
timeout_ms = 5000
"#,
    )
    .unwrap();
    assert_eq!(read, want, "printed:\n{channels}");

    // Without channels, no such section.
    std::fs::write(dir.join("fawkes.toml"), "max-queue = 3\n").unwrap();
    let (ok, out, _) = fawkes(&dir, &["config", "print"], &[]);
    assert!(ok);
    assert!(
        !out.contains("declared channels") && !out.contains("[[channels]]"),
        "{out}"
    );

    std::fs::write(
        dir.join("fawkes.toml"),
        "[[channels]]\ntopic = \"room:*\"\njoin = \"x\"\n",
    )
    .unwrap();
    let (ok, _, err) = fawkes(&dir, &["config", "print"], &[]);
    assert!(!ok);
    assert!(err.contains("[[channels]]: unknown field `join`"), "{err}");
}

#[test]
fn serve_takes_its_settings_from_the_file_and_logs_json() {
    let dir = support::temp_dir("config-serve");
    let db = dir.join("fawkes.db");
    std::fs::write(
        dir.join("fawkes.toml"),
        format!(
            "database-url = {:?}\nmetrics-token = \"from-file\"\nlog-format = \"json\"\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = support::Serve::start(&dir, &[]);
    // The token from the file puts /metrics on the main listener.
    assert_eq!(
        server.metrics_url(),
        format!("http://{}/metrics", server.addr)
    );
    drop(server);
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration file fawkes.toml")),
        "{log}"
    );
}
