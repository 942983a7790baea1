//! Keeping tokens out of logs.
//!
//! A token in a URL (`?token=`) is the way EventSource can send one, and URLs end up in logs.
//! Every log line Herald writes goes through [`Redacting`], which rewrites `token=<value>` (also
//! `access_token=`, and cookies like `herald_token=`), `Bearer <value>` and anything shaped like
//! a JWT (`eyJ...`) to `[redacted]` before it reaches stderr, whatever library produced the line.

use std::{borrow::Cow, io::Write};

const REDACTED: &str = "[redacted]";

/// Ends a value in a query string, a header or a log field.
fn is_value_end(c: char) -> bool {
    matches!(c, '&' | ';' | ',' | '"' | '\'' | '<' | '>' | '\\' | '`') || c.is_whitespace()
}

/// Characters of a base64url JWT segment.
fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `line` with every token value replaced by `[redacted]`.
pub fn redact(line: &str) -> Cow<'_, str> {
    let lower = line.to_ascii_lowercase();
    if !lower.contains("token=") && !lower.contains("bearer") && !line.contains("eyJ") {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let rest_lower = &lower[i..];
        // `...token=VALUE`
        if rest_lower.starts_with("token=") {
            out.push_str(&rest[.."token=".len()]);
            let value_len = rest["token=".len()..]
                .find(is_value_end)
                .unwrap_or(rest.len() - "token=".len());
            if value_len > 0 {
                out.push_str(REDACTED);
            }
            i += "token=".len() + value_len;
            continue;
        }
        // `Bearer VALUE`
        if rest_lower.starts_with("bearer ") {
            let after = &rest["bearer ".len()..];
            let skip = after.len() - after.trim_start().len();
            let value_len = after[skip..]
                .find(is_value_end)
                .unwrap_or(after.len() - skip);
            out.push_str(&rest[.."bearer ".len() + skip]);
            if value_len > 0 {
                out.push_str(REDACTED);
            }
            i += "bearer ".len() + skip + value_len;
            continue;
        }
        // A JWT: `eyJ` (base64 of `{"`) then two dots between base64url segments.
        if rest.starts_with("eyJ") {
            let len = rest
                .find(|c: char| !is_b64url(c) && c != '.')
                .unwrap_or(rest.len());
            if rest[..len].matches('.').count() >= 2 {
                out.push_str(REDACTED);
                i += len;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    Cow::Owned(out)
}

/// A `tracing_subscriber` writer that redacts each formatted event before writing it to stderr.
/// The formatter hands over one complete line per `write`, so nothing is split across calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Redacting;

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Redacting {
    type Writer = Redacting;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_header_and_cookie_tokens_are_redacted() {
        assert_eq!(
            redact("GET /v1/sse?channel=a&token=abc.def.ghi&x=1 HTTP/1.1"),
            "GET /v1/sse?channel=a&token=[redacted]&x=1 HTTP/1.1"
        );
        assert_eq!(
            redact(r#"uri="/v1/ws?Token=s3cr3t""#),
            r#"uri="/v1/ws?Token=[redacted]""#
        );
        assert_eq!(
            redact("cookie: herald_token=s3cr3t; a=b"),
            "cookie: herald_token=[redacted]; a=b"
        );
        assert_eq!(redact("access_token=s3cr3t"), "access_token=[redacted]");
        assert_eq!(
            redact("authorization: Bearer s3cr3t"),
            "authorization: Bearer [redacted]"
        );
        assert_eq!(redact("token=&next"), "token=&next");
    }

    #[test]
    fn jwt_shaped_strings_are_redacted_anywhere() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln-_x";
        assert_eq!(
            redact(&format!("op auth {jwt} failed")),
            "op auth [redacted] failed"
        );
        assert_eq!(redact("eyJ but not a token."), "eyJ but not a token.");
    }

    #[test]
    fn other_lines_are_untouched_and_unicode_survives() {
        let line = "herald serving broker=memory caf\u{e9} \u{1f600}";
        assert!(matches!(redact(line), Cow::Borrowed(_)));
        assert_eq!(
            redact("t\u{e9}st token=x \u{1f600}"),
            "t\u{e9}st token=[redacted] \u{1f600}"
        );
    }
}
