//! `GET /v1/channels/{channel}/history?since=&epoch=&before=&limit=`: a channel's retained
//! messages, oldest first.
//!
//! The response is streamed page by page (each page one bounded broker read, see
//! `history_page_bytes`): the next page is read only when hyper has written the previous one
//! out, so a client that does not read holds at most one page plus hyper's write buffer, and
//! Redis is never held by one big read. The fields that depend on the whole read (`epoch`,
//! `offset`, `recovered`) come after `messages` in the object. A response never has a gap: if
//! history moves on between pages (trimmed, or a new epoch), it ends before that point and the
//! client continues with `since` = the last offset it got.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::{BufMut, Bytes};
use herald_broker::{Broker, BrokerError, History, HistoryQuery, Start};
use herald_core::{ChannelName, Epoch, ErrorCode, Message, StreamPosition};
use http_body_util::{BodyExt, StreamBody};
use hyper::{Response, StatusCode, body::Frame, header};

use super::{Body, error, query};
use crate::{app::App, auth::credentials};

const PREFIX: &str = "/v1/channels/";
const SUFFIX: &str = "/history";
/// Default and maximum number of messages in one response.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn matches(path: &str) -> bool {
    path.len() > PREFIX.len() + SUFFIX.len() && path.starts_with(PREFIX) && path.ends_with(SUFFIX)
}

/// What the request asks for, as the first page's query plus how many messages in all.
struct Request {
    channel: ChannelName,
    start: Start,
    limit: usize,
    /// `recovered` is reported only for reads after a position (`since`, or `epoch` alone).
    with_since: bool,
}

fn parse(app: &App, path: &str, q: Option<&str>) -> Result<Request, Response<Body>> {
    let raw = query::decode_path(&path[PREFIX.len()..path.len() - SUFFIX.len()]).into_owned();
    let channel = ChannelName::parse_with_limit(&raw, app.config.max_channel_len).map_err(|e| {
        error(
            ErrorCode::InvalidChannel,
            &format!("invalid channel {raw:?}: {e}"),
        )
    })?;
    let number = |key: &'static str| -> Result<Option<u64>, Response<Body>> {
        query::first(q, key)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| {
                // `since` and `before` are positions, like `epoch`; `limit` is parsed apart.
                error(
                    ErrorCode::InvalidPosition,
                    &format!("`{key}` must be a non-negative integer"),
                )
            })
    };
    let since = number("since")?;
    let before = number("before")?;
    let limit = match query::first(q, "limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) => l.min(MAX_LIMIT),
        Some(Err(_)) => {
            return Err(error(
                ErrorCode::BadRequest,
                "`limit` must be a non-negative integer",
            ));
        }
    };
    let epoch = match query::first(q, "epoch") {
        None => None,
        Some(e) => Some(
            Epoch::parse(&e)
                .ok_or_else(|| error(ErrorCode::InvalidPosition, "`epoch` is not a valid epoch"))?,
        ),
    };
    let after = |offset: u64| match &epoch {
        Some(epoch) => Start::After(StreamPosition {
            epoch: epoch.clone(),
            offset,
        }),
        None => Start::AfterOffset(offset),
    };
    let (start, limit) = match (since, before) {
        (Some(_), Some(_)) => {
            return Err(error(
                ErrorCode::BadRequest,
                "give `since` (read forward) or `before` (read back), not both",
            ));
        }
        (Some(since), None) => (after(since), limit),
        // The `limit` messages before `before`: offsets are contiguous within an epoch, so that
        // is a forward read from a computed position.
        (None, Some(before)) => {
            let end = before.saturating_sub(1);
            let from = end.saturating_sub(limit as u64);
            (after(from), usize::try_from(end - from).unwrap_or(limit))
        }
        (None, None) if epoch.is_some() => (after(0), limit),
        (None, None) => (Start::Latest, limit),
    };
    Ok(Request {
        channel,
        start,
        limit,
        with_since: since.is_some() || (epoch.is_some() && before.is_none()),
    })
}

pub async fn handle<B>(app: &App, http: &hyper::Request<B>) -> Response<Body> {
    let req = match parse(app, http.uri().path(), http.uri().query()) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // History is a read like a subscribe: the same token, the same rules, checked before the
    // first page is read (every later page is of the same channel).
    let token = credentials::from_request(http, app.auth.cookie());
    let allowed = app
        .auth
        .identify(token.as_deref())
        .and_then(|who| app.auth.check_read(who.as_deref(), &req.channel));
    if let Err(refusal) = allowed {
        return refusal.response();
    }
    let broker = app.hub.broker().clone();
    let page_bytes = app.config.history_page_bytes;
    let query = |start: Start, limit: usize| HistoryQuery {
        start,
        limit: limit.min(crate::server::PAGE_MESSAGES),
        max_bytes: page_bytes,
    };
    // The first page before the headers, so that an unavailable broker is a 503, not a torn body.
    let first = match broker
        .history(&req.channel, query(req.start.clone(), req.limit))
        .await
    {
        Ok(h) => h,
        Err(e) => return error(ErrorCode::Unavailable, &e.to_string()),
    };
    let mut pages = Pages {
        broker,
        channel: req.channel,
        page_bytes,
        left: req.limit,
        recovered: req.with_since && first.recovered,
        next: Some(first),
        sent_any: false,
        held: app.metrics.history_response_bytes.clone(),
    };
    // A response of one page (the usual case) is sent whole, with a content-length; a longer one
    // is streamed (chunked) as the client reads it.
    let Some((Ok(chunk), pages_left)) = pages.next_chunk().await else {
        return error(ErrorCode::Internal, "history response without a body");
    };
    pages = pages_left;
    let body = if pages.next.is_none() {
        super::full(chunk.into_data().unwrap_or_default())
    } else {
        let first = futures_util::stream::once(std::future::ready(Ok(chunk)));
        let rest = futures_util::stream::unfold(pages, Pages::next_chunk);
        StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed_unsync()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// The state of one streamed response.
struct Pages {
    broker: Arc<dyn Broker>,
    channel: ChannelName,
    page_bytes: usize,
    /// Messages the response may still carry.
    left: usize,
    recovered: bool,
    /// The page to render next; `None` once the closing part has been sent.
    next: Option<History>,
    sent_any: bool,
    /// Bytes produced and not yet written (dropped by hyper), for `herald_queued_bytes`.
    held: Arc<AtomicUsize>,
}

impl Pages {
    /// Renders the pending page (reading the one after it first, so that the closing part
    /// knows the final top), or ends the stream.
    async fn next_chunk(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        let page = self.next.take()?;
        let mut out = Vec::with_capacity(
            64 + page
                .messages
                .iter()
                .map(|m| m.stored_len() + 32)
                .sum::<usize>(),
        );
        if !self.sent_any {
            out.extend_from_slice(b"{\"channel\":\"");
            out.extend_from_slice(self.channel.as_str().as_bytes());
            out.extend_from_slice(b"\",\"messages\":[");
        }
        self.left = self.left.saturating_sub(page.messages.len());
        for m in &page.messages {
            if self.sent_any {
                out.push(b',');
            }
            self.sent_any = true;
            render(&mut out, m);
        }
        match self.following(&page).await {
            Some(next) => self.next = Some(next),
            None => {
                let _ = std::io::Write::write_fmt(
                    &mut out,
                    format_args!(
                        "],\"epoch\":\"{}\",\"offset\":{},\"recovered\":{}}}",
                        page.top.epoch, page.top.offset, self.recovered
                    ),
                );
            }
        }
        self.held.fetch_add(out.len(), Ordering::Relaxed);
        let chunk = Bytes::from_owner(Held {
            buf: out,
            counter: self.held.clone(),
        });
        Some((Ok(Frame::data(chunk)), self))
    }

    /// The page after `page`, if the response goes on: not when it is complete, and not when
    /// history moved on in between (the response then ends without a gap). A failed read also
    /// ends it (the client continues with `since`).
    async fn following(&self, page: &History) -> Option<History> {
        let last = page.messages.last()?;
        if self.left == 0 || page.is_complete() {
            return None;
        }
        let query = HistoryQuery::after(
            last.position(),
            self.left.min(crate::server::PAGE_MESSAGES),
            self.page_bytes,
        );
        match self.broker.history(&self.channel, query).await {
            Ok(next) if next.recovered && !next.messages.is_empty() => Some(next),
            Ok(_) => None,
            Err(e) => {
                log_cut(&self.channel, &e);
                None
            }
        }
    }
}

fn log_cut(channel: &ChannelName, e: &BrokerError) {
    tracing::debug!(%channel, error = %e, "history response ended early: a page read failed");
}

/// `{"offset":N,"event":"e","from":"u","info":{..},"published_at_us":T,"data":DATA}`.
fn render(out: &mut Vec<u8>, m: &Message) {
    let _ = std::io::Write::write_fmt(out, format_args!("{{\"offset\":{}", m.offset));
    if let Some(e) = &m.event {
        out.put_slice(b",\"event\":\"");
        out.put_slice(e.as_str().as_bytes());
        out.put_u8(b'"');
    }
    herald_core::protocol::put_sender(out, m.sender.as_deref());
    let _ = std::io::Write::write_fmt(
        out,
        format_args!(",\"published_at_us\":{},\"data\":", m.published_at_us),
    );
    out.put_slice(&m.data);
    out.push(b'}');
}

/// A rendered chunk that counts itself in `herald_queued_bytes` until hyper has written it.
struct Held {
    buf: Vec<u8>,
    counter: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.buf.len(), Ordering::Relaxed);
    }
}
