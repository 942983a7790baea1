//! HTTP routing and the JSON responses every route shares.

mod assets;
pub mod cors;
pub mod head;
mod history;
mod presence;
pub mod publish;
pub mod query;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use herald_core::{ErrorCode, error::error_body};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};

use crate::{app::App, limits::Limit, transport};

/// The response body type of every route (full JSON bodies and SSE streams alike).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error response: `{"error":{"code","message"}}` with the code's status.
pub fn error(code: ErrorCode, message: &str) -> Response<Body> {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, error_body(code, message))
}

/// A `429`/`503` error response with `Retry-After` (whole seconds, at least 1).
pub fn error_retry_after(code: ErrorCode, message: &str, retry_after: Duration) -> Response<Body> {
    let mut resp = error(code, message);
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    resp
}

/// The response to a connection or stream refused by a connection limit.
pub fn refused(r: crate::limits::Refusal) -> Response<Body> {
    error_retry_after(
        r.code(),
        r.message(),
        Duration::from_secs(r.retry_after_secs()),
    )
}

/// Routes one request. Never fails: every problem becomes a JSON error response.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let route = route_label(req.method(), req.uri().path());
    // A debug-level access log. URIs may carry `?token=`: the log writer redacts it.
    let logged =
        tracing::enabled!(tracing::Level::DEBUG).then(|| (req.method().clone(), req.uri().clone()));
    // Browsers: the origin check and CORS apply to the API routes (not the console or health).
    let cors = req.uri().path().starts_with("/v1/").then(|| {
        let h = req.headers();
        let header = |name| h.get(name).map(header::HeaderValue::as_bytes);
        app.config
            .allowed_origins
            .check(header(header::ORIGIN), header(header::HOST))
    });
    let listing = !app.config.allowed_origins.is_any();
    let mut resp = match &cors {
        Some(cors::Verdict::Refused) => {
            app.metrics.limits.hit(Limit::AllowedOrigins);
            cors::forbidden_origin()
        }
        Some(verdict) if req.method() == Method::OPTIONS => {
            match allowed_methods(req.uri().path()) {
                Some(methods) => verdict.preflight(methods, listing),
                None => error(ErrorCode::NotFound, "no such route"),
            }
        }
        _ => route_request(&app, req).await,
    };
    if let Some(verdict) = &cors {
        verdict.decorate(resp.headers_mut(), listing);
    }
    if let Some((method, uri)) = logged {
        tracing::debug!(%method, %uri, status = resp.status().as_u16(), "request");
    }
    app.metrics
        .http_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    Ok(resp)
}

/// A bounded label for the route a request hit (never the raw path).
fn route_label(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (_, "/v1/publish") => "publish",
        (_, "/v1/broadcast") => "broadcast",
        (_, "/v1/sse") => "sse",
        (_, "/v1/poll") => "poll",
        (_, "/v1/ws") => "ws",
        (_, "/healthz") => "healthz",
        (_, "/readyz") => "readyz",
        (_, "/metrics") => "metrics",
        (_, "/") => "console",
        (_, "/herald.js") => "client_js",
        (_, p) if history::matches(p) => "history",
        (_, p) if presence::matches(p) => "presence",
        _ => "other",
    }
}

async fn route_request(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(app).await,
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut resp = Response::new(full(app.metrics.render(&app.hub, &app.connections)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/v1/publish") => publish::publish(app, req).await,
        (&Method::POST, "/v1/broadcast") => publish::broadcast(app, req).await,
        (&Method::GET, "/v1/sse") => transport::sse::handle(app, req).await,
        (&Method::GET, "/v1/poll") => transport::poll::handle(app, req).await,
        (&Method::GET, "/v1/ws") => transport::ws::handle(app, req),
        (&Method::GET | &Method::HEAD, "/") => assets::console(),
        (&Method::GET | &Method::HEAD, "/herald.js") => assets::client_js(),
        (&Method::GET, p) if history::matches(p) => history::handle(app, &req).await,
        (&Method::GET, p) if presence::matches(p) => presence::handle(app, &req).await,
        (_, p) => match allowed_methods(p) {
            Some(allow) => {
                let mut resp = error(
                    ErrorCode::MethodNotAllowed,
                    &format!("{method} is not allowed on {p}; use {allow}"),
                );
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                resp
            }
            None => error(ErrorCode::NotFound, &format!("no route for {p}")),
        },
    }
}

fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/v1/publish" | "/v1/broadcast" => Some("POST"),
        "/healthz" | "/readyz" | "/metrics" | "/" | "/herald.js" => Some("GET, HEAD"),
        "/v1/sse" | "/v1/ws" | "/v1/poll" => Some("GET"),
        p if history::matches(p) || presence::matches(p) => Some("GET"),
        _ => None,
    }
}

/// Ready when not draining and the broker answers within a second.
async fn readyz(app: &App) -> Response<Body> {
    if app.is_draining() {
        return error(ErrorCode::Draining, "draining");
    }
    match tokio::time::timeout(Duration::from_secs(1), app.hub.broker().ready()).await {
        Ok(Ok(())) => json(StatusCode::OK, r#"{"status":"ready"}"#),
        Ok(Err(e)) => error(ErrorCode::Unavailable, &e.to_string()),
        Err(_) => error(ErrorCode::Unavailable, "broker did not answer within 1s"),
    }
}
