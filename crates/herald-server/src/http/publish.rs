//! `POST /v1/publish` and `POST /v1/broadcast`: authenticate, validate, hand to the broker, and
//! acknowledge only once the message is in history.

use bytes::Bytes;
use futures_util::future::join_all;
use herald_broker::BrokerError;
use herald_core::{
    ErrorCode,
    protocol::{self, Publish, Rejection},
};
use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use subtle::ConstantTimeEq;

use super::{Body, error, json};
use crate::app::App;

/// Checks `authorization: Bearer KEY` against the configured keys, comparing in constant time
/// and against every key so timing reveals neither a key nor which one matched.
fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    if app.config.api_keys.is_empty() {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        return Err(error(
            ErrorCode::Unauthorized,
            "missing `authorization: Bearer <api key>` header",
        ));
    };
    let mut ok = subtle::Choice::from(0);
    for key in app.config.api_keys.iter() {
        ok |= key.as_bytes().ct_eq(presented.as_bytes());
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(error(ErrorCode::Unauthorized, "invalid API key"))
    }
}

/// The token of `Bearer <token>`. The scheme is case-insensitive (RFC 9110 11.1: `BEARER x` and
/// `bearer x` are the same credentials) and may be followed by several spaces.
fn bearer_token(value: &str) -> Option<&str> {
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

async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    authorize(app, &req)?;
    check_content_type(&req)?;
    let limit = app.config.max_body_bytes;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
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
    app.metrics.published.with_label_values(&["rejected"]).inc();
    error(r.code, &r.message)
}

fn broker_error(app: &App, e: &BrokerError) -> (ErrorCode, String) {
    match e {
        BrokerError::Unavailable(_) => {
            app.metrics
                .published
                .with_label_values(&["unavailable"])
                .inc();
            (
                ErrorCode::Unavailable,
                format!("{e}; retry with the same idempotency_key"),
            )
        }
        BrokerError::Internal(_) => {
            app.metrics.published.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "publish failed");
            (ErrorCode::Internal, e.to_string())
        }
    }
}

/// Publishes one message through the broker; the JSON result or error for one channel.
pub async fn publish_one(app: &App, p: Publish) -> Result<serde_json::Value, (ErrorCode, String)> {
    let channel = p.channel.clone();
    let timer = app.metrics.publish_duration.start_timer();
    let result = app.hub.broker().publish(p).await;
    timer.observe_duration();
    match result {
        Ok(published) => {
            let outcome = if published.duplicate {
                "duplicate"
            } else {
                "ok"
            };
            app.metrics.published.with_label_values(&[outcome]).inc();
            Ok(serde_json::json!({
                "channel": channel.as_str(),
                "offset": published.position.offset,
                "epoch": published.position.epoch.as_str(),
            }))
        }
        Err(e) => Err(broker_error(app, &e)),
    }
}

pub async fn publish(app: &App, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let p = match protocol::parse_publish(&body, &app.limits) {
        Ok(p) => p,
        Err(r) => return rejected(app, r),
    };
    match publish_one(app, p).await {
        Ok(v) => json(StatusCode::OK, v.to_string()),
        Err((code, message)) => error(code, &message),
    }
}

pub async fn broadcast(app: &App, req: Request<Incoming>) -> Response<Body> {
    let body = match read_body(app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let publishes = match protocol::parse_broadcast(&body, &app.limits) {
        Ok(p) => p,
        Err(r) => return rejected(app, r),
    };
    let results = join_all(publishes.into_iter().map(|p| {
        let channel = p.channel.clone();
        async move { (channel, publish_one(app, p).await) }
    }))
    .await;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let first_error = results
        .iter()
        .find_map(|(_, r)| r.as_ref().err().map(|(code, _)| *code));
    let items: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(channel, r)| match r {
            Ok(v) => v,
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
