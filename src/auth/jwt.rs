//! JSON Web Tokens (seed 002's clients), on the `jsonwebtoken` crate: HS256 with a shared
//! secret and/or RS256 with a public key. `exp` is required; `sub` names the user.

use super::Subject;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Where JWTs come from and what they must say.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    pub hs256_secret: Option<Vec<u8>>,
    /// A PEM-encoded RSA public key.
    pub rs256_public_key: Option<Vec<u8>>,
    /// Seconds of clock skew allowed on `exp` (and `nbf`).
    pub leeway: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Default leeway on `exp`, in seconds.
pub const DEFAULT_LEEWAY: u64 = 30;

pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("leeway", &self.config.leeway)
            .finish_non_exhaustive()
    }
}

/// Whether a token has a JWT's shape: three parts, the first a JSON header naming an `alg`.
pub fn looks_like(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

impl JwtVerifier {
    /// Fails on a key that is not a PEM RSA public key, or on no key at all.
    pub fn new(config: JwtConfig) -> Result<JwtVerifier, String> {
        match config.hs256_secret.as_deref().map(<[u8]>::len) {
            // Anyone could sign with an empty key.
            Some(0) => return Err("the HS256 secret is empty".into()),
            Some(n) if n < 32 => log::warn!("the HS256 secret has {n} bytes; use 32 or more"),
            _ => {}
        }
        let hs256 = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let rs256 =
            match &config.rs256_public_key {
                Some(pem) => Some(DecodingKey::from_rsa_pem(pem).map_err(|e| {
                    format!("the RS256 public key is not a PEM RSA public key: {e}")
                })?),
                None => None,
            };
        if hs256.is_none() && rs256.is_none() {
            return Err("JWT sign-in needs an HS256 secret or an RS256 public key".into());
        }
        Ok(JwtVerifier {
            hs256,
            rs256,
            config,
        })
    }

    /// The token's subject, or why it is refused. Only the algorithms that have a key are
    /// accepted, each with its own key: `none`, other algorithms, and an HS256 token signed
    /// with the RS256 public key all fail.
    pub fn verify(&self, token: &str) -> Result<Subject, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("malformed or unsupported header ({e})"))?;
        let (alg, key) = match header.alg {
            Algorithm::HS256 => (Algorithm::HS256, self.hs256.as_ref()),
            Algorithm::RS256 => (Algorithm::RS256, self.rs256.as_ref()),
            other => return Err(format!("alg {other:?} is not accepted")),
        };
        let key = key.ok_or_else(|| format!("alg {alg:?} is not accepted"))?;
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway;
        v.validate_nbf = true;
        // A configured issuer or audience must be present, not only right when present.
        let mut required = vec!["exp"];
        required.extend(self.config.issuer.as_ref().map(|_| "iss"));
        required.extend(self.config.audience.as_ref().map(|_| "aud"));
        v.set_required_spec_claims(&required);
        match &self.config.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Value>(token, key, &v)
            .map_err(|e| format!("{e}"))?
            .claims;
        match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => Ok(Subject::Str(s.clone())),
            Some(Value::Number(n)) if n.is_i64() => Ok(Subject::Int(n.as_i64().unwrap_or(0))),
            _ => Err("no usable sub claim".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_rs256_private.pem");
    const PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt_rs256_public.pem");
    const OTHER_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt_other_private.pem");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(JwtConfig {
            hs256_secret: Some(b"hs-secret".to_vec()),
            rs256_public_key: Some(PUBLIC.to_vec()),
            leeway: DEFAULT_LEEWAY,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
        })
        .unwrap()
    }

    fn hs(claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn rs(claims: Value, private: &[u8]) -> String {
        let key = EncodingKey::from_rsa_pem(private).unwrap();
        encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
    }

    #[test]
    fn valid_tokens_name_their_subject() {
        let v = verifier(None, None);
        let exp = now() + 600;
        assert_eq!(
            v.verify(&hs(json!({"sub": "alice", "exp": exp}), b"hs-secret")),
            Ok(Subject::Str("alice".into()))
        );
        assert_eq!(
            v.verify(&rs(json!({"sub": "42", "exp": exp}), PRIVATE)),
            Ok(Subject::Str("42".into()))
        );
        assert_eq!(
            v.verify(&rs(json!({"sub": 42, "exp": exp}), PRIVATE)),
            Ok(Subject::Int(42))
        );
        assert!(looks_like(&hs(json!({"sub": "a", "exp": exp}), b"x")));
        assert!(!looks_like("SFMyNTY.g2gD.abc") && !looks_like("api-token"));
    }

    #[test]
    fn expiry_is_required_and_enforced_with_leeway() {
        let v = verifier(None, None);
        assert!(
            v.verify(&hs(json!({"sub": "a"}), b"hs-secret")).is_err(),
            "no exp"
        );
        assert!(
            v.verify(&hs(json!({"sub": "a", "exp": now() - 10}), b"hs-secret"))
                .is_ok(),
            "within the leeway"
        );
        assert!(
            v.verify(&hs(json!({"sub": "a", "exp": now() - 60}), b"hs-secret"))
                .is_err(),
            "past the leeway"
        );
        assert!(
            v.verify(&hs(json!({"exp": now() + 60}), b"hs-secret"))
                .is_err(),
            "no sub"
        );
        let later = now() + 600;
        let early = hs(
            json!({"sub": "a", "exp": later + 60, "nbf": later}),
            b"hs-secret",
        );
        assert!(v.verify(&early).is_err(), "not valid yet");
    }

    #[test]
    fn wrong_keys_none_and_alg_confusion_are_refused() {
        let v = verifier(None, None);
        let claims = json!({"sub": "a", "exp": now() + 600});
        assert!(v.verify(&hs(claims.clone(), b"other-secret")).is_err());
        assert!(v.verify(&rs(claims.clone(), OTHER_PRIVATE)).is_err());
        // HS256 keyed with the RS256 public key, the classic confusion.
        assert!(v.verify(&hs(claims.clone(), PUBLIC)).is_err());
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        assert!(looks_like(&unsigned));
        assert!(v.verify(&unsigned).is_err(), "alg none");
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"hs-secret"),
        )
        .unwrap();
        assert!(v.verify(&hs384).is_err(), "an alg with no key");
        let only_rs = JwtVerifier::new(JwtConfig {
            rs256_public_key: Some(PUBLIC.to_vec()),
            ..Default::default()
        })
        .unwrap();
        assert!(only_rs.verify(&hs(claims.clone(), PUBLIC)).is_err());
        assert!(only_rs.verify(&hs(claims, b"hs-secret")).is_err());
        assert!(JwtVerifier::new(JwtConfig::default()).is_err());
        let empty = JwtConfig {
            hs256_secret: Some(Vec::new()),
            ..Default::default()
        };
        assert!(JwtVerifier::new(empty).is_err(), "an empty secret");
        assert!(JwtVerifier::new(JwtConfig {
            rs256_public_key: Some(b"not a pem".to_vec()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = verifier(Some("https://issuer"), Some("fawkes"));
        let exp = now() + 600;
        assert!(v
            .verify(&hs(
                json!({"sub": "a", "exp": exp, "iss": "https://issuer", "aud": "fawkes"}),
                b"hs-secret"
            ))
            .is_ok());
        assert!(v
            .verify(&hs(
                json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "fawkes"}),
                b"hs-secret"
            ))
            .is_err());
        assert!(v
            .verify(&hs(
                json!({"sub": "a", "exp": exp, "iss": "https://issuer", "aud": "other"}),
                b"hs-secret"
            ))
            .is_err());
        assert!(v
            .verify(&hs(json!({"sub": "a", "exp": exp}), b"hs-secret"))
            .is_err());
    }
}
