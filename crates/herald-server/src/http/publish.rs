//! `POST /v1/publish` and `POST /v1/broadcast`: authenticate, validate, hand to the broker, and
//! acknowledge only once the message is in history.

use bytes::Bytes;
use futures_util::future::join_all;
use herald_broker::Published;
use herald_core::{
    ChannelName, ErrorCode,
    protocol::{self, Publish, Rejection},
};
use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header};

use super::{Body, error, error_retry_after, json};
use crate::{
    app::App,
    limits::Limit,
    publishers::{Denied, Publisher},
};

/// The key in `authorization: Bearer KEY`, if any. Only this header authorises a publish:
/// cookies never do (a page on another site can make a browser send them).
fn presented_key(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
}

/// Authenticates the publisher (see [`crate::publishers`]) and takes one request from its
/// rate. `None` when publishing is open.
pub(crate) fn authorize<'a>(
    app: &'a App,
    req: &Request<Incoming>,
) -> Result<Option<&'a Publisher>, Response<Body>> {
    let publisher = match app.publishers.authenticate(presented_key(req)) {
        Ok(p) => p,
        Err(Denied::Missing) => {
            return Err(error(
                ErrorCode::Unauthorized,
                "missing `authorization: Bearer <api key>` header",
            ));
        }
        Err(Denied::Invalid) => return Err(error(ErrorCode::Unauthorized, "invalid API key")),
    };
    if let Some(p) = publisher
        && let Err(wait) = p.take()
    {
        return Err(error_retry_after(
            ErrorCode::RateLimited,
            &format!("API key {:?} is over its rate limit", p.name()),
            wait,
        ));
    }
    Ok(publisher)
}

/// Refuses a channel the publisher's key does not cover.
pub(crate) fn check_scope(
    publisher: Option<&Publisher>,
    channel: &str,
) -> Result<(), (ErrorCode, String)> {
    match publisher {
        Some(p) if !p.may_publish(channel) => Err((
            ErrorCode::Forbidden,
            format!("API key {:?} may not publish to {channel}", p.name()),
        )),
        _ => Ok(()),
    }
}

/// The token of `Bearer <token>`. The scheme is case-insensitive (RFC 9110 11.1: `BEARER x` and
/// `bearer x` are the same credentials) and may be followed by several spaces.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// JSON, or what `curl -d` sends by default (form-encoded) when the body is JSON anyway, or no
/// content type at all. Anything else (multipart, text/plain, ...) is refused with 415.
fn check_content_type(req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "application/x-www-form-urlencoded" => Ok(()),
        _ => Err(error(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON (content-type: application/json)",
        )),
    }
}

async fn read_body(
    app: &App,
    req: Request<Incoming>,
) -> Result<(Bytes, Option<&Publisher>), Response<Body>> {
    let publisher = authorize(app, &req)?;
    check_content_type(&req)?;
    let limit = app.config.max_body_bytes;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok((collected.to_bytes(), publisher)),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            app.metrics.limits.hit(Limit::MaxBodyBytes);
            Err(error(
                ErrorCode::PayloadTooLarge,
                &format!("body exceeds {limit} bytes"),
            ))
        }
        Err(e) => Err(error(
            ErrorCode::BadRequest,
            &format!("cannot read body: {e}"),
        )),
    }
}

fn rejected(app: &App, r: Rejection) -> Response<Body> {
    crate::publish::rejected(&app.metrics, &r);
    error(r.code, &r.message)
}

/// `{"channel","offset","epoch"}`: a publish's result, rendered for HTTP (serialised straight
/// from the borrowed fields: no `serde_json::Value` map per publish).
#[derive(serde::Serialize)]
struct PublishedBody<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
}

impl<'a> PublishedBody<'a> {
    fn of(channel: &'a ChannelName, p: &'a Published) -> Self {
        Self {
            channel: channel.as_str(),
            offset: p.position.offset,
            epoch: p.position.epoch.as_str(),
        }
    }
}

/// Publishes one message: the result or the error for one channel.
async fn publish_one(app: &App, p: Publish) -> Result<Published, (ErrorCode, String)> {
    crate::publish::publish(app.broker.as_ref(), &app.metrics, p)
        .await
        .map_err(|r| (r.code, r.message))
}

pub async fn publish(app: &App, req: Request<Incoming>) -> Response<Body> {
    let (body, publisher) = match read_body(app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let p = match protocol::parse_publish(&body, &app.limits) {
        Ok(p) => p,
        Err(r) => return rejected(app, r),
    };
    if let Err((code, message)) = check_scope(publisher, p.channel.as_str()) {
        return error(code, &message);
    }
    let channel = p.channel.clone();
    match publish_one(app, p).await {
        Ok(published) => match serde_json::to_vec(&PublishedBody::of(&channel, &published)) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error(ErrorCode::Internal, &e.to_string()),
        },
        Err((code, message)) => error(code, &message),
    }
}

pub async fn broadcast(app: &App, req: Request<Incoming>) -> Response<Body> {
    let (body, publisher) = match read_body(app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let publishes = match protocol::parse_broadcast(&body, &app.limits) {
        Ok(p) => p,
        Err(r) => return rejected(app, r),
    };
    // Each channel is checked against the key's scope: the others are still published.
    let results = join_all(publishes.into_iter().map(|p| {
        let channel = p.channel.clone();
        async move {
            let result = match check_scope(publisher, channel.as_str()) {
                Ok(()) => publish_one(app, p).await,
                Err(refused) => Err(refused),
            };
            (channel, result)
        }
    }))
    .await;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let first_error = results
        .iter()
        .find_map(|(_, r)| r.as_ref().err().map(|(code, _)| *code));
    let items: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(channel, r)| match r {
            Ok(published) => serde_json::json!(PublishedBody::of(&channel, &published)),
            Err((code, message)) => serde_json::json!({
                "channel": channel.as_str(),
                "error": {"code": code.as_str(), "message": message},
            }),
        })
        .collect();
    // All failed: the status says why; some failed: 200 with per-channel errors to retry.
    let status = match first_error {
        Some(code) if failed == items.len() => {
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        _ => StatusCode::OK,
    };
    json(status, serde_json::json!({ "results": items }).to_string())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in [
            "Bearer k",
            "bearer k",
            "BEARER k",
            "bEaReR   k ",
            " Bearer k",
        ] {
            assert_eq!(bearer_token(header), Some("k"), "{header:?}");
        }
        for header in ["Basic k", "Bearerk", "Bearer ", "Bearer", "k"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}
