//! What a backend answers: one JSON object whose keys say what to do. Unknown keys are refused
//! (a typo would otherwise be silently ignored); every key may be left out.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The reply to the join or push. None: a join is accepted with `{}`; a push gets no reply
    /// (Phoenix's `{:noreply, socket}`).
    #[serde(default)]
    pub reply: Option<ReplyTo>,
    /// Sent to every subscriber of each topic (the channel's own when none is given), on every
    /// node of a cluster.
    #[serde(default)]
    pub broadcast: Vec<Broadcast>,
    /// Sent to the caller only, on this channel.
    #[serde(default)]
    pub push: Vec<Push>,
    /// Kept on the channel and sent with its later requests; replaces what was kept.
    #[serde(default)]
    pub assigns: Option<Value>,
    /// End the channel after the reply (`phx_close`; the client does not rejoin). Not on joins.
    #[serde(default)]
    pub close: bool,
    /// On a join only: track the joiner's presence on the topic under `key`.
    #[serde(default)]
    pub track: Option<Track>,
}

/// What a `connect_url` answers: `reply` (`ok` or none allows; any other status refuses) and
/// `assigns` kept for the socket's channels. Nothing else applies to a connect.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectAnswer {
    #[serde(default)]
    pub reply: Option<ReplyTo>,
    #[serde(default)]
    pub assigns: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyTo {
    pub status: String,
    #[serde(default = "empty")]
    pub response: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    #[serde(default)]
    pub topic: Option<String>,
    pub event: String,
    #[serde(default = "empty")]
    pub payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    pub event: String,
    #[serde(default = "empty")]
    pub payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub key: String,
    #[serde(default = "empty")]
    pub meta: Value,
}

fn empty() -> Value {
    Value::Object(Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_ones_are_refused() {
        let a: Answer = serde_json::from_str("{}").unwrap();
        assert!(a.reply.is_none() && a.push.is_empty() && !a.close);
        let a: Answer = serde_json::from_str(
            r#"{"reply":{"status":"ok"},"broadcast":[{"event":"e"}],"track":{"key":"k"}}"#,
        )
        .unwrap();
        assert_eq!(a.reply.unwrap().response, serde_json::json!({}));
        assert_eq!(a.broadcast[0].topic, None);
        assert_eq!(a.track.unwrap().meta, serde_json::json!({}));
        let e = serde_json::from_str::<Answer>(r#"{"replies":{}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `replies`"), "{e}");
        assert!(serde_json::from_str::<Answer>(r#"{"reply":"ok"}"#).is_err());
    }
}
