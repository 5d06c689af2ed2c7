//! Exact frame matching with named placeholders.
//!
//! An expected frame is written as the transcript shows it. Where it has no placeholder, the
//! frame must be identical byte for byte. A JSON string starting with `$` (`"$ref1"`) is a
//! placeholder for a value that differs from run to run (`phx_ref`, times): its first
//! occurrence binds it, and every later one must equal that value; the rest of the frame must
//! be structurally equal (same keys, same values).

use serde_json::Value;
use std::collections::HashMap;

pub type Vars = HashMap<String, Value>;

pub fn matches(expected: &str, actual: &str, vars: &mut Vars) -> Result<(), String> {
    if !expected.contains("\"$") {
        return if expected == actual {
            Ok(())
        } else {
            Err("frames differ".into())
        };
    }
    let e: Value = serde_json::from_str(expected).map_err(|e| format!("bad expectation: {e}"))?;
    let a: Value = serde_json::from_str(actual).map_err(|e| format!("not JSON: {e}"))?;
    walk(&e, &a, vars, "$")
}

fn walk(e: &Value, a: &Value, vars: &mut Vars, path: &str) -> Result<(), String> {
    match (e, a) {
        (Value::String(s), _) if s.starts_with('$') => match vars.get(s) {
            Some(bound) if bound != a => Err(format!("{path}: {s} was {bound}, now {a}")),
            Some(_) => Ok(()),
            None => {
                vars.insert(s.clone(), a.clone());
                Ok(())
            }
        },
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{path}: {} elements, expected {}",
                    a.len(),
                    e.len()
                ));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                walk(x, y, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Object(e), Value::Object(a)) => {
            let (ek, ak): (Vec<_>, Vec<_>) = (e.keys().collect(), a.keys().collect());
            if ek != ak {
                return Err(format!("{path}: keys {ak:?}, expected {ek:?}"));
            }
            for (k, x) in e {
                walk(x, &a[k], vars, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        _ if e == a => Ok(()),
        _ => Err(format!("{path}: {a}, expected {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_without_placeholders() {
        let mut v = Vars::new();
        assert!(matches(r#"[null,"1"]"#, r#"[null,"1"]"#, &mut v).is_ok());
        assert!(matches(r#"[null,"1"]"#, r#"[null, "1"]"#, &mut v).is_err());
        assert!(matches(r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#, &mut v).is_err());
    }

    #[test]
    fn placeholders_bind_once() {
        let mut v = Vars::new();
        assert!(matches(r#"{"r":"$r","x":1}"#, r#"{"r":"abc","x":1}"#, &mut v).is_ok());
        assert!(matches(r#"["$r"]"#, r#"["abc"]"#, &mut v).is_ok());
        assert!(matches(r#"["$r"]"#, r#"["abd"]"#, &mut v).is_err());
        assert!(matches(r#"{"r":"$q"}"#, r#"{"r":"x","extra":1}"#, &mut v).is_err());
        assert!(matches(r#"{"r":"$q","x":1}"#, r#"{"r":"x","x":2}"#, &mut v).is_err());
    }
}
