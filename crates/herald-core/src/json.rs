//! Compacting already-validated JSON into one line, and checking that every client can read it.
//!
//! Message data is stored and fanned out exactly as the publisher sent it, minus insignificant
//! whitespace: one line is what SSE `data:` needs, and skipping a parse/serialize round-trip keeps
//! number formatting and key order as published.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The deepest nesting of arrays and objects accepted in message data. Strict parsers stop
/// somewhere (serde_json at 128 levels, counting the frame that carries the data; Python at
/// about 1,000), and a message none of them can parse would stop a subscriber on it.
pub const MAX_DEPTH: usize = 64;

/// Removes whitespace outside string literals. `json` must already be valid JSON (e.g. a
/// `serde_json::value::RawValue`); JSON strings cannot contain raw newlines, so the result is
/// always a single line.
///
/// Works on bytes and copies the runs between removed whitespace whole: every byte it looks
/// for (`"`, `\\`, whitespace) is ASCII, and no byte of a multi-byte UTF-8 character is, so a
/// run always starts and ends on a character boundary.
pub fn compact(json: &str) -> String {
    let bytes = json.as_bytes();
    // Most data has no whitespace at all: one scan (vectorised) and a copy.
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&json[run..i]);
            run = i + 1;
        }
    }
    out.push_str(&json[run..]);
    out
}

/// Checks that valid JSON is also interoperable (I-JSON, RFC 7493): no string escape that is
/// not Unicode (a lone surrogate such as `"\ud800"`), no number beyond a double's range
/// (`1e400`), and at most [`MAX_DEPTH`] levels of nesting. JSON's grammar allows all three, but
/// a strict client (serde_json, Go) cannot parse a frame containing one, so such data would stop
/// those subscribers at that message. Reads every value once without building it.
pub fn check_interoperable(json: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(json);
    Checked { depth: 0 }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
}

/// Visits one value (and everything in it) at `depth`.
struct Checked {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // `deserialize_any` decodes strings and numbers (what `IgnoredAny` would skip).
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(Checked { depth: inner })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while map.next_key_seed(Checked { depth: inner })?.is_some() {
            map.next_value_seed(Checked { depth: inner })?;
        }
        Ok(())
    }
}

impl Checked {
    fn nested<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth == MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(self.depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, check_interoperable, compact};
    use proptest::prelude::*;

    #[test]
    fn strips_whitespace_outside_strings_only() {
        assert_eq!(
            compact("{ \"a b\" : [1, 2 ,\n 3],\r\n\t\"c\":\"x\\\" y\" }"),
            "{\"a b\":[1,2,3],\"c\":\"x\\\" y\"}"
        );
        assert_eq!(compact("\"\\\\\" "), "\"\\\\\"");
        assert_eq!(
            compact(" [\"é \u{1F600}\" , \"\\u00e9\"] "),
            "[\"é \u{1F600}\",\"\\u00e9\"]"
        );
    }

    /// What `compact` did before it worked on bytes: one char at a time.
    fn compact_by_chars(json: &str) -> String {
        let mut out = String::new();
        let (mut in_string, mut escaped) = (false, false);
        for c in json.chars() {
            if in_string {
                out.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
                out.push(c);
            } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
                out.push(c);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn compacting_bytes_is_compacting_chars(json in "[ \t\r\n\"\\\\a-z0-9é\u{1F600}{}\\[\\],:]{0,64}") {
            prop_assert_eq!(compact(&json), compact_by_chars(&json));
        }
    }

    #[test]
    fn interoperable_json_only() {
        // Found by the `publish` fuzz target: these were accepted as data, and a serde_json (or
        // Go) subscriber cannot parse the frame that carries them.
        for bad in [
            r#"{"tit\ud800le":"hi"}"#,
            r#""\udc00""#,
            "1e400",
            "[-1E+999]",
        ] {
            assert!(check_interoperable(bad).is_err(), "{bad}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_interoperable(&deep(MAX_DEPTH)).is_ok());
        let err = check_interoperable(&deep(MAX_DEPTH + 1)).expect_err("too deep");
        assert!(err.contains("nested deeper than 64"), "{err}");
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(check_interoperable(&objects).is_err());
        for ok in [
            r#""\ud83d\ude00 \u00e9 \/""#,
            "1e308",
            "1e-400",
            "123456789012345678901234567890",
            r#"{"a":1,"a":2}"#,
            "null",
        ] {
            assert_eq!(check_interoperable(ok), Ok(()), "{ok}");
        }
    }

    proptest! {
        #[test]
        fn compacting_pretty_json_preserves_the_value(v in crate::fuzzing::strategies::json()) {
            prop_assert_eq!(check_interoperable(&v.to_string()), Ok(()));
            let pretty = serde_json::to_string_pretty(&v).expect("serializable");
            let c = compact(&pretty);
            prop_assert!(!c.contains('\n'));
            let back: serde_json::Value = serde_json::from_str(&c).expect("still JSON");
            prop_assert_eq!(back, v);
        }
    }
}
