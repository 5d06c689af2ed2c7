//! Phoenix.Token, as Plug.Crypto 2.x signs and verifies it (Phoenix 1.7 and 1.8 alike):
//! `<b64url("HS256")>.<b64url(term_to_binary({data, signed_at_ms, max_age_s}))>.<b64url(MAC)>`,
//! the MAC an HMAC over the first two parts as written, keyed by
//! PBKDF2-HMAC-SHA256(secret_key_base, salt, 1,000 iterations, 32 bytes).

use super::Subject;
use crate::etf;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use eetf::Term;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// What `Phoenix.Token.sign/4` stores when no `max_age` is given, and what `verify` then uses.
pub const DEFAULT_MAX_AGE: i64 = 86_400;

/// Why a token was refused, as Plug.Crypto tells it apart (`:invalid`, `:expired`), plus what
/// Fawkes cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid,
    Expired,
    /// Valid and current, but its data is neither an integer nor a string.
    UnusableData,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Invalid => "invalid (bad signature, wrong secret or salt, or malformed)",
            Refusal::Expired => "expired",
            Refusal::UnusableData => "its data is neither an integer nor a string",
        })
    }
}

/// Signs and verifies the tokens of one secret_key_base and salt. The key is derived once,
/// here, not per token (PBKDF2 is slow on purpose).
#[derive(Clone)]
pub struct PhoenixTokens {
    key: [u8; 32],
    /// Overrides the max age the token carries, as `verify(..., max_age: N)` does.
    max_age: Option<i64>,
}

impl std::fmt::Debug for PhoenixTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoenixTokens")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

const HEADERS: [&str; 3] = ["SFMyNTY", "SFMzODQ", "SFM1MTI"];

/// Whether a token has a Plug.Crypto MessageVerifier header (HS256, HS384 or HS512).
pub fn looks_like(token: &str) -> bool {
    token
        .split_once('.')
        .is_some_and(|(h, _)| HEADERS.contains(&h))
}

impl PhoenixTokens {
    pub fn new(secret_key_base: &str, salt: &str, max_age: Option<i64>) -> PhoenixTokens {
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(secret_key_base.as_bytes(), salt.as_bytes(), 1000, &mut key);
        PhoenixTokens { key, max_age }
    }

    /// `Phoenix.Token.sign(endpoint, salt, data, signed_at: signed_at_ms / 1000, max_age: max_age)`.
    pub fn sign(&self, data: &Subject, signed_at_ms: i64, max_age: i64) -> String {
        let data = match data {
            Subject::Int(i) => etf::int(*i),
            Subject::Str(s) => etf::binary(s.as_bytes()),
        };
        let payload = etf::encode(&etf::tuple(vec![
            data,
            etf::int(signed_at_ms),
            etf::int(max_age),
        ]));
        let signed = format!("{}.{}", HEADERS[0], URL_SAFE_NO_PAD.encode(payload));
        let mac = self.mac(HEADERS[0], signed.as_bytes()).expect("HS256");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// `Phoenix.Token.verify/4` at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Subject, Refusal> {
        let mut parts = token.splitn(3, '.');
        let (Some(header), Some(payload), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Invalid);
        };
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refusal::Invalid)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        self.check_mac(header, signed.as_bytes(), &sig)?;
        let message = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Refusal::Invalid)?;
        let term = etf::decode(&message).map_err(|_| Refusal::Invalid)?;
        let (data, signed_at, token_max_age) = match &term {
            Term::Tuple(t) if t.elements.len() == 3 => (
                &t.elements[0],
                etf::as_i64(&t.elements[1]).ok_or(Refusal::Invalid)?,
                MaxAge::of(&t.elements[2]).ok_or(Refusal::Invalid)?,
            ),
            // Tokens signed before the max age was stored: the default one applies.
            Term::Tuple(t) if t.elements.len() == 2 => (
                &t.elements[0],
                etf::as_i64(&t.elements[1]).ok_or(Refusal::Invalid)?,
                MaxAge::Secs(DEFAULT_MAX_AGE as f64),
            ),
            // Plug.Crypto still reads tokens of its 1.x format.
            Term::Map(m) => {
                let get = |k: &str| m.map.get(&etf::atom(k));
                let signed = get("signed")
                    .and_then(etf::as_i64)
                    .ok_or(Refusal::Invalid)?;
                (
                    get("data").ok_or(Refusal::Invalid)?,
                    signed,
                    MaxAge::Secs(DEFAULT_MAX_AGE as f64),
                )
            }
            _ => return Err(Refusal::Invalid),
        };
        let max_age = self
            .max_age
            .map_or(token_max_age, |s| MaxAge::Secs(s as f64));
        if max_age.expired(signed_at, now_ms) {
            return Err(Refusal::Expired);
        }
        if let Some(i) = etf::as_i64(data) {
            Ok(Subject::Int(i))
        } else if let Some(s) = etf::as_str(data) {
            Ok(Subject::Str(s.to_owned()))
        } else {
            Err(Refusal::UnusableData)
        }
    }

    fn mac(&self, header: &str, signed: &[u8]) -> Option<Vec<u8>> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
            let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Some(match header {
            "SFMyNTY" => run::<Hmac<Sha256>>(&self.key, signed),
            "SFMzODQ" => run::<Hmac<Sha384>>(&self.key, signed),
            "SFM1MTI" => run::<Hmac<Sha512>>(&self.key, signed),
            _ => return None,
        })
    }

    /// Compares in constant time, as Plug.Crypto does.
    fn check_mac(&self, header: &str, signed: &[u8], sig: &[u8]) -> Result<(), Refusal> {
        let expected = self.mac(header, signed).ok_or(Refusal::Invalid)?;
        let same = expected.len() == sig.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), sig));
        same.then_some(()).ok_or(Refusal::Invalid)
    }
}

enum MaxAge {
    Infinity,
    Secs(f64),
}

impl MaxAge {
    fn of(t: &Term) -> Option<MaxAge> {
        match etf::as_atom(t) {
            Some("infinity") => Some(MaxAge::Infinity),
            Some(_) => None,
            None => etf::as_f64(t).map(MaxAge::Secs),
        }
    }

    /// Plug.Crypto: never for `:infinity`, always for a max age of 0 or less, else when
    /// `signed + trunc(max_age * 1000) < now`.
    fn expired(&self, signed_at_ms: i64, now_ms: i64) -> bool {
        match *self {
            MaxAge::Infinity => false,
            MaxAge::Secs(s) if s <= 0.0 => true,
            MaxAge::Secs(s) => signed_at_ms.saturating_add((s * 1000.0).trunc() as i64) < now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example and the tokens of protocol_tests/reference/phoenix-token.md, minted by
    // Phoenix 1.7.24 with this secret_key_base.
    const SKB: &str =
        "conformance-fixture-secret-key-base-0123456789abcdef0123456789abcdef0123456789";
    const EXAMPLE_42: &str =
        "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.oZadrq1kuFls1GcnkmSDhW3Y_2PLNLdiIb9suL1Ssz8";
    const EXAMPLE_STR: &str = "SFMyNTY.g2gDbQAAAAd1c2VyLTQybgYAAGjlz4sBYgAADhA.weoqoQgB3Wp4DKzdJAzF1o-11CoMwG5KFfzeJcXxQl4";
    const LONG_INT: &str =
        "SFMyNTY.g2gDYSpuBgBUtGAqogFiEswDAA.TS4P5MssDWBclqvPQr0yU82hGumSUJDsJ6_p4rKk7IQ";
    const LONG_STR: &str = "SFMyNTY.g2gDbQAAAAd1c2VyLTQybgYAVbRgKqIBYhLMAwA.4dUYTnu1FhgzlXh6qBbQrb00LSpjCCrHdvWBKXQrW4w";
    const MAP_DATA: &str = "SFMyNTY.g2gDdAAAAAFtAAAAB3VzZXJfaWRhKm4GAFa0YCqiAWISzAMA.SHKRrgdv3QpUv0aP3H9b-Zqg5e7xdSaqZ1PcKFa1O-I";
    const OTHER_SALT: &str =
        "SFMyNTY.g2gDYSpuBgBVtGAqogFiEswDAA.weoquzMd1bopBhiEK3hV3Sf8PCirCHCJdJP0yEscJLE";
    const SIGNED_AT: i64 = 1_700_000_000_000;

    fn tokens() -> PhoenixTokens {
        PhoenixTokens::new(SKB, "user socket", None)
    }

    #[test]
    fn key_is_pbkdf2_of_the_secret_and_salt() {
        let hex: String = tokens().key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "f7131812c2a8bca35baecf583dd5bafd494c377bc7e7bb8f1ede7c8795db8848"
        );
    }

    #[test]
    fn signs_byte_for_byte_as_phoenix() {
        let t = tokens();
        assert_eq!(
            t.sign(&Subject::Int(42), SIGNED_AT, DEFAULT_MAX_AGE),
            EXAMPLE_42
        );
        assert_eq!(
            t.sign(&Subject::Str("user-42".into()), SIGNED_AT, 3600),
            EXAMPLE_STR
        );
    }

    #[test]
    fn verifies_as_phoenix() {
        let t = tokens();
        // A year after the ten-year tokens were signed (2026-11-30T02:55:10.420Z).
        let now = 1_796_007_310_420 + 365 * 86_400_000;
        assert_eq!(t.verify(LONG_INT, now), Ok(Subject::Int(42)));
        assert_eq!(t.verify(LONG_STR, now), Ok(Subject::Str("user-42".into())));
        assert_eq!(t.verify(MAP_DATA, now), Err(Refusal::UnusableData));
        assert_eq!(t.verify(OTHER_SALT, now), Err(Refusal::Invalid));
        assert_eq!(t.verify(EXAMPLE_42, now), Err(Refusal::Expired));
        // The same token within its day, and a day and a millisecond later.
        assert_eq!(
            t.verify(EXAMPLE_42, SIGNED_AT + 86_400_000),
            Ok(Subject::Int(42))
        );
        assert_eq!(
            t.verify(EXAMPLE_42, SIGNED_AT + 86_400_001),
            Err(Refusal::Expired)
        );
        // A configured max age overrides the token's own, as `verify(..., max_age: N)`.
        let short = PhoenixTokens::new(SKB, "user socket", Some(60));
        assert_eq!(short.verify(LONG_INT, now), Err(Refusal::Expired));
        let none = PhoenixTokens::new(SKB, "user socket", Some(0));
        assert_eq!(none.verify(EXAMPLE_42, SIGNED_AT), Err(Refusal::Expired));
        let with_salt = PhoenixTokens::new(SKB, "other salt", None);
        assert_eq!(with_salt.verify(OTHER_SALT, now), Ok(Subject::Int(42)));
    }

    #[test]
    fn tampering_and_garbage_are_invalid() {
        let t = tokens();
        let now = SIGNED_AT;
        let mut flipped = EXAMPLE_42.to_owned();
        flipped.replace_range(10..11, "B");
        for bad in [
            "",
            "SFMyNTY",
            "SFMyNTY..",
            "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA",
            &flipped,
            &EXAMPLE_42.replace("SFMyNTY", "SFMzODQ"),
            &format!("{EXAMPLE_42}x"),
            "SFMyNTY.!!!.???",
        ] {
            assert_eq!(t.verify(bad, now), Err(Refusal::Invalid), "{bad}");
        }
        assert!(looks_like(EXAMPLE_42) && looks_like("SFM1MTI.a.b"));
        assert!(!looks_like("eyJhbGciOiJIUzI1NiJ9.e30.x") && !looks_like("plain-api-token"));
    }

    #[test]
    fn tokens_without_a_stored_max_age_get_the_default() {
        let t = tokens();
        let payload = etf::encode(&etf::tuple(vec![etf::int(9), etf::int(SIGNED_AT)]));
        let signed = format!("SFMyNTY.{}", URL_SAFE_NO_PAD.encode(payload));
        let mac = t.mac("SFMyNTY", signed.as_bytes()).unwrap();
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(
            t.verify(&token, SIGNED_AT + 86_400_000),
            Ok(Subject::Int(9))
        );
        assert_eq!(
            t.verify(&token, SIGNED_AT + 86_400_001),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn hs384_and_hs512_headers_and_infinity() {
        let t = tokens();
        let payload = URL_SAFE_NO_PAD.encode(etf::encode(&etf::tuple(vec![
            etf::int(7),
            etf::int(SIGNED_AT),
            etf::atom("infinity"),
        ])));
        for header in ["SFMzODQ", "SFM1MTI"] {
            let signed = format!("{header}.{payload}");
            let mac = t.mac(header, signed.as_bytes()).unwrap();
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac));
            assert_eq!(t.verify(&token, i64::MAX), Ok(Subject::Int(7)), "{header}");
        }
    }
}
