//! Who may read, write and track presence on private `realtime:*` channels
//! (`--realtime-rules`): Supabase decides it with row-level security policies on
//! `realtime.messages`; Fawkes, which has no such table, with a small file of topic patterns.
//!
//! ```toml
//! ["room-{sub}"]          # the user's own room: the pattern's {sub} is the token's subject
//! read = "authenticated"
//! write = "authenticated"
//! presence = "authenticated"
//!
//! ["staff-*"]
//! read = ["staff", "admin"] # roles: the token's `role` claim
//! write = "service_role"
//! ```
//!
//! The first pattern in file order that matches the channel's name (without `realtime:`)
//! decides; a name no pattern matches is refused, as is an action its rule leaves unset.
//! A `service_role` token passes every rule.

use crate::auth::supabase::{role, Claims};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Who passes one rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rule {
    /// Anyone with a valid `apikey`.
    Public,
    /// A user token whose `role` is `authenticated`.
    Authenticated,
    /// Only the service_role key (which passes every rule anyway).
    #[default]
    ServiceRole,
    /// A token whose `role` is one of these.
    Roles(Vec<String>),
}

impl Rule {
    fn allows(&self, claims: &Claims) -> bool {
        let r = role(claims);
        r == "service_role"
            || match self {
                Rule::Public => true,
                Rule::Authenticated => r == "authenticated",
                Rule::ServiceRole => false,
                Rule::Roles(roles) => roles.iter().any(|x| x == r),
            }
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "public" => Ok(Rule::Public),
                "authenticated" => Ok(Rule::Authenticated),
                "service_role" => Ok(Rule::ServiceRole),
                other => Err(D::Error::custom(format!(
                    "{other:?} is not a rule: public, authenticated, service_role or a list of roles"
                ))),
            },
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s),
                    other => Err(D::Error::custom(format!("{other} is not a role name"))),
                })
                .collect::<Result<_, _>>()
                .map(Rule::Roles),
            other => Err(D::Error::custom(format!(
                "{other} is not a rule: public, authenticated, service_role or a list of roles"
            ))),
        }
    }
}

/// The rules of the channels one pattern matches; an unset action is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub read: Option<Rule>,
    #[serde(default)]
    pub write: Option<Rule>,
    #[serde(default)]
    pub presence: Option<Rule>,
}

/// What a token may do on one private channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub presence: bool,
}

/// The patterns, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealtimeRules(Vec<(String, Rules)>);

/// Keeps a map's entries in the order the file has them.
struct InOrder(Vec<(String, Rules)>);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InOrder, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of topic patterns to rules")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Rules>()? {
                    out.push((k, v));
                }
                Ok(InOrder(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl RealtimeRules {
    /// Parses a TOML or JSON map of pattern to `{read, write, presence}`.
    pub fn parse(text: &str) -> Result<RealtimeRules, String> {
        let InOrder(entries) = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        for (pattern, _) in &entries {
            if pattern.is_empty() {
                return Err("an empty pattern matches no channel".into());
            }
        }
        Ok(RealtimeRules(entries))
    }

    pub fn load(path: &std::path::Path) -> Result<RealtimeRules, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        RealtimeRules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What `claims` may do on the private channel `name`.
    pub fn access(&self, name: &str, claims: &Claims) -> Access {
        let sub = claims.get("sub").and_then(Value::as_str);
        let Some((_, rules)) = self.0.iter().find(|(p, _)| matches(p, name, sub)) else {
            // No pattern: only the service_role key, which passes every rule.
            let all = role(claims) == "service_role";
            return Access {
                read: all,
                write: all,
                presence: all,
            };
        };
        let allows = |r: &Option<Rule>| r.clone().unwrap_or_default().allows(claims);
        Access {
            read: allows(&rules.read),
            write: allows(&rules.write),
            presence: allows(&rules.presence),
        }
    }
}

/// Whether `name` matches `pattern`: `*` is any run of characters, `{sub}` the token's
/// subject (a token without one matches no such pattern), anything else itself.
fn matches(pattern: &str, name: &str, sub: Option<&str>) -> bool {
    if pattern.contains("{sub}") {
        let Some(sub) = sub.filter(|s| !s.is_empty()) else {
            return false;
        };
        // The subject is matched literally: a `*` in it is no wildcard.
        return glob(&pattern.replace("{sub}", "\u{0}"), name, sub);
    }
    glob(pattern, name, "")
}

/// `*` matches any run; `\0` matches `sub` exactly; other characters themselves.
fn glob(pattern: &str, name: &str, sub: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let s: Vec<char> = sub.chars().collect();
    // Backtracking over `*` (patterns are short and written by the operator).
    fn go(p: &[char], n: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..], s)),
            Some(('\u{0}', rest)) => n.starts_with(s) && go(rest, &n[s.len()..], s),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..], s),
        }
    }
    go(&p, &n, &s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn first_pattern_in_file_order_decides() {
        let rules = RealtimeRules::parse(
            r#"
            ["room-{sub}"]
            read = "authenticated"
            write = "authenticated"
            presence = "authenticated"

            ["staff-*"]
            read = ["staff", "admin"]
            write = "service_role"

            ["*"]
            read = "public"
            "#,
        )
        .unwrap();
        let alice = claims(json!({"role": "authenticated", "sub": "alice"}));
        let staff = claims(json!({"role": "staff", "sub": "bob"}));
        let anon = claims(json!({"role": "anon"}));
        let service = claims(json!({"role": "service_role"}));
        let all = Access {
            read: true,
            write: true,
            presence: true,
        };
        assert_eq!(rules.access("room-alice", &alice), all);
        // Someone else's room falls through to `*`: read only.
        let read_only = Access {
            read: true,
            ..Access::default()
        };
        assert_eq!(rules.access("room-bob", &alice), read_only);
        assert_eq!(rules.access("staff-ops", &staff), read_only);
        assert_eq!(rules.access("staff-ops", &alice), Access::default());
        assert_eq!(rules.access("staff-ops", &service), all);
        assert_eq!(rules.access("lobby", &anon), read_only);
        // The same file as JSON keeps its order too.
        let json =
            RealtimeRules::parse(r#"{"*": {"read": "service_role"}, "open": {"read": "public"}}"#)
                .unwrap();
        assert_eq!(json.access("open", &anon), Access::default());
    }

    #[test]
    fn no_match_refuses_and_bad_files_say_why() {
        let rules = RealtimeRules::parse("[\"a-*\"]\nread = \"public\"\n").unwrap();
        let anon = claims(json!({"role": "anon"}));
        assert_eq!(rules.access("b", &anon), Access::default());
        assert!(glob("a-*-z", "a-bcd-z", ""));
        assert!(!glob("a-*-z", "a-bcd-y", ""));
        // A subject with a `*` is no wildcard.
        assert!(!matches("room-{sub}", "room-x", Some("*")));
        assert!(!matches("room-{sub}", "room-", None));
        for (bad, why) in [
            ("[x]\nread = \"everyone\"", "is not a rule"),
            ("[x]\nread = [1]", "is not a role name"),
            ("[x]\nreed = \"public\"", "unknown field"),
            ("{\"\": {}}", "empty pattern"),
        ] {
            let e = RealtimeRules::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
