//! Query-string and path helpers.

use std::borrow::Cow;

/// Values of every `key=` pair in `query`, percent-decoded.
pub fn values<'a>(query: Option<&'a str>, key: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The first value of `key`.
pub fn first<'a>(query: Option<&'a str>, key: &'a str) -> Option<Cow<'a, str>> {
    values(query, key).next()
}

/// Percent-decodes a path segment (`%3A` -> `:`). Invalid escapes are kept as they are.
pub fn decode_path(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_decoding() {
        let q = Some("channel=a&channel=chat%3A1&x=1&last_event_id=e%2C1%2Ca");
        assert_eq!(values(q, "channel").collect::<Vec<_>>(), ["a", "chat:1"]);
        assert_eq!(first(q, "last_event_id").as_deref(), Some("e,1,a"));
        assert_eq!(first(None, "x"), None);
        assert_eq!(decode_path("chat%3A1"), "chat:1");
        assert_eq!(decode_path("bad%zz%4"), "bad%zz%4");
        assert_eq!(decode_path("end%41"), "endA");
    }
}
