//! Sign-in with tokens minted elsewhere: an Elixir app's Phoenix.Token and JWTs. Pure: this
//! checks signatures and expiry and says whom a token names; the apps look that user up.
//!
//! - [`phoenix_token`]: Plug.Crypto's signed tokens, byte-compatible with Phoenix.
//! - [`jwt`]: HS256 and RS256 JWTs.
//! - [`supabase`]: a Supabase project's keys and users' tokens, as Supabase Realtime checks them.

pub mod jwt;
pub mod phoenix_token;
pub mod supabase;

pub use jwt::{JwtConfig, JwtVerifier};
pub use phoenix_token::PhoenixTokens;

/// Whom a token names: the data of a Phoenix.Token, the `sub` of a JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Int(i) => write!(f, "{i}"),
            Subject::Str(s) => f.write_str(s),
        }
    }
}

/// The kinds of foreign token a server accepts; none by default.
#[derive(Debug, Default)]
pub struct Verifiers {
    pub phoenix: Option<PhoenixTokens>,
    pub jwt: Option<JwtVerifier>,
}

/// What a verifier made of a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a kind this server verifies: an API token, say.
    NotMine,
    Valid {
        kind: &'static str,
        subject: Subject,
    },
    /// Of a configured kind, and refused; the reason is for the log, never the client.
    Refused { kind: &'static str, why: String },
}

impl Verifiers {
    pub fn verify(&self, token: &str, now_ms: i64) -> Verdict {
        let verdict = |kind, r: Result<Subject, String>| match r {
            Ok(subject) => Verdict::Valid { kind, subject },
            Err(why) => Verdict::Refused { kind, why },
        };
        if let Some(p) = self
            .phoenix
            .as_ref()
            .filter(|_| phoenix_token::looks_like(token))
        {
            return verdict(
                "Phoenix.Token",
                p.verify(token, now_ms).map_err(|e| e.to_string()),
            );
        }
        if let Some(j) = self.jwt.as_ref().filter(|_| jwt::looks_like(token)) {
            return verdict("JWT", j.verify(token));
        }
        Verdict::NotMine
    }
}
