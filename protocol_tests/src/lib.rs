//! A black-box Phoenix Channels conformance suite. It runs against any server that serves the
//! conformance fixture (`reference/conformance-fixture.md`): Fawkes, or real Phoenix.
//!
//! - [`scenarios`]: every transcript scenario, asserting exact frames.
//! - [`client`]: a raw WebSocket and HTTP client.
//! - [`matcher`]: exact matching, with placeholders for `phx_ref`s and times.

pub mod client;
pub mod matcher;
pub mod scenarios;

use std::sync::Arc;
use std::time::Duration;

/// Server-side actions a scenario may need; only an in-process server offers them.
pub trait Control: Send + Sync {
    /// Broadcasts `disconnect` to a socket id.
    fn disconnect(&self, socket_id: &str);
}

/// Which Phoenix's answers to expect where 1.7 and 1.8 differ (`FACTS.md` §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phoenix {
    /// 1.7.24: events with a stale join_ref are answered; `phx_error` carries `{}`; a
    /// `disconnect` closes with 1000.
    V1_7,
    /// 1.8.12 (what Fawkes follows): stale join_refs dropped; `phx_error` carries
    /// `{"reason":"channel_crash"}`; a `disconnect` closes with 1001.
    #[default]
    V1_8,
}

impl Phoenix {
    /// `1.7` or `1.8` (a patch version is allowed and ignored).
    pub fn parse(s: &str) -> Option<Phoenix> {
        match s.split('.').take(2).collect::<Vec<_>>().as_slice() {
            ["1", "7"] => Some(Phoenix::V1_7),
            ["1", "8"] => Some(Phoenix::V1_8),
            _ => None,
        }
    }

    /// The payload of `phx_error` after a crash.
    pub fn crash_payload(self) -> &'static str {
        match self {
            Phoenix::V1_7 => "{}",
            Phoenix::V1_8 => r#"{"reason":"channel_crash"}"#,
        }
    }

    /// Whether an ordinary event with a stale join_ref is dropped (else answered by the
    /// current join).
    pub fn drops_stale_join_refs(self) -> bool {
        self == Phoenix::V1_8
    }

    /// The close code of a `disconnect` broadcast on the socket id.
    pub fn disconnect_code(self) -> u16 {
        match self {
            Phoenix::V1_7 => 1000,
            Phoenix::V1_8 => 1001,
        }
    }
}

/// The server under test.
#[derive(Clone)]
pub struct Target {
    /// The socket URL without the transport suffix: `ws://127.0.0.1:4000/socket`.
    pub url: String,
    pub control: Option<Arc<dyn Control>>,
    /// The server's idle timeout, if the idle scenario should run (it waits that long).
    pub idle_timeout: Option<Duration>,
    /// The Phoenix version whose answers to expect.
    pub phoenix: Phoenix,
}

impl Target {
    pub fn new(url: &str) -> Target {
        Target {
            url: url
                .trim_end_matches('/')
                .trim_end_matches("/websocket")
                .to_owned(),
            control: None,
            idle_timeout: None,
            phoenix: Phoenix::default(),
        }
    }

    /// `host:port`.
    pub fn host(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    /// The mount path, `/socket`.
    pub fn path(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        rest.find('/')
            .map_or(String::new(), |i| rest[i..].to_owned())
    }
}

/// The outcome of one scenario.
pub enum Outcome {
    Passed,
    Failed(String),
    NotRun(String),
}

/// Runs one scenario by name.
pub async fn run_one(target: &Target, name: &str) -> Outcome {
    let Some((_, f)) = scenarios::ALL.iter().find(|(n, _)| *n == name) else {
        return Outcome::Failed(format!("no scenario {name}"));
    };
    match tokio::time::timeout(Duration::from_secs(120), f(target.clone())).await {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(e)) => match e.strip_prefix(scenarios::NOT_RUN) {
            Some(why) => Outcome::NotRun(why.to_owned()),
            None => Outcome::Failed(e),
        },
        Err(_) => Outcome::Failed("timed out after 120 s".into()),
    }
}
