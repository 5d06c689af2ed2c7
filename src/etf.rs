//! Erlang's External Term Format, the encoding of `:erlang.term_to_binary/1`, on the `eetf`
//! crate: the few shapes Fawkes reads and writes (Phoenix.Token payloads). Pure, no IO.
//!
//! Integers are written as OTP writes them, the smallest of SMALL_INTEGER_EXT (0..=255),
//! INTEGER_EXT (32-bit) and SMALL_BIG_EXT, so that what Fawkes signs is byte-identical to what
//! Phoenix signs for the same term.

use eetf::{Atom, BigInteger, Binary, FixInteger, Term};
use num_traits::ToPrimitive;

pub use eetf::Tuple;

/// Decodes one term (the version byte first). `eetf` panics on a few tags it does not
/// support, so a panic is turned into an error here. It also trusts the lengths it reads
/// (allocating before reading): decode only bytes whose origin is checked, such as a payload
/// under a verified signature.
pub fn decode(bytes: &[u8]) -> Result<Term, String> {
    std::panic::catch_unwind(|| Term::decode(std::io::Cursor::new(bytes)))
        .map_err(|_| "unsupported term".to_owned())?
        .map_err(|e| e.to_string())
}

/// Encodes a term, version byte first.
pub fn encode(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec fails only for terms no caller here builds (atoms over 65,535 bytes).
    term.encode(&mut out)
        .expect("Fawkes encodes only small, well-formed terms");
    out
}

/// An integer in the encoding OTP picks for it.
pub fn int(i: i64) -> Term {
    match i32::try_from(i) {
        Ok(small) => Term::from(FixInteger::from(small)),
        Err(_) => Term::from(BigInteger::from(i)),
    }
}

/// A binary (an Elixir string).
pub fn binary(bytes: impl Into<Vec<u8>>) -> Term {
    Term::from(Binary::from(bytes.into()))
}

pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

pub fn tuple(elements: Vec<Term>) -> Term {
    Term::from(Tuple::from(elements))
}

/// An integer term that fits in 64 bits.
pub fn as_i64(t: &Term) -> Option<i64> {
    match t {
        Term::FixInteger(i) => Some(i64::from(i.value)),
        Term::BigInteger(b) => b.value.to_i64(),
        _ => None,
    }
}

/// A number as a float (integers included).
pub fn as_f64(t: &Term) -> Option<f64> {
    match t {
        Term::Float(f) => Some(f.value),
        Term::FixInteger(i) => Some(f64::from(i.value)),
        Term::BigInteger(b) => b.value.to_f64(),
        _ => None,
    }
}

/// A binary holding UTF-8 text.
pub fn as_str(t: &Term) -> Option<&str> {
    match t {
        Term::Binary(b) => std::str::from_utf8(&b.bytes).ok(),
        _ => None,
    }
}

pub fn as_atom(t: &Term) -> Option<&str> {
    match t {
        Term::Atom(a) => Some(&a.name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_encoding_otp_gives_them() {
        assert_eq!(encode(&int(42)), [131, 97, 42]);
        assert_eq!(encode(&int(86_400)), [131, 98, 0, 1, 0x51, 0x80]);
        assert_eq!(encode(&int(-1)), [131, 98, 255, 255, 255, 255]);
        assert_eq!(
            encode(&int(1_700_000_000_000)),
            [131, 110, 6, 0, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01]
        );
        for i in [0, 255, 256, -5, i64::from(i32::MAX) + 1, i64::MIN, i64::MAX] {
            assert_eq!(as_i64(&decode(&encode(&int(i))).unwrap()), Some(i), "{i}");
        }
    }

    #[test]
    fn strings_atoms_and_tuples() {
        let t = tuple(vec![binary("user-42"), atom("infinity")]);
        let bytes = encode(&t);
        assert_eq!(
            bytes,
            [
                131, 104, 2, 109, 0, 0, 0, 7, b'u', b's', b'e', b'r', b'-', b'4', b'2', 119, 8,
                b'i', b'n', b'f', b'i', b'n', b'i', b't', b'y'
            ]
        );
        let Term::Tuple(back) = decode(&bytes).unwrap() else {
            panic!("not a tuple")
        };
        assert_eq!(as_str(&back.elements[0]), Some("user-42"));
        assert_eq!(as_atom(&back.elements[1]), Some("infinity"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [&[][..], &[131], &[130, 97, 1], &[131, 68, 0], &[131, 82, 0]] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
