//! The browser side, compiled into the binary: the live console (`GET /`) and the JS client
//! (`GET /herald.js`). Both are small, so a deploy is still one file with nothing to mount.

use hyper::{Response, header};

use super::{Body, full};

static CONSOLE_HTML: &str = include_str!("../../assets/console.html");
static CLIENT_JS: &str = include_str!("../../assets/herald.js");

/// `GET /`: the live console page.
pub fn console() -> Response<Body> {
    asset(CONSOLE_HTML, "text/html; charset=utf-8")
}

/// `GET /herald.js`: the dependency-free browser client.
pub fn client_js() -> Response<Body> {
    asset(CLIENT_JS, "text/javascript; charset=utf-8")
}

/// `no-cache` (revalidate, not "never store"): a browser must not keep running an old client
/// against an upgraded server.
fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_types_and_no_cache() {
        for (resp, ty) in [
            (console(), "text/html; charset=utf-8"),
            (client_js(), "text/javascript; charset=utf-8"),
        ] {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ty);
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
        }
    }
}
