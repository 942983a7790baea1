//! Browsers: which web origins may open WebSockets and read Herald's responses (CORS).
//!
//! `allowed_origins` lists exact origins (`https://app.example.com`) and subdomain patterns
//! (`https://*.example.com`: any subdomain at any depth, not `example.com` itself). Matching
//! compares scheme, host and port as a whole, never substrings, so `https://example.com.evil.io`
//! and `https://evilexample.com` match nothing. A page from the node's own host (its `Origin`
//! names the request's `Host`) is always allowed, and so is a request without `Origin` (not a
//! browser, or a same-origin GET). With the option unset every origin is allowed, and CORS
//! answers `*` without credentials, so a foreign page never reads with a visitor's cookies.
//!
//! Every `/v1/` route applies it: a request from a refused origin gets `403 forbidden` (a
//! WebSocket before the upgrade), allowed origins get `Access-Control-Allow-Origin` (their own
//! origin), `Access-Control-Allow-Credentials: true` and `Vary: Origin`, and preflight
//! `OPTIONS` requests are answered.

use std::fmt;

use herald_core::ErrorCode;
use hyper::{HeaderMap, Response, StatusCode, header, header::HeaderValue};

use super::{Body, error, full};

#[derive(Clone, PartialEq, Eq)]
enum Pattern {
    /// A normalized origin: `https://app.example.com`, `http://localhost:3000`.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `suffix` starts with its dot.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// The `allowed_origins` option. `None`: every origin.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Option<Vec<Pattern>>);

impl fmt::Debug for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("any origin"),
            Some(list) => f
                .debug_list()
                .entries(list.iter().map(|p| match p {
                    Pattern::Exact(o) => o.clone(),
                    Pattern::Subdomains {
                        scheme,
                        suffix,
                        port,
                    } => format!(
                        "{scheme}://*{suffix}{}",
                        port.map(|p| format!(":{p}")).unwrap_or_default()
                    ),
                }))
                .finish(),
        }
    }
}

/// An origin split into its parts, lowercased, without a default port.
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Parses `scheme://host[:port]` (already lowercase). No path, query, user or fragment: a
/// browser's `Origin` never has them.
fn parse_origin(text: &str) -> Option<Origin<'_>> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if !scheme_ok || rest.is_empty() {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        let (h, p) = rest.split_at(end + 1);
        (h, p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.*[]:".contains(c));
    if !host_ok {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let port = port.filter(|p| Some(*p) != default_port(scheme));
    Some(Origin { scheme, host, port })
}

impl AllowedOrigins {
    /// Comma-separated origins and `scheme://*.domain` patterns; `*` alone: every origin.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let mut list = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Self(None));
            }
            list.push(Self::parse_one(item)?);
        }
        Ok(Self((!list.is_empty()).then_some(list)))
    }

    fn parse_one(item: &str) -> Result<Pattern, String> {
        let lower = item.to_ascii_lowercase();
        let text = lower.strip_suffix('/').unwrap_or(&lower);
        if text == "null" {
            return Err(
                "\"null\" is the origin of sandboxed and file:// pages; it cannot be allowed"
                    .to_owned(),
            );
        }
        let bad = || {
            format!(
                "{item:?} is not an origin like https://app.example.com or https://*.example.com"
            )
        };
        let o = parse_origin(text).ok_or_else(bad)?;
        match o.host.strip_prefix("*.") {
            Some(suffix) => {
                if suffix.contains('*') || !suffix.contains('.') {
                    return Err(format!(
                        "{item:?}: a pattern is `*.` before a domain of at least two labels (https://*.example.com)"
                    ));
                }
                Ok(Pattern::Subdomains {
                    scheme: o.scheme.to_owned(),
                    suffix: format!(".{suffix}"),
                    port: o.port,
                })
            }
            None if o.host.contains('*') => Err(bad()),
            None => Ok(Pattern::Exact(render(&o))),
        }
    }

    /// Every origin is allowed (the option is unset).
    pub fn is_any(&self) -> bool {
        self.0.is_none()
    }

    fn allows(&self, origin: &str) -> bool {
        let Some(list) = &self.0 else {
            return true;
        };
        let lower = origin.to_ascii_lowercase();
        let Some(o) = parse_origin(&lower).filter(|o| !o.host.contains('*')) else {
            return false;
        };
        let normalized = render(&o);
        list.iter().any(|p| match p {
            Pattern::Exact(e) => *e == normalized,
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                *scheme == o.scheme
                    && *port == o.port
                    && o.host.len() > suffix.len()
                    && o.host.ends_with(suffix.as_str())
            }
        })
    }

    /// What a request with these `Origin` and `Host` header values gets.
    pub fn check(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> Verdict {
        let Some(origin) = origin else {
            return Verdict::NoOrigin;
        };
        let Ok(origin) = std::str::from_utf8(origin) else {
            return Verdict::Refused;
        };
        if self.is_any() {
            return Verdict::Any;
        }
        let same_host = host.is_some_and(|h| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.as_bytes().eq_ignore_ascii_case(h))
        });
        match HeaderValue::from_str(origin) {
            Ok(value) if same_host || self.allows(origin) => Verdict::Allowed(value),
            _ => Verdict::Refused,
        }
    }
}

fn render(o: &Origin<'_>) -> String {
    match o.port {
        Some(p) => format!("{}://{}:{p}", o.scheme, o.host),
        None => format!("{}://{}", o.scheme, o.host),
    }
}

/// The outcome of the origin check for one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// No `Origin` header: not a cross-origin browser request. Allowed, no CORS headers.
    NoOrigin,
    /// Every origin is allowed: `Access-Control-Allow-Origin: *`, no credentials.
    Any,
    /// On the list (or the node's own host): this origin, with credentials.
    Allowed(HeaderValue),
    /// Not allowed: 403, and no CORS headers.
    Refused,
}

/// Headers a cross-origin page may read besides the simple ones.
const EXPOSE: &str = "retry-after";
/// Request headers a page may send.
const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id";
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The answer to a request from a refused origin.
pub fn forbidden_origin() -> Response<Body> {
    error(
        ErrorCode::Forbidden,
        "this origin is not allowed (allowed_origins)",
    )
}

impl Verdict {
    /// Adds the CORS response headers. `listing`: an allow-list is configured, so responses vary
    /// by origin (caches must know, also for requests without one).
    pub fn decorate(&self, headers: &mut HeaderMap, listing: bool) {
        let varies = headers
            .get_all(header::VARY)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"));
        if listing && !varies {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        let origin = match self {
            Self::NoOrigin | Self::Refused => return,
            Self::Any => HeaderValue::from_static("*"),
            Self::Allowed(origin) => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                origin.clone()
            }
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE),
        );
    }

    /// The same headers as lines of a raw response head (the SSE fast path writes its own).
    pub fn head_lines(&self, listing: bool) -> String {
        let mut headers = HeaderMap::new();
        self.decorate(&mut headers, listing);
        let mut out = String::new();
        for (name, value) in &headers {
            if let Ok(v) = value.to_str() {
                out.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        out
    }

    /// The answer to an `OPTIONS` request on a route that allows `methods`.
    pub fn preflight(&self, methods: &'static str, listing: bool) -> Response<Body> {
        if matches!(self, Self::Refused) {
            return forbidden_origin();
        }
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        if let Ok(allow) = HeaderValue::from_str(&format!("{methods}, OPTIONS")) {
            h.insert(header::ALLOW, allow);
        }
        if !matches!(self, Self::NoOrigin) {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(methods),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            );
        }
        self.decorate(h, listing);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> AllowedOrigins {
        AllowedOrigins::parse_list(s).expect("valid")
    }

    fn verdict(o: &AllowedOrigins, origin: &str) -> &'static str {
        match o.check(Some(origin.as_bytes()), Some(b"push.herald.io")) {
            Verdict::NoOrigin => "none",
            Verdict::Any => "any",
            Verdict::Allowed(_) => "allowed",
            Verdict::Refused => "refused",
        }
    }

    #[test]
    fn exact_origins_and_subdomain_patterns_never_substrings() {
        let o = list("https://app.example.com, https://*.example.org, http://localhost:3000/");
        for allowed in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://localhost:3000",
            "https://push.herald.io", // the node's own host
        ] {
            assert_eq!(verdict(&o, allowed), "allowed", "{allowed}");
        }
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.io",
            "https://evilapp.example.com",
            "https://example.org",
            "https://evilexample.org",
            "https://example.org.evil.io",
            "https://a.example.org:8443",
            "http://localhost:3001",
            "null",
            "https://app.example.com/path",
            "https://*.example.org",
            "",
        ] {
            assert_eq!(verdict(&o, refused), "refused", "{refused}");
        }
        assert!(matches!(o.check(None, None), Verdict::NoOrigin));
        assert_eq!(verdict(&AllowedOrigins::default(), "https://x.io"), "any");
        assert_eq!(verdict(&list("*"), "https://x.io"), "any");
    }

    #[test]
    fn bad_entries_are_refused_at_start() {
        for bad in [
            "null",
            "example.com",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app.example.com:99999",
            "https://",
        ] {
            assert!(AllowedOrigins::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cors_headers_only_for_allowed_origins() {
        let o = list("https://app.example.com");
        let mut h = HeaderMap::new();
        o.check(Some(b"https://app.example.com"), None)
            .decorate(&mut h, true);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "origin");
        // Decorating twice (a preflight, then the route's common pass) changes nothing.
        o.check(Some(b"https://app.example.com"), None)
            .decorate(&mut h, true);
        assert_eq!(h.get_all("vary").iter().count(), 1);
        let mut h = HeaderMap::new();
        Verdict::Refused.decorate(&mut h, true);
        assert!(h.get("access-control-allow-origin").is_none());
        let pre = Verdict::Refused.preflight("POST", true);
        assert_eq!(pre.status(), 403);
        assert!(pre.headers().get("access-control-allow-origin").is_none());
        let mut h = HeaderMap::new();
        Verdict::Any.decorate(&mut h, false);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
}
