//! `fawkes.toml`: settings for the command line, one key per flag.
//!
//! A key is a flag's long name (`max-queue` or `max_queue`); its value is what the flag would
//! take (strings, numbers, booleans, or arrays for flags that take lists). The file feeds each
//! flag's environment variable when the environment does not set it, so the order of precedence
//! is the one clap already gives: flags, then the environment, then the file, then defaults.
//! Unknown keys and keys of flags without an environment variable are errors, not ignored.
//!
//! One key is no flag: `[[channels]]`, an array of tables declaring channels proxied to the
//! app's backend (`apps::proxy`), each read by its own rules; the flags declare one more.

use clap::Command;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the config file is: `--config PATH` (or `--config=PATH`) on the command line, else
/// `FAWKES_CONFIG`, else `./fawkes.toml` when it exists. The second value says whether it was
/// asked for (a missing file asked for is an error; a missing default is not).
pub fn locate(args: &[String]) -> Option<(PathBuf, bool)> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(|p| (PathBuf::from(p), true));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some((PathBuf::from(p), true));
        }
    }
    if let Some(p) = std::env::var_os("FAWKES_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let default = PathBuf::from("fawkes.toml");
    default.exists().then_some((default, false))
}

/// What a file applied: the environment variables it set.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub path: Option<PathBuf>,
    pub set: BTreeSet<String>,
    /// The `[[channels]]` tables, in order.
    pub channels: Vec<toml::Table>,
}

/// The key of the declared channels' tables.
pub use crate::apps::proxy::config::CHANNELS;

/// Every (long name, env var) of the arguments of `cmd` and its subcommands.
fn flags(cmd: &Command) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((long.to_owned(), env))
        })
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(flags(sub));
    }
    out
}

/// A TOML value as a flag's text.
fn as_text(key: &str, v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| as_text(key, i))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => {
            return Err(format!(
                "{key}: a {} is not a flag's value",
                other.type_str()
            ))
        }
    })
}

/// Reads `path` and sets the environment variable of each key the environment does not set.
/// Call before any thread starts (it changes the process environment).
pub fn apply(path: &Path, cmd: &Command) -> Result<Applied, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    apply_text(&text, cmd)
        .map(|(set, channels)| Applied {
            path: Some(path.to_owned()),
            set,
            channels,
        })
        .map_err(|e| format!("{}: {e}", path.display()))
}

type Read = (BTreeSet<String>, Vec<toml::Table>);

fn apply_text(text: &str, cmd: &Command) -> Result<Read, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let channels = match table.remove(CHANNELS) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                toml::Value::Table(t) => Ok(t),
                other => Err(format!(
                    "`{CHANNELS}` holds tables ([[channels]]), not a {}",
                    other.type_str()
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "`{CHANNELS}` is an array of tables ([[channels]]), not a {}",
                other.type_str()
            ))
        }
    };
    let known = flags(cmd);
    let mut set = BTreeSet::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        if name == "config" {
            return Err("`config` cannot be set from the config file".into());
        }
        let Some((_, env)) = known.iter().find(|(long, _)| *long == name) else {
            return Err(format!(
                "unknown key `{key}` (keys are the flags' long names)"
            ));
        };
        let Some(env) = env else {
            return Err(format!("`{key}` has no environment variable, so no key"));
        };
        let text = as_text(key, value)?;
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, &text);
            set.insert(env.clone());
        }
    }
    Ok((set, channels))
}

/// Whether a flag holds a secret: its value is masked when shown.
pub fn is_secret(long: &str, hidden: bool) -> bool {
    hidden || long.contains("secret") || long.contains("token")
}

/// A database URL with its password masked.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_database_passwords() {
        assert_eq!(
            mask_url("postgres://fawkes:pw@127.0.0.1:5432/db"),
            "postgres://fawkes:***@127.0.0.1:5432/db"
        );
        assert_eq!(mask_url("./fawkes.db"), "./fawkes.db");
    }

    #[test]
    fn finds_the_config_flag() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            locate(&args(&["fawkes", "serve", "--config", "a.toml"])),
            Some((PathBuf::from("a.toml"), true))
        );
        assert_eq!(
            locate(&args(&["fawkes", "--config=b.toml", "serve"])),
            Some((PathBuf::from("b.toml"), true))
        );
    }
}
