//! Compacting already-validated JSON into one line.
//!
//! Message data is stored and fanned out exactly as the publisher sent it, minus insignificant
//! whitespace: one line is what SSE `data:` needs, and skipping a parse/serialize round-trip keeps
//! number formatting and key order as published.

/// Removes whitespace outside string literals. `json` must already be valid JSON (e.g. a
/// `serde_json::value::RawValue`); JSON strings cannot contain raw newlines, so the result is
/// always a single line.
pub fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
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

#[cfg(test)]
mod tests {
    use super::compact;
    use proptest::prelude::*;

    #[test]
    fn strips_whitespace_outside_strings_only() {
        assert_eq!(
            compact("{ \"a b\" : [1, 2 ,\n 3],\r\n\t\"c\":\"x\\\" y\" }"),
            "{\"a b\":[1,2,3],\"c\":\"x\\\" y\"}"
        );
        assert_eq!(compact("\"\\\\\" "), "\"\\\\\"");
    }

    proptest! {
        #[test]
        fn compacting_pretty_json_preserves_the_value(v in crate::fuzzing::strategies::json()) {
            let pretty = serde_json::to_string_pretty(&v).expect("serializable");
            let c = compact(&pretty);
            prop_assert!(!c.contains('\n'));
            let back: serde_json::Value = serde_json::from_str(&c).expect("still JSON");
            prop_assert_eq!(back, v);
        }
    }
}
