//! A Supabase project's JWTs: the `apikey` (anon or service_role key) and users' access
//! tokens, all HS256 with the project's JWT secret. Checked as Supabase Realtime checks them
//! (`RealtimeWeb.ChannelsAuthorization`): the token may be URL-encoded or carry whitespace;
//! `role` and `exp` are required; the refusals are worded as Realtime words them, for the
//! client to show.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// The claims of a valid token.
pub type Claims = Map<String, Value>;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64 parts with a JSON header and claims.
    Malformed,
    /// Signed with another secret or algorithm.
    Signature,
    /// `exp` passed, this many seconds ago.
    Expired(i64),
    /// No `role` or no integer `exp`.
    MissingClaims,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("The token provided is not a valid JWT"),
            TokenError::Signature => f.write_str("Failed to validate JWT signature"),
            TokenError::Expired(ago) => write!(f, "Token has expired {ago} seconds ago"),
            TokenError::MissingClaims => f.write_str("Fields `role` and `exp` are required in JWT"),
        }
    }
}

/// The project's JWT secret, to verify and (for the CLI and tests) sign.
#[derive(Clone)]
pub struct ProjectKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for ProjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProjectKeys(***)")
    }
}

impl ProjectKeys {
    /// Fails on an empty secret (anyone could sign with it).
    pub fn new(secret: &[u8]) -> Result<ProjectKeys, String> {
        match secret.len() {
            0 => return Err("the Supabase JWT secret is empty".into()),
            n if n < 32 => {
                log::warn!("the Supabase JWT secret has {n} bytes; Supabase asks for 32 or more")
            }
            _ => {}
        }
        Ok(ProjectKeys {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
        })
    }

    /// The claims of `token` at `now` (Unix seconds), or why it is refused.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let token = clean(token);
        let mut v = Validation::new(Algorithm::HS256);
        // Expiry is checked below, to say how long ago it passed.
        v.validate_exp = false;
        v.required_spec_claims.clear();
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(&token, &self.decoding, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        TokenError::Signature
                    }
                    _ => TokenError::Malformed,
                }
            })?
            .claims;
        let exp = claims.get("exp").and_then(Value::as_i64);
        let (Some(exp), true) = (exp, claims.contains_key("role")) else {
            return Err(TokenError::MissingClaims);
        };
        if exp <= now {
            return Err(TokenError::Expired(now - exp));
        }
        Ok(claims)
    }

    /// Signs `claims` (HS256), as the project's keys and Supabase Auth's tokens are signed.
    pub fn sign(&self, claims: &Value) -> String {
        // Encoding JSON with a valid HMAC key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing")
    }
}

/// Realtime's cleaning: URL-decoded, whitespace removed.
fn clean(token: &str) -> String {
    percent_encoding::percent_decode_str(token)
        .decode_utf8_lossy()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// The role a token's claims give, `""` when none is a string.
pub fn role(claims: &Claims) -> &str {
    claims.get("role").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn verifies_and_words_refusals_as_realtime() {
        let keys = ProjectKeys::new(b"a-project-secret-of-at-least-32-bytes").unwrap();
        let other = ProjectKeys::new(b"another-secret-of-at-least-32-bytes!!").unwrap();
        let anon = keys.sign(&json!({"role": "anon", "exp": NOW + 60, "iss": "supabase"}));
        assert_eq!(
            role(&keys.verify(&anon, NOW).unwrap()),
            "anon",
            "a valid anon key"
        );
        // URL-encoded and with whitespace, as Realtime accepts.
        let mangled = format!(" {}\n", anon.replace('.', "%2E"));
        assert!(keys.verify(&mangled, NOW).is_ok());
        assert_eq!(
            keys.verify(&anon, NOW + 75).unwrap_err().to_string(),
            "Token has expired 15 seconds ago"
        );
        assert_eq!(
            other.verify(&anon, NOW).unwrap_err().to_string(),
            "Failed to validate JWT signature"
        );
        assert_eq!(
            keys.verify("not.a.jwt", NOW).unwrap_err().to_string(),
            "The token provided is not a valid JWT"
        );
        assert_eq!(keys.verify("", NOW), Err(TokenError::Malformed));
        for claims in [
            json!({"exp": NOW + 60}),
            json!({"role": "anon"}),
            json!({"role": "anon", "exp": "soon"}),
        ] {
            assert_eq!(
                keys.verify(&keys.sign(&claims), NOW)
                    .unwrap_err()
                    .to_string(),
                "Fields `role` and `exp` are required in JWT"
            );
        }
        // `alg: none` and other algorithms are refused.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            anon.split('.').nth(1).unwrap()
        );
        assert!(keys.verify(&none, NOW).is_err());
        assert!(ProjectKeys::new(b"").is_err());
    }
}
