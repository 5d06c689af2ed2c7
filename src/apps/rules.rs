//! Who may do what to a collection, PocketBase style: one rule per action, each `public`
//! (anyone, signed in or not), `auth` (any signed-in user), `owner` (the record's creator) or
//! `admin`. Admins pass every rule.
//!
//! `owner` on `list` shows a user only their own records (REST lists, joins, `change` events,
//! `since` replays); on `create` it means `auth`, as a new record has no owner yet.

use crate::accounts::User;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A collection's name: 1 to 64 lowercase letters, digits or `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Public,
    Auth,
    Owner,
    Admin,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Public => "public",
            Rule::Auth => "auth",
            Rule::Owner => "owner",
            Rule::Admin => "admin",
        }
    }
}

/// A collection's rules. Unset actions keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    pub list: Rule,
    pub view: Rule,
    pub create: Rule,
    pub update: Rule,
    pub delete: Rule,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            list: Rule::Public,
            view: Rule::Public,
            create: Rule::Auth,
            update: Rule::Owner,
            delete: Rule::Owner,
        }
    }
}

/// What a rule says of one user and one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Signed-in users only: 401 for an anonymous request.
    SignIn,
    /// 403.
    Forbidden,
}

impl Rule {
    /// Whether `user` may act on a record created by `owner` (`None` for a collection-wide
    /// action such as listing or creating, or for a record created anonymously).
    pub fn decide(self, user: Option<&User>, owner: Option<Option<i64>>) -> Decision {
        let Some(user) = user else {
            return if self == Rule::Public {
                Decision::Allowed
            } else {
                Decision::SignIn
            };
        };
        let allowed = user.admin
            || match self {
                Rule::Public | Rule::Auth => true,
                // Collection-wide, `owner` narrows what is shown rather than refusing.
                Rule::Owner => owner.is_none_or(|o| o == Some(user.id)),
                Rule::Admin => false,
            };
        if allowed {
            Decision::Allowed
        } else {
            Decision::Forbidden
        }
    }

    /// The one creator whose records `user` may see, when the rule narrows a listing to them.
    pub fn only_owner(self, user: Option<&User>) -> Option<i64> {
        match (self, user) {
            (Rule::Owner, Some(u)) if !u.admin => Some(u.id),
            _ => None,
        }
    }
}

/// The rules of every collection: those named in the config file, and `*` (or the defaults)
/// for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleBook {
    named: BTreeMap<String, Rules>,
    fallback: Rules,
}

impl RuleBook {
    pub fn of(&self, collection: &str) -> Rules {
        self.named.get(collection).copied().unwrap_or(self.fallback)
    }

    /// Parses a TOML or JSON map of collection name (or `*`) to rules:
    /// `[orders]\nupdate = "auth"` or `{"orders": {"update": "auth"}}`.
    pub fn parse(text: &str) -> Result<RuleBook, String> {
        let map: BTreeMap<String, Rules> = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let mut book = RuleBook::default();
        for (name, rules) in map {
            if name == "*" {
                book.fallback = rules;
            } else if valid_name(&name) {
                book.named.insert(name, rules);
            } else {
                return Err(format!(
                    "{name:?} is not a collection name (1-64 lowercase letters, digits or _)"
                ));
            }
        }
        Ok(book)
    }

    /// Sets a collection's rules unless the book already names it.
    pub fn set_if_absent(&mut self, collection: &str, rules: Rules) {
        self.named.entry(collection.to_owned()).or_insert(rules);
    }

    /// Reads a rules file.
    pub fn load(path: &std::path::Path) -> Result<RuleBook, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        RuleBook::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The rules as a table, for `fawkes collections rules`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:<7} {:<7} {:<7} {:<7} {:<7}\n",
            "collection", "list", "view", "create", "update", "delete"
        );
        let rows = self
            .named
            .iter()
            .map(|(n, r)| (n.as_str(), r))
            .chain(std::iter::once(("* (any other)", &self.fallback)));
        for (name, r) in rows {
            out.push_str(&format!(
                "{:<24} {:<7} {:<7} {:<7} {:<7} {:<7}\n",
                name,
                r.list.name(),
                r.view.name(),
                r.create.name(),
                r.update.name(),
                r.delete.name()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, admin: bool) -> User {
        User {
            id,
            name: format!("u{id}"),
            community_member: false,
            admin,
        }
    }

    #[test]
    fn each_rule_decides_for_each_kind_of_user() {
        use Decision::*;
        let (owner, other, admin) = (user(1, false), user(2, false), user(3, true));
        let record = Some(Some(1));
        let cases = [
            (Rule::Public, [Allowed, Allowed, Allowed, Allowed]),
            (Rule::Auth, [SignIn, Allowed, Allowed, Allowed]),
            (Rule::Owner, [SignIn, Allowed, Forbidden, Allowed]),
            (Rule::Admin, [SignIn, Forbidden, Forbidden, Allowed]),
        ];
        for (rule, [anon, own, not_own, adm]) in cases {
            assert_eq!(rule.decide(None, record), anon, "{rule:?} anonymous");
            assert_eq!(rule.decide(Some(&owner), record), own, "{rule:?} owner");
            assert_eq!(rule.decide(Some(&other), record), not_own, "{rule:?} other");
            assert_eq!(rule.decide(Some(&admin), record), adm, "{rule:?} admin");
        }
        // An anonymously created record has no owner: only admins pass `owner`.
        assert_eq!(Rule::Owner.decide(Some(&owner), Some(None)), Forbidden);
        assert_eq!(Rule::Owner.decide(Some(&owner), None), Allowed);
        assert_eq!(Rule::Owner.only_owner(Some(&owner)), Some(1));
        assert_eq!(Rule::Owner.only_owner(Some(&admin)), None);
        assert_eq!(Rule::Auth.only_owner(Some(&owner)), None);
    }

    #[test]
    fn parses_toml_and_json_and_refuses_mistakes() {
        let toml = "[orders]\nlist = \"auth\"\ndelete = \"admin\"\n\n[\"*\"]\ncreate = \"admin\"\n";
        let json = r#"{"orders": {"list": "auth", "delete": "admin"}, "*": {"create": "admin"}}"#;
        for text in [toml, json] {
            let book = RuleBook::parse(text).unwrap();
            let orders = book.of("orders");
            assert_eq!(
                (orders.list, orders.view, orders.create, orders.delete),
                (Rule::Auth, Rule::Public, Rule::Auth, Rule::Admin)
            );
            assert_eq!(book.of("menu").create, Rule::Admin);
            assert_eq!(book.of("menu").update, Rule::Owner);
        }
        assert_eq!(RuleBook::parse("").unwrap(), RuleBook::default());
        for bad in [
            "[orders]\nlist = \"everyone\"",
            "[orders]\nlists = \"auth\"",
            "[Orders]\nlist = \"auth\"",
            "{\"orders\": 1}",
            "not toml [",
        ] {
            assert!(RuleBook::parse(bad).is_err(), "{bad}");
        }
        let table = RuleBook::parse(toml).unwrap().table();
        assert!(
            table.contains("orders                   auth    public  auth    owner   admin"),
            "{table}"
        );
    }
}
