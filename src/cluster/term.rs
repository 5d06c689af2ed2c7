//! Erlang's External Term Format as it crosses Redis: a bounded decoder for what any Redis
//! client may publish, and an encoder from JSON that writes what OTP 26 writes. Pure, no IO.
//!
//! Written here rather than on `eetf` (which `crate::etf` uses for signed tokens, whose bytes are
//! trusted): a reader of a shared Redis channel must not allocate by a length it has not seen,
//! recurse without bound or panic on a tag it does not know, and the encoder must write map keys
//! in the order OTP does (sorted), which a `HashMap` cannot.

use serde_json::{Map, Number, Value};
use std::io::Read;

const VERSION: u8 = 131;
const COMPRESSED: u8 = 80;
const NEW_FLOAT: u8 = 70;
const NEW_PID: u8 = 88;
const NEW_PORT: u8 = 89;
const NEWER_REFERENCE: u8 = 90;
const SMALL_INTEGER: u8 = 97;
const INTEGER: u8 = 98;
const FLOAT: u8 = 99;
const ATOM: u8 = 100;
const PID: u8 = 103;
const SMALL_TUPLE: u8 = 104;
const LARGE_TUPLE: u8 = 105;
const NIL: u8 = 106;
const STRING: u8 = 107;
const LIST: u8 = 108;
const BINARY: u8 = 109;
const SMALL_BIG: u8 = 110;
const LARGE_BIG: u8 = 111;
const NEW_REFERENCE: u8 = 114;
const SMALL_ATOM: u8 = 115;
const MAP: u8 = 116;
const ATOM_UTF8: u8 = 118;
const SMALL_ATOM_UTF8: u8 = 119;
const V4_PORT: u8 = 120;

const TERM_SIZE: usize = std::mem::size_of::<Term>();

/// A decoded term. Pids and references are kept whole (Phoenix.Tracker's presences carry
/// pids, its transfers references); ports only as what they are. JSON carries none of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Int(i128),
    /// An integer too large for 128 bits, as a float (its magnitude is all JSON could keep).
    BigInt(f64),
    Float(f64),
    Atom(String),
    Binary(Vec<u8>),
    List(Vec<Term>),
    /// A list whose tail is not `[]`.
    ImproperList,
    Tuple(Vec<Term>),
    Map(Vec<(Term, Term)>),
    Pid(Box<Pid>),
    Ref(Box<Reference>),
    /// A port.
    Opaque(&'static str),
}

/// An Erlang process identifier: its node, and three numbers that name it there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid {
    pub node: String,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
}

/// An Erlang reference: its node, the node's creation and up to five words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    pub node: String,
    pub creation: u32,
    pub ids: Vec<u32>,
}

/// Words a reference may have (OTP writes 3, 4 or 5).
const MAX_REF_WORDS: usize = 5;

impl Term {
    pub fn atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    pub fn binary(&self) -> Option<&[u8]> {
        match self {
            Term::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// The value under an atom key of a map.
    /// The memory this term takes, in bytes: its own size, plus the slots of its lists, tuples
    /// and maps and the bytes of its binaries and atoms, all the way down. What the decoder
    /// counts against [`Bounds::max_term_bytes`].
    pub fn footprint(&self) -> usize {
        TERM_SIZE + self.held()
    }

    /// What the term holds beyond its own size.
    fn held(&self) -> usize {
        match self {
            Term::Atom(a) => a.capacity(),
            Term::Binary(b) => b.capacity(),
            Term::List(items) | Term::Tuple(items) => {
                items.capacity() * TERM_SIZE + items.iter().map(Term::held).sum::<usize>()
            }
            Term::Map(pairs) => {
                pairs.capacity() * 2 * TERM_SIZE
                    + pairs
                        .iter()
                        .map(|(k, v)| k.held() + v.held())
                        .sum::<usize>()
            }
            Term::Pid(p) => std::mem::size_of::<Pid>() + p.node.capacity(),
            Term::Ref(r) => {
                std::mem::size_of::<Reference>() + r.node.capacity() + r.ids.capacity() * 4
            }
            Term::Int(_)
            | Term::BigInt(_)
            | Term::Float(_)
            | Term::ImproperList
            | Term::Opaque(_) => 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Term> {
        match self {
            Term::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.atom() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// How much one message may cost to decode.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Largest message, compressed or not, and largest decompressed term, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of lists, tuples and maps.
    pub max_depth: usize,
    /// Memory the decoded term may take, in bytes, as [`Term::footprint`] counts it. A few bytes
    /// on the wire make a term of 32 in memory (an empty list is one byte), so the wire size
    /// alone does not bound this: 8 KiB compressed can unfold to millions of terms.
    pub max_term_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_bytes: 8 * 1024 * 1024,
            max_depth: 64,
            max_term_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge,
    TooDeep,
    Truncated,
    /// A tag this decoder does not read (funs, bit strings, the atom cache...).
    Unsupported(u8),
    BadVersion,
    BadCompression,
    TrailingBytes,
    BadAtom,
    /// The decoded term would take more memory than [`Bounds::max_term_bytes`].
    OverBudget,
}

impl DecodeError {
    /// A message refused for a bound (size, depth, memory) rather than for what it is.
    pub fn is_over_bounds(&self) -> bool {
        matches!(
            self,
            DecodeError::TooLarge | DecodeError::TooDeep | DecodeError::OverBudget
        )
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge => f.write_str("term over the size limit"),
            DecodeError::TooDeep => f.write_str("term nested over the depth limit"),
            DecodeError::Truncated => f.write_str("truncated term"),
            DecodeError::Unsupported(t) => write!(f, "unsupported term tag {t}"),
            DecodeError::BadVersion => f.write_str("not an external term (version byte)"),
            DecodeError::BadCompression => f.write_str("bad compressed term"),
            DecodeError::TrailingBytes => f.write_str("bytes after the term"),
            DecodeError::BadAtom => f.write_str("atom is not valid text"),
            DecodeError::OverBudget => f.write_str("decoded term over the memory limit"),
        }
    }
}

/// Decodes one whole message: the version byte, then a term, compressed or not.
pub fn decode(bytes: &[u8], bounds: Bounds) -> Result<Term, DecodeError> {
    if bytes.len() > bounds.max_bytes {
        return Err(DecodeError::TooLarge);
    }
    let body = match bytes {
        [VERSION, COMPRESSED, rest @ ..] => {
            let (size, stream) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Truncated)?;
            let size = u32::from_be_bytes(*size) as usize;
            if size > bounds.max_bytes {
                return Err(DecodeError::TooLarge);
            }
            // Read one byte past the declared size, to see a stream that lies about it.
            let mut out = Vec::with_capacity(size);
            flate2::read::ZlibDecoder::new(stream)
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| DecodeError::BadCompression)?;
            if out.len() != size {
                return Err(DecodeError::BadCompression);
            }
            std::borrow::Cow::Owned(out)
        }
        [VERSION, rest @ ..] => std::borrow::Cow::Borrowed(rest),
        _ => return Err(DecodeError::BadVersion),
    };
    let mut r = Reader {
        buf: &body,
        at: 0,
        max_depth: bounds.max_depth,
        budget: bounds.max_term_bytes,
    };
    r.charge(TERM_SIZE)?;
    let term = r.term(0)?;
    if r.at != r.buf.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(term)
}

/// Reads terms; every slot it allocates and every byte a term holds is charged to `budget`
/// before (for slots) or as soon as (for an atom's text, at most 510 bytes) it is made.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    max_depth: usize,
    /// Bytes of term memory still allowed.
    budget: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(DecodeError::OverBudget)?;
        Ok(())
    }

    /// Room for `n` terms, charged before it is allocated.
    fn slots(&mut self, n: usize) -> Result<Vec<Term>, DecodeError> {
        self.charge(n.checked_mul(TERM_SIZE).ok_or(DecodeError::OverBudget)?)?;
        Ok(Vec::with_capacity(n))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// A count of elements each at least `min` bytes long: refused before any allocation if
    /// the rest of the buffer cannot hold them.
    fn count(&mut self, n: usize, min: usize) -> Result<usize, DecodeError> {
        if n.saturating_mul(min) > self.buf.len() - self.at {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn atom_text(&mut self, len: usize, latin1: bool) -> Result<String, DecodeError> {
        let raw = self.take(len)?;
        let text = if latin1 {
            raw.iter().map(|&b| char::from(b)).collect()
        } else {
            std::str::from_utf8(raw)
                .map(str::to_owned)
                .map_err(|_| DecodeError::BadAtom)?
        };
        self.charge(text.capacity())?;
        Ok(text)
    }

    fn term(&mut self, depth: usize) -> Result<Term, DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            SMALL_INTEGER => Term::Int(i128::from(self.u8()?)),
            INTEGER => {
                let b = self.take(4)?;
                Term::Int(i128::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            SMALL_BIG | LARGE_BIG => {
                let n = if tag == SMALL_BIG {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                let sign = self.u8()?;
                let digits = self.take(n)?;
                big(sign != 0, digits)
            }
            NEW_FLOAT => {
                let b = self.take(8)?;
                Term::Float(f64::from_be_bytes(b.try_into().expect("8 bytes")))
            }
            FLOAT => {
                // The old 31-byte text form, "%.20e" padded with zeros.
                let raw = self.take(31)?;
                let text = std::str::from_utf8(raw).map_err(|_| DecodeError::BadAtom)?;
                let n = text.trim_end_matches('\0').trim().parse::<f64>();
                Term::Float(n.map_err(|_| DecodeError::BadAtom)?)
            }
            ATOM | ATOM_UTF8 => {
                let len = self.u16()?;
                Term::Atom(self.atom_text(len, tag == ATOM)?)
            }
            SMALL_ATOM | SMALL_ATOM_UTF8 => {
                let len = usize::from(self.u8()?);
                Term::Atom(self.atom_text(len, tag == SMALL_ATOM)?)
            }
            BINARY => {
                let len = self.u32()?;
                let raw = self.take(len)?;
                self.charge(len)?;
                Term::Binary(raw.to_vec())
            }
            STRING => {
                // A list of bytes (an Erlang charlist).
                let len = self.u16()?;
                let raw = self.take(len)?;
                let mut items = self.slots(len)?;
                items.extend(raw.iter().map(|&b| Term::Int(i128::from(b))));
                Term::List(items)
            }
            NIL => Term::List(Vec::new()),
            LIST => {
                let n = self.u32()?;
                let n = self.count(n, 1)?;
                let mut items = self.slots(n)?;
                for _ in 0..n {
                    items.push(self.term(depth + 1)?);
                }
                match self.term(depth + 1)? {
                    Term::List(tail) if tail.is_empty() => Term::List(items),
                    _ => Term::ImproperList,
                }
            }
            SMALL_TUPLE | LARGE_TUPLE => {
                let n = if tag == SMALL_TUPLE {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                let n = self.count(n, 1)?;
                let mut items = self.slots(n)?;
                for _ in 0..n {
                    items.push(self.term(depth + 1)?);
                }
                Term::Tuple(items)
            }
            MAP => {
                let n = self.u32()?;
                let n = self.count(n, 2)?;
                self.charge(
                    n.checked_mul(2 * TERM_SIZE)
                        .ok_or(DecodeError::OverBudget)?,
                )?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.term(depth + 1)?;
                    let v = self.term(depth + 1)?;
                    pairs.push((k, v));
                }
                Term::Map(pairs)
            }
            PID | NEW_PID => {
                let node = self.node(depth)?;
                let (id, serial) = (self.u32()? as u32, self.u32()? as u32);
                let creation = if tag == PID {
                    u32::from(self.u8()?)
                } else {
                    self.u32()? as u32
                };
                self.charge(std::mem::size_of::<Pid>())?;
                Term::Pid(Box::new(Pid {
                    node,
                    id,
                    serial,
                    creation,
                }))
            }
            NEW_PORT | V4_PORT => {
                let _ = self.node(depth)?;
                self.take(if tag == NEW_PORT { 8 } else { 12 })?;
                Term::Opaque("port")
            }
            NEW_REFERENCE | NEWER_REFERENCE => {
                let words = self.u16()?;
                if words > MAX_REF_WORDS {
                    return Err(DecodeError::Unsupported(tag));
                }
                let node = self.node(depth)?;
                let creation = if tag == NEW_REFERENCE {
                    u32::from(self.u8()?)
                } else {
                    self.u32()? as u32
                };
                let mut ids = Vec::with_capacity(words);
                for _ in 0..words {
                    ids.push(self.u32()? as u32);
                }
                self.charge(std::mem::size_of::<Reference>() + words * 4)?;
                Term::Ref(Box::new(Reference {
                    node,
                    creation,
                    ids,
                }))
            }
            other => return Err(DecodeError::Unsupported(other)),
        })
    }

    /// The node atom inside a pid, port or reference.
    fn node(&mut self, depth: usize) -> Result<String, DecodeError> {
        match self.term(depth + 1)? {
            Term::Atom(a) => Ok(a),
            _ => Err(DecodeError::BadAtom),
        }
    }
}

fn big(negative: bool, digits_le: &[u8]) -> Term {
    let significant = digits_le.iter().rposition(|&d| d != 0).map_or(0, |i| i + 1);
    if significant <= 15 {
        let mut v: i128 = 0;
        for &d in digits_le[..significant].iter().rev() {
            v = (v << 8) | i128::from(d);
        }
        return Term::Int(if negative { -v } else { v });
    }
    let mut f = 0.0f64;
    for &d in digits_le[..significant].iter().rev() {
        f = f * 256.0 + f64::from(d);
    }
    Term::BigInt(if negative { -f } else { f })
}

/// What JSON cannot carry, named for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson(pub &'static str);

/// A term as JSON, the way Phoenix's JSON serializer (Jason) writes it: maps with binary or
/// atom keys as objects, `nil`/`true`/`false` as null and booleans, other atoms as strings.
pub fn to_json(t: &Term) -> Result<Value, NotJson> {
    Ok(match t {
        Term::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
            (Ok(v), _) => Value::from(v),
            (_, Ok(v)) => Value::from(v),
            // Beyond 64 bits JSON numbers here are floats.
            _ => float(*i as f64)?,
        },
        Term::BigInt(f) | Term::Float(f) => float(*f)?,
        Term::Atom(a) => match a.as_str() {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        Term::Binary(b) => Value::String(
            String::from_utf8(b.clone()).map_err(|_| NotJson("a binary that is not UTF-8"))?,
        ),
        Term::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Term::ImproperList => return Err(NotJson("an improper list")),
        Term::Tuple(_) => return Err(NotJson("a tuple")),
        Term::Map(pairs) => {
            let mut m = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    Term::Binary(b) => std::str::from_utf8(b)
                        .map_err(|_| NotJson("a map key that is not UTF-8"))?
                        .to_owned(),
                    Term::Atom(a) => a.clone(),
                    _ => return Err(NotJson("a map key that is not a string or an atom")),
                };
                m.insert(key, to_json(v)?);
            }
            Value::Object(m)
        }
        Term::Pid(_) => return Err(NotJson("pid")),
        Term::Ref(_) => return Err(NotJson("reference")),
        Term::Opaque(what) => return Err(NotJson(what)),
    })
}

/// `:erlang.phash2(Binary)` before its range is applied: erts's `make_hash2` of a binary, Bob
/// Jenkins's lookup2 block hash seeded with its constant for binaries. Phoenix.Tracker picks
/// a topic's shard as `phash2(topic, pool_size)`, this modulo the pool size.
pub fn phash2_binary(bytes: &[u8]) -> u32 {
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        for (x, y, z, shift) in [
            (0, 1, 2, -13),
            (1, 2, 0, 8),
            (2, 0, 1, -13),
            (0, 1, 2, -12),
            (1, 2, 0, 16),
            (2, 0, 1, -5),
            (0, 1, 2, -3),
            (1, 2, 0, 10),
            (2, 0, 1, -15),
        ] {
            let mut v = [*a, *b, *c];
            v[x] = v[x].wrapping_sub(v[y]).wrapping_sub(v[z]);
            v[x] ^= if shift < 0 {
                v[z] >> -shift
            } else {
                v[z] << shift
            };
            (*a, *b, *c) = (v[0], v[1], v[2]);
        }
    }
    // erts hashes no bytes at all for an empty binary: its seed is the hash.
    if bytes.is_empty() {
        return 0x08d1_2e65;
    }
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    let (mut a, mut b, mut c) = (0x9e37_79b9u32, 0x9e37_79b9u32, 0x08d1_2e65u32);
    let mut k = bytes;
    while k.len() >= 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    c = c.wrapping_add(bytes.len() as u32);
    for (i, &byte) in k.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            // c's lowest byte holds the length.
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    mix(&mut a, &mut b, &mut c);
    c
}

/// JSON as a term, the way Phoenix's JSON decoding makes it: objects as maps with binary keys,
/// null and booleans as `nil`, `true`, `false`, numbers as integers where they are whole.
pub fn from_json(v: &Value) -> Term {
    match v {
        Value::Null => Term::Atom("nil".into()),
        Value::Bool(b) => Term::Atom(b.to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Term::Int(i.into()),
            (_, Some(u)) => Term::Int(u.into()),
            _ => Term::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Term::Binary(s.as_bytes().to_vec()),
        Value::Array(items) => Term::List(items.iter().map(from_json).collect()),
        Value::Object(m) => Term::Map(
            m.iter()
                .map(|(k, v)| (Term::Binary(k.as_bytes().to_vec()), from_json(v)))
                .collect(),
        ),
    }
}

fn float(f: f64) -> Result<Value, NotJson> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or(NotJson("a float JSON cannot hold"))
}

/// Writes terms in OTP 26's encoding: UTF-8 atoms (SMALL_ATOM_UTF8_EXT), the smallest integer
/// encoding, NEW_FLOAT_EXT, map keys in Erlang's term order.
pub struct Encoder {
    out: Vec<u8>,
    atoms: Atoms,
}

/// How atoms are written: OTP 26 and later write UTF-8 atoms; OTP 25 and before write an atom
/// whose characters are all Latin-1 as `ATOM_EXT`. Every OTP since R16 reads both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atoms {
    Otp26,
    Otp25,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// Starts a message: the version byte.
    pub fn new() -> Encoder {
        Encoder::with_atoms(Atoms::Otp26)
    }

    pub fn with_atoms(atoms: Atoms) -> Encoder {
        Encoder {
            out: vec![VERSION],
            atoms,
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    pub fn atom(&mut self, name: &str) -> &mut Self {
        let latin1 = self.atoms == Atoms::Otp25 && name.chars().all(|c| u32::from(c) < 256);
        if latin1 {
            let bytes: Vec<u8> = name.chars().map(|c| c as u8).collect();
            self.out.push(ATOM);
            self.out
                .extend_from_slice(&(bytes.len().min(u16::MAX as usize) as u16).to_be_bytes());
            self.out
                .extend_from_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
            return self;
        }
        // An atom is at most 255 characters, so at most 1,020 bytes: a decoded one always fits.
        let bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        match u8::try_from(bytes.len()) {
            Ok(len) => self.out.extend_from_slice(&[SMALL_ATOM_UTF8, len]),
            Err(_) => {
                self.out.push(ATOM_UTF8);
                self.out
                    .extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            }
        }
        self.out.extend_from_slice(bytes);
        self
    }

    fn float(&mut self, f: f64) -> &mut Self {
        self.out.push(NEW_FLOAT);
        self.out.extend_from_slice(&f.to_be_bytes());
        self
    }

    /// A proper list's head: its length; the caller writes the items, then `[]`.
    fn list(&mut self, len: usize) {
        self.out.push(LIST);
        self.out.extend_from_slice(&(len as u32).to_be_bytes());
    }

    pub fn pid(&mut self, p: &Pid) -> &mut Self {
        self.out.push(NEW_PID);
        self.atom(&p.node);
        for n in [p.id, p.serial, p.creation] {
            self.out.extend_from_slice(&n.to_be_bytes());
        }
        self
    }

    pub fn reference(&mut self, r: &Reference) -> &mut Self {
        let words = &r.ids[..r.ids.len().min(MAX_REF_WORDS)];
        self.out.push(NEWER_REFERENCE);
        self.out
            .extend_from_slice(&(words.len() as u16).to_be_bytes());
        self.atom(&r.node);
        self.out.extend_from_slice(&r.creation.to_be_bytes());
        for w in words {
            self.out.extend_from_slice(&w.to_be_bytes());
        }
        self
    }

    /// Any term, as OTP writes it: a map's keys in Erlang's term order (OTP keeps a map of up to
    /// 32 keys sorted; a larger one it writes in hash order, which no reader depends on), a list
    /// of bytes as a string. A big integer decoded as a float is written as that float; an
    /// improper list or a port, which are never built here, as `[]` and `undefined`.
    pub fn term(&mut self, t: &Term) -> &mut Self {
        match t {
            Term::Int(i) => self.int(*i),
            Term::BigInt(f) | Term::Float(f) => self.float(*f),
            Term::Atom(a) => self.atom(a),
            Term::Binary(b) => self.binary(b),
            Term::List(items) if items.is_empty() => {
                self.out.push(NIL);
                self
            }
            Term::List(items) => {
                let bytes: Option<Vec<u8>> = (items.len() <= u16::MAX as usize)
                    .then(|| {
                        (items.iter())
                            .map(|i| match i {
                                Term::Int(n) => u8::try_from(*n).ok(),
                                _ => None,
                            })
                            .collect()
                    })
                    .flatten();
                if let Some(bytes) = bytes {
                    self.out.push(STRING);
                    self.out
                        .extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                    self.out.extend_from_slice(&bytes);
                    return self;
                }
                self.list(items.len());
                for i in items {
                    self.term(i);
                }
                self.out.push(NIL);
                self
            }
            Term::Tuple(items) => {
                if let Ok(n) = u8::try_from(items.len()) {
                    self.tuple(n);
                } else {
                    self.out.push(LARGE_TUPLE);
                    self.out
                        .extend_from_slice(&(items.len() as u32).to_be_bytes());
                }
                for i in items {
                    self.term(i);
                }
                self
            }
            Term::Map(pairs) => {
                self.map(pairs.len() as u32);
                let mut sorted: Vec<&(Term, Term)> = pairs.iter().collect();
                sorted.sort_by(|a, b| order(&a.0, &b.0));
                for (k, v) in sorted {
                    self.term(k);
                    self.term(v);
                }
                self
            }
            Term::Pid(p) => self.pid(p),
            Term::Ref(r) => self.reference(r),
            Term::ImproperList => {
                self.out.push(NIL);
                self
            }
            Term::Opaque(_) => self.atom("undefined"),
        }
    }

    pub fn binary(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.push(BINARY);
        self.out
            .extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.out.extend_from_slice(bytes);
        self
    }

    pub fn tuple(&mut self, arity: u8) -> &mut Self {
        self.out.extend_from_slice(&[SMALL_TUPLE, arity]);
        self
    }

    pub fn map(&mut self, pairs: u32) -> &mut Self {
        self.out.push(MAP);
        self.out.extend_from_slice(&pairs.to_be_bytes());
        self
    }

    pub fn int(&mut self, i: i128) -> &mut Self {
        if (0..=255).contains(&i) {
            self.out.extend_from_slice(&[SMALL_INTEGER, i as u8]);
        } else if let Ok(v) = i32::try_from(i) {
            self.out.push(INTEGER);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else {
            let digits: Vec<u8> = {
                let mut m = i.unsigned_abs();
                let mut d = Vec::new();
                while m > 0 {
                    d.push(m as u8);
                    m >>= 8;
                }
                d
            };
            self.out
                .extend_from_slice(&[SMALL_BIG, digits.len() as u8, u8::from(i < 0)]);
            self.out.extend_from_slice(&digits);
        }
        self
    }

    /// A JSON value, as Phoenix's JSON decoder would have built it: objects as maps with
    /// binary keys, strings as binaries, null and booleans as atoms.
    pub fn json(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.atom("nil"),
            Value::Bool(b) => self.atom(if *b { "true" } else { "false" }),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => self.int(i128::from(i)),
                (_, Some(u), _) => self.int(i128::from(u)),
                (_, _, Some(f)) => self.float(f),
                _ => self.atom("nil"),
            },
            Value::String(s) => self.binary(s.as_bytes()),
            Value::Array(items) => {
                if items.is_empty() {
                    self.out.push(NIL);
                    return self;
                }
                self.list(items.len());
                for i in items {
                    self.json(i);
                }
                self.out.push(NIL);
                self
            }
            Value::Object(m) => {
                self.map(m.len() as u32);
                // Binary keys in term order are byte order; sort in case the map keeps
                // insertion order.
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_unstable();
                for k in keys {
                    self.binary(k.as_bytes());
                    self.json(&m[k]);
                }
                self
            }
        }
    }
}

/// Erlang's term order: number < atom < reference < port < pid < tuple < map < nil < list <
/// binary; tuples by size, then element by element; maps by size, then keys, then values.
pub fn order(a: &Term, b: &Term) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(t: &Term) -> u8 {
        match t {
            Term::Int(_) | Term::BigInt(_) | Term::Float(_) => 0,
            Term::Atom(_) => 1,
            Term::Ref(_) => 2,
            Term::Opaque(_) => 3,
            Term::Pid(_) => 4,
            Term::Tuple(_) => 5,
            Term::Map(_) => 6,
            Term::List(l) if l.is_empty() => 7,
            Term::List(_) | Term::ImproperList => 8,
            Term::Binary(_) => 9,
        }
    }
    fn number(t: &Term) -> f64 {
        match t {
            Term::Int(i) => *i as f64,
            Term::BigInt(f) | Term::Float(f) => *f,
            _ => 0.0,
        }
    }
    fn seq(a: &[Term], b: &[Term]) -> Ordering {
        (a.iter().zip(b))
            .map(|(x, y)| order(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(a.len().cmp(&b.len()))
    }
    match (a, b) {
        (Term::Int(x), Term::Int(y)) => x.cmp(y),
        (Term::Atom(x), Term::Atom(y)) => x.cmp(y),
        (Term::Binary(x), Term::Binary(y)) => x.cmp(y),
        (Term::Tuple(x), Term::Tuple(y)) => x.len().cmp(&y.len()).then_with(|| seq(x, y)),
        (Term::List(x), Term::List(y)) => seq(x, y),
        (Term::Pid(x), Term::Pid(y)) => x.cmp(y),
        (Term::Ref(x), Term::Ref(y)) => x.cmp(y),
        (Term::Map(x), Term::Map(y)) => x.len().cmp(&y.len()).then_with(|| {
            fn sorted(m: &[(Term, Term)]) -> Vec<&(Term, Term)> {
                let mut v: Vec<&(Term, Term)> = m.iter().collect();
                v.sort_by(|p, q| order(&p.0, &q.0));
                v
            }
            let (x, y) = (sorted(x), sorted(y));
            (x.iter().zip(&y))
                .map(|(p, q)| order(&p.0, &q.0))
                .chain(x.iter().zip(&y).map(|(p, q)| order(&p.1, &q.1)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        }),
        _ if rank(a) == 0 && rank(b) == 0 => number(a).total_cmp(&number(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: Value) -> Value {
        let mut e = Encoder::new();
        e.json(&v);
        to_json(&decode(&e.finish(), Bounds::default()).unwrap()).unwrap()
    }

    #[test]
    fn json_roundtrips() {
        let v = json!({"s": "héllo ✓", "i": 42, "neg": -7, "int32": 100000, "big": 12345678901234567890u64,
            "min": i64::MIN, "f": 1.5, "n": null, "t": true, "fa": false, "l": [1, "two", 3.25, null, {"x": 1}],
            "m": {"empty": {}, "nested": {"k": "v"}}, "e": []});
        assert_eq!(roundtrip(v.clone()), v);
        // As a term, the same: the same bytes as the JSON writer's, and back to the same JSON.
        let t = from_json(&v);
        assert_eq!(to_json(&t).unwrap(), v);
        let (mut a, mut b) = (Encoder::new(), Encoder::new());
        a.json(&v);
        b.term(&t);
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn integers_in_the_smallest_encoding() {
        let enc = |i: i128| {
            let mut e = Encoder::new();
            e.int(i);
            e.finish()
        };
        assert_eq!(enc(42), [131, 97, 42]);
        assert_eq!(enc(-7), [131, 98, 255, 255, 255, 249]);
        assert_eq!(enc(256), [131, 98, 0, 0, 1, 0]);
        // SMALL_BIG_EXT, digits little-endian: the bytes of capture 01.
        assert_eq!(
            enc(12345678901234567890),
            [131, 110, 8, 0, 0xd2, 0x0a, 0x1f, 0xeb, 0x8c, 0xa9, 0x54, 0xab]
        );
        assert_eq!(enc(-(1 << 40)), [131, 110, 6, 1, 0, 0, 0, 0, 0, 1]);
        for i in [
            0i128,
            255,
            256,
            -1,
            i128::from(i32::MIN),
            1 << 40,
            -(1 << 70),
        ] {
            assert_eq!(decode(&enc(i), Bounds::default()), Ok(Term::Int(i)));
        }
    }

    #[test]
    fn what_json_cannot_carry_is_named() {
        let not = |t: Term| to_json(&t).unwrap_err().0;
        assert_eq!(not(Term::Binary(vec![0xff])), "a binary that is not UTF-8");
        assert_eq!(not(Term::Tuple(vec![])), "a tuple");
        assert_eq!(not(Term::Opaque("port")), "port");
        assert_eq!(
            not(Term::Map(vec![(Term::Int(1), Term::Int(1))])),
            "a map key that is not a string or an atom"
        );
        assert_eq!(to_json(&Term::Atom("ok".into())), Ok(json!("ok")));
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        let b = Bounds {
            max_bytes: 64,
            max_depth: 3,
            ..Bounds::default()
        };
        // A list that claims four billion elements in nine bytes.
        assert_eq!(
            decode(&[131, 108, 255, 255, 255, 255, 106], b),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[131, 109, 0, 0, 0, 9, 1], b),
            Err(DecodeError::Truncated)
        );
        let mut deep = vec![131];
        deep.extend([108, 0, 0, 0, 1].repeat(5));
        deep.extend([106; 6]);
        assert_eq!(decode(&deep, b), Err(DecodeError::TooDeep));
        assert_eq!(decode(&[0; 65], b), Err(DecodeError::TooLarge));
        assert_eq!(decode(&[130, 106], b), Err(DecodeError::BadVersion));
        assert_eq!(decode(&[131, 106, 106], b), Err(DecodeError::TrailingBytes));
        assert_eq!(
            decode(&[131, 117, 0], b),
            Err(DecodeError::Unsupported(117))
        );
        // A compressed term that says it inflates to a gigabyte.
        assert_eq!(
            decode(&[131, 80, 0x40, 0, 0, 0, 0x78, 0x9c], b),
            Err(DecodeError::TooLarge)
        );
        // One that lies about its size.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut z, &[106]).unwrap();
        let mut lie = vec![131, 80, 0, 0, 0, 2];
        lie.extend(z.finish().unwrap());
        assert_eq!(decode(&lie, b), Err(DecodeError::BadCompression));
    }

    /// A list of `n` empty lists, compressed: 8 million of them fit in 8,347 bytes.
    fn empty_lists_bomb(n: u32) -> Vec<u8> {
        let mut raw = vec![LIST];
        raw.extend(n.to_be_bytes());
        raw.resize(raw.len() + n as usize + 1, NIL);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &raw).unwrap();
        let mut msg = vec![VERSION, COMPRESSED];
        msg.extend((raw.len() as u32).to_be_bytes());
        msg.extend(z.finish().unwrap());
        msg
    }

    #[test]
    fn a_compressed_bomb_is_refused_by_its_memory() {
        let bomb = empty_lists_bomb(8_000_000);
        assert!(bomb.len() < 9000, "{}", bomb.len());
        // Its wire size is within the default bounds; its 8 million terms (256 MB) are not.
        assert_eq!(
            decode(&bomb, Bounds::default()),
            Err(DecodeError::OverBudget)
        );
        // The same shape within the budget decodes, and costs what it says.
        let small = empty_lists_bomb(1000);
        let t = decode(&small, Bounds::default()).unwrap();
        assert_eq!(t.footprint(), TERM_SIZE * 1001);
        let exact = Bounds {
            max_term_bytes: TERM_SIZE * 1001,
            ..Bounds::default()
        };
        assert!(decode(&small, exact).is_ok());
        let short = Bounds {
            max_term_bytes: TERM_SIZE * 1001 - 1,
            ..Bounds::default()
        };
        assert_eq!(decode(&small, short), Err(DecodeError::OverBudget));
    }

    #[test]
    fn every_kind_of_term_is_charged() {
        let mut e = Encoder::new();
        e.json(&json!({"a": [1, "bcd", {"e": null}], "big": u64::MAX, "f": 1.5, "s": "héllo"}));
        let bytes = e.finish();
        let t = decode(&bytes, Bounds::default()).unwrap();
        let need = t.footprint();
        // Slots: the map's 4 pairs, the list's 3, the inner map's 1 pair; bytes: keys and strings.
        let slots = 1 + 4 * 2 + 3 + 2;
        let held = "a".len()
            + "big".len()
            + "f".len()
            + "s".len()
            + "bcd".len()
            + "e".len()
            + "nil".len()
            + "héllo".len();
        assert_eq!(need, slots * TERM_SIZE + held);
        for max in [need - 1, need / 2, TERM_SIZE, 0] {
            let b = Bounds {
                max_term_bytes: max,
                ..Bounds::default()
            };
            assert_eq!(decode(&bytes, b), Err(DecodeError::OverBudget), "{max}");
        }
        let b = Bounds {
            max_term_bytes: need,
            ..Bounds::default()
        };
        assert_eq!(decode(&bytes, b), Ok(t));
        // A charlist (STRING_EXT) takes a slot per byte.
        let chars = decode(&[131, 107, 0, 3, b'a', b'b', b'c'], Bounds::default()).unwrap();
        assert_eq!(chars.footprint(), 4 * TERM_SIZE);
    }

    #[test]
    fn truncations_never_panic() {
        let mut e = Encoder::new();
        e.json(&json!({"a": [1, "b", {"c": 2.5}], "big": u64::MAX}));
        let full = e.finish();
        for n in 0..full.len() {
            assert!(decode(&full[..n], Bounds::default()).is_err(), "{n}");
        }
    }

    /// Against `:erlang.phash2(Bin, 4294967296)` on OTP 25.2.3 (erts 13.1.5): every length
    /// from 0 to 24 bytes (no, one and two 12-byte blocks, every tail length), and topics.
    #[test]
    fn phash2_is_erlangs() {
        let erlang: [u32; 25] = [
            147926629, 1589197455, 261815530, 1306188027, 3219329547, 504217779, 1818048662,
            731689103, 3561888030, 2087839144, 187868928, 96993671, 686521495, 3501102500,
            445108337, 3209565879, 3491374364, 1536467649, 3764977431, 1837953597, 1672357388,
            197372035, 1011054470, 2116396220, 2489409165,
        ];
        let bytes = b"abcdefghijklmnopqrstuvwx";
        for (n, &hash) in erlang.iter().enumerate() {
            assert_eq!(phash2_binary(&bytes[..n]), hash, "{n} bytes");
        }
        // And `phash2(Topic, 8)`, the shard of a pool of 8.
        for (topic, hash, of8) in [
            ("room:lobby", 225471484, 4),
            ("channel:lobby", 1457910691, 3),
            ("channel:1", 845245029, 5),
            ("a much longer topic name:42", 2272765273, 1),
        ] {
            assert_eq!(phash2_binary(topic.as_bytes()), hash, "{topic}");
            assert_eq!(hash % 8, of8, "{topic}");
        }
    }
}
