//! What a declared channel is: `[[channels]]` in `fawkes.toml` (or the `--channel-*` flags for
//! one), and the bounds every backend is held to.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The key of the declared channels' tables in `fawkes.toml` (`[[channels]]`).
pub const CHANNELS: &str = "channels";

/// The timeout of a channel that gives none, as the issue and Centrifugo's proxy default it.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// One `[[channels]]` table: a topic pattern and the backend URLs its events go to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// An exact topic (`lobby`) or a prefix ending in `*` (`room:*`), as the [`crate::Router`]
    /// takes them.
    pub topic: String,
    /// Decides joins; none: every join is accepted (see the module's doc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
    /// Handles client events; none: every push is refused with a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_url: Option<String>,
    /// Told of leaves and closes, fire and forget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leave_url: Option<String>,
    /// How long one request may take, queue wait included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl ChannelSpec {
    /// A spec from one `[[channels]]` table of the config file.
    pub fn from_toml(table: toml::Table) -> Result<ChannelSpec, String> {
        let spec: ChannelSpec = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("[[channels]]: {}", e.message()))?;
        spec.check()?;
        Ok(spec)
    }

    /// The spec as a `[[channels]]` table of the config file (read back by [`Self::from_toml`]).
    pub fn to_toml(&self) -> String {
        let mut doc = toml::Table::new();
        let table = toml::Table::try_from(self).expect("a spec is a table of strings and numbers");
        doc.insert(
            CHANNELS.into(),
            toml::Value::Array(vec![toml::Value::Table(table)]),
        );
        toml::to_string(&doc).expect("TOML tables serialize")
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The URLs it names, with what each is for.
    pub fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("join_url", &self.join_url),
            ("push_url", &self.push_url),
            ("leave_url", &self.leave_url),
        ]
        .into_iter()
        .filter_map(|(k, u)| u.as_deref().map(|u| (k, u)))
    }

    /// Refuses what could never work: an empty pattern, a `*` inside it, a zero timeout, a URL
    /// that is not `http(s)://host[:port]/...`.
    pub fn check(&self) -> Result<(), String> {
        let t = &self.topic;
        if t.is_empty() || t.trim_end_matches('*').contains('*') || t.ends_with("**") {
            return Err(format!(
                "channel topic {t:?}: give an exact topic or a prefix ending in one `*` (room:*)"
            ));
        }
        if self.timeout_ms == 0 {
            return Err(format!("channel {t}: timeout_ms must be above 0"));
        }
        for (key, url) in self.urls() {
            origin(url).map_err(|e| format!("channel {t}: {key} {url:?}: {e}"))?;
        }
        Ok(())
    }
}

/// `http://host:port` or `https://host:port` of a URL: requests to one origin share its bounds
/// and circuit.
pub fn origin(url: &str) -> Result<String, String> {
    let (scheme, rest, port) = match url.split_once("://") {
        Some(("http", rest)) => ("http", rest, 80),
        Some(("https", rest)) => ("https", rest, 443),
        _ => return Err("not an http:// or https:// URL".into()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host (and no user info)".into());
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    };
    Ok(format!("{scheme}://{with_port}"))
}

/// The bounds every backend (one origin) is held to, whatever channel calls it.
#[derive(Debug, Clone)]
pub struct BackendLimits {
    /// Requests in flight at once to one backend.
    pub max_concurrency: usize,
    /// Requests waiting for one of those slots; one more fails at once.
    pub max_queue: usize,
    /// Largest answer body read, in bytes; a longer one is a failure, read no further.
    pub max_body_bytes: usize,
    /// Failures in a row (timeouts, unreachable, 5xx) that open the circuit.
    pub circuit_failures: u32,
    /// How long an open circuit fails requests at once before one is let through to try.
    pub circuit_open: Duration,
}

impl Default for BackendLimits {
    fn default() -> Self {
        BackendLimits {
            max_concurrency: 64,
            max_queue: 256,
            max_body_bytes: 1 << 20,
            circuit_failures: 5,
            circuit_open: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_name_host_and_port() {
        assert_eq!(
            origin("http://127.0.0.1:8000/join").as_deref(),
            Ok("http://127.0.0.1:8000")
        );
        assert_eq!(
            origin("http://backend/a?b").as_deref(),
            Ok("http://backend:80")
        );
        assert_eq!(
            origin("https://backend/join").as_deref(),
            Ok("https://backend:443")
        );
        assert_eq!(
            origin("https://10.0.0.1:8443").as_deref(),
            Ok("https://10.0.0.1:8443")
        );
        assert!(origin("ftp://x/").is_err());
        assert!(origin("http:///x").is_err());
    }

    #[test]
    fn tables_are_read_strictly() {
        let t: toml::Table =
            toml::from_str("topic = \"room:*\"\njoin_url = \"http://127.0.0.1:9/j\"").unwrap();
        let spec = ChannelSpec::from_toml(t).unwrap();
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(spec.join_url.as_deref(), Some("http://127.0.0.1:9/j"));
        let t: toml::Table = toml::from_str("topic = \"room:*\"\njoin = \"x\"").unwrap();
        assert!(ChannelSpec::from_toml(t)
            .unwrap_err()
            .contains("unknown field `join`"));
        let t: toml::Table = toml::from_str("topic = \"a*b*\"").unwrap();
        assert!(ChannelSpec::from_toml(t).is_err());
    }
}
