//! `GET /v1/poll?channel=a&channel=b[&last_event_id=TOKEN][&timeout=25s]`: long-polling, for
//! networks whose proxies buffer streaming responses (where SSE and WebSocket never deliver).
//!
//! A poll is a short-lived subscription. Its channels are subscribed exactly like an SSE
//! stream's ([`super::open`]: the same checks, positions and resume token), so the hub queues
//! the history after each position at once, then live messages, with the seam between them
//! closed as for any subscriber. The poll answers as soon as a message is queued, with every
//! message queued by then, or when `timeout` passes with none. Either way the answer carries the
//! resume token for every channel, which the client sends back as `last_event_id` with its next
//! poll, to this node or any other: nothing is kept between polls.
//!
//! `recovered` is false when a position the request named could not be served (its epoch is
//! gone, or messages after it are no longer retained) or a channel's stream was reset while the
//! poll waited; a channel without a position starts from now and does not count.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use herald_core::{ErrorCode, token::ResumeToken};
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use tokio::time::Instant;

use super::{Connection, Opened, sse};
use crate::{
    app::App,
    auth::credentials,
    http::{Body, error, json, query},
    hub::{Delivery, Item},
};

/// How long a poll waits for a message when the client does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let q = req.uri().query();
    let timeout = match timeout(app, q) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let header_token = sse::last_event_id(&req);
    let subscriber_token = credentials::from_request(&req, app.auth.cookie());
    let permit = match sse::admit(app, &req, false) {
        Ok(permit) => permit,
        Err(resp) => return resp,
    };
    let opened = super::open(
        app,
        "poll",
        q,
        header_token,
        subscriber_token.as_deref(),
        // Nothing waits on the outbox closing but the poll itself, which polls the outbox.
        None,
    );
    let Opened {
        mut conn,
        resume,
        who,
    } = match opened.await {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    conn.hold(permit);
    // A poll never outlasts its token: the next one is refused with token_expired instead.
    let mut until = Instant::now() + timeout;
    if let Some(who) = &who {
        until = until.min(app.auth.expires_at(who));
    }
    let answer = collect(app, &conn, &resume, until).await;
    let mut resp = json(StatusCode::OK, answer);
    // Every answer is for one position at one moment: never cached, by anyone.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The `timeout` parameter (`25s`, `500ms`, `2m`, or seconds), at most `poll_max_timeout`.
fn timeout(app: &App, q: Option<&str>) -> Result<Duration, Response<Body>> {
    let max = app.config.poll_max_timeout;
    match query::first(q, "timeout") {
        None => Ok(DEFAULT_TIMEOUT.min(max)),
        Some(t) => crate::config::parse_duration(&t)
            .map(|t| t.min(max))
            .map_err(|e| error(ErrorCode::BadRequest, &format!("`timeout`: {e}"))),
    }
}

/// Waits for the first message (or `until`, or this node's turn to drain), then renders
/// everything queued by then.
async fn collect(app: &App, conn: &Connection, resume: &ResumeToken, until: Instant) -> Bytes {
    let mut token = ResumeToken::default();
    let mut recovered = true;
    let mut messages: Vec<Arc<Delivery>> = Vec::new();
    let mut batch = VecDeque::new();
    let timer = tokio::time::sleep_until(until);
    let drained = app.drained();
    tokio::pin!(timer, drained);
    loop {
        let closed = tokio::select! {
            // What is queued first: a poll that is due and has history answers with it.
            biased;
            closed = conn.outbox.take_into(&mut batch) => closed,
            () = &mut timer => break,
            // A draining node answers its polls at their own moment in the drain window; the
            // client's next poll goes to another node.
            () = &mut drained => break,
        };
        for item in batch.drain(..) {
            match item {
                Item::Subscribed(s) => {
                    // A channel's first `subscribed` says whether its position was served; a
                    // second one is a reset while the poll waited.
                    let asked = resume.get(s.channel.as_str()).is_some();
                    let reset = token.get(s.channel.as_str()).is_some();
                    if !s.recovered && (asked || reset) {
                        recovered = false;
                    }
                    token.set(&s.channel, s.position);
                }
                Item::Message(d) => {
                    token.advance(&d.msg.channel, &d.msg.epoch, d.msg.offset);
                    messages.push(d);
                }
                Item::Raw(_) => {}
            }
        }
        // A slow consumer (more than the queue bound arrived at once) answers with what it
        // has; the token says where the next poll resumes.
        if closed.is_some() || !messages.is_empty() {
            break;
        }
    }
    let oldest = messages.iter().map(|d| d.msg.published_at_us).min();
    app.metrics.wrote("poll", messages.len() as u64, oldest);
    let mut id = String::new();
    token.write_to(&mut id);
    herald_core::poll::response(messages.iter().map(|d| &*d.msg), &id, recovered)
}
