//! Where a subscriber token comes from: `Authorization: Bearer` (scheme case-insensitive), then
//! `?token=`, then the configured cookie. The WebSocket `auth` op is the fourth way (see the
//! WebSocket reader). Works on any header list, so the hyper routes and the SSE fast path (which
//! parses the head itself) read tokens the same way.

/// The query parameter a token may travel in. Its value is redacted from every log line.
pub const QUERY_PARAM: &str = "token";

/// The first token found in `headers` (name, value pairs), `query` or the `cookie` named
/// `cookie_name`. Empty values count as absent; a non-Bearer `Authorization` (e.g. `Basic` for
/// a proxy) is ignored.
pub fn find_token<'a, I>(
    headers: impl Fn() -> I,
    query: Option<&str>,
    cookie_name: &str,
) -> Option<String>
where
    I: Iterator<Item = (&'a str, &'a [u8])>,
{
    if let Some(t) = headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .find_map(|(_, value)| bearer(value))
    {
        return Some(t.to_owned());
    }
    if let Some(t) = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, v)| k == QUERY_PARAM && !v.is_empty())
        .map(|(_, v)| v.into_owned())
    {
        return Some(t);
    }
    headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
        .find_map(|(_, value)| cookie(value, cookie_name))
        .map(str::to_owned)
}

/// [`find_token`] for a hyper request.
pub fn from_request<B>(req: &hyper::Request<B>, cookie_name: &str) -> Option<String> {
    let headers = req.headers();
    find_token(
        || headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        req.uri().query(),
        cookie_name,
    )
}

/// The credentials of `Authorization: Bearer <token>` (parsed like a publisher's API key).
fn bearer(value: &[u8]) -> Option<&str> {
    crate::http::publish::bearer_token(std::str::from_utf8(value).ok()?)
}

/// The value of cookie `name` in a `Cookie: a=1; b=2` header.
fn cookie<'v>(value: &'v [u8], name: &str) -> Option<&'v str> {
    std::str::from_utf8(value)
        .ok()?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        // RFC 6265 allows a quoted value.
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(headers: &[(&str, &str)], query: Option<&str>) -> Option<String> {
        find_token(
            || headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            query,
            "herald_token",
        )
    }

    #[test]
    fn header_then_query_then_cookie() {
        let all = [
            ("Cookie", "a=1; herald_token=c"),
            ("authorization", "Bearer h"),
        ];
        assert_eq!(find(&all, Some("token=q")).as_deref(), Some("h"));
        assert_eq!(
            find(&all[..1], Some("channel=x&token=q%2Eq")).as_deref(),
            Some("q.q")
        );
        assert_eq!(find(&all[..1], Some("channel=x")).as_deref(), Some("c"));
        assert_eq!(find(&[], None), None);
    }

    #[test]
    fn scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        for h in ["Bearer t", "bearer t", "BEARER   t  "] {
            assert_eq!(
                find(&[("Authorization", h)], None).as_deref(),
                Some("t"),
                "{h:?}"
            );
        }
        assert_eq!(find(&[("Authorization", "Basic dXNlcjpwdw==")], None), None);
        assert_eq!(find(&[("Authorization", "Bearer")], None), None);
        assert_eq!(
            find(
                &[("Authorization", "Basic x"), ("cookie", "herald_token=c")],
                None
            )
            .as_deref(),
            Some("c")
        );
    }

    #[test]
    fn cookies_are_matched_by_exact_name() {
        assert_eq!(
            find(
                &[("cookie", "xherald_token=no; herald_token=\"yes\"")],
                None
            )
            .as_deref(),
            Some("yes")
        );
        assert_eq!(find(&[("cookie", "herald_token=")], None), None);
        assert_eq!(
            find(&[("cookie", "other=1"), ("cookie", "herald_token=2")], None).as_deref(),
            Some("2")
        );
        assert_eq!(find(&[], Some("token=")), None);
    }
}
