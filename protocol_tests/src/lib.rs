//! A black-box Phoenix Channels conformance suite. It runs against any server that serves the
//! conformance fixture (`shared/conformance-fixture.md`): Fawkes, or real Phoenix.
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

/// The server under test.
#[derive(Clone)]
pub struct Target {
    /// The socket URL without the transport suffix: `ws://127.0.0.1:4000/socket`.
    pub url: String,
    pub control: Option<Arc<dyn Control>>,
    /// The server's idle timeout, if the idle scenario should run (it waits that long).
    pub idle_timeout: Option<Duration>,
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
