//! `GET /v1/channels/{channel}/history?since=&epoch=&limit=`: a channel's retained messages.

use herald_core::{ChannelName, Epoch, ErrorCode, StreamPosition};
use hyper::{Response, StatusCode};

use super::{Body, error, json, query};
use crate::app::App;

const PREFIX: &str = "/v1/channels/";
const SUFFIX: &str = "/history";
/// Default and maximum page size.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn matches(path: &str) -> bool {
    path.len() > PREFIX.len() + SUFFIX.len() && path.starts_with(PREFIX) && path.ends_with(SUFFIX)
}

pub async fn handle(app: &App, path: &str, q: Option<&str>) -> Response<Body> {
    let raw = query::decode_path(&path[PREFIX.len()..path.len() - SUFFIX.len()]).into_owned();
    let channel = match ChannelName::parse_with_limit(&raw, app.config.max_channel_len) {
        Ok(c) => c,
        Err(e) => {
            return error(
                ErrorCode::InvalidChannel,
                &format!("invalid channel {raw:?}: {e}"),
            );
        }
    };
    let number = |key: &'static str| -> Result<Option<u64>, Response<Body>> {
        query::first(q, key)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| {
                // `since` is a position, like `epoch`; `limit` is a plain parameter.
                let code = match key {
                    "since" => ErrorCode::InvalidPosition,
                    _ => ErrorCode::BadRequest,
                };
                error(code, &format!("`{key}` must be a non-negative integer"))
            })
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (s, l.map_or(DEFAULT_LIMIT, |l| (l as usize).min(MAX_LIMIT))),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let epoch = match query::first(q, "epoch") {
        None => None,
        Some(e) => match Epoch::parse(&e) {
            Some(e) => Some(e),
            None => return error(ErrorCode::InvalidPosition, "`epoch` is not a valid epoch"),
        },
    };
    let broker = app.hub.broker();
    // `since` without `epoch` means "in the current epoch".
    let epoch = match (since, epoch) {
        (Some(_), None) => match broker.history(&channel, None, 0).await {
            Ok(h) => Some(h.top.epoch),
            Err(e) => return error(ErrorCode::Unavailable, &e.to_string()),
        },
        (_, e) => e,
    };
    let position = epoch.map(|epoch| StreamPosition {
        epoch,
        offset: since.unwrap_or(0),
    });
    let history = match broker.history(&channel, position.as_ref(), limit).await {
        Ok(h) => h,
        Err(e) => return error(ErrorCode::Unavailable, &e.to_string()),
    };
    let mut body = String::with_capacity(
        128 + history
            .messages
            .iter()
            .map(|m| m.data.len() + 64)
            .sum::<usize>(),
    );
    body.push_str(&format!(
        "{{\"channel\":\"{}\",\"epoch\":\"{}\",\"offset\":{},\"recovered\":{},\"messages\":[",
        channel, history.top.epoch, history.top.offset, history.recovered
    ));
    for (i, m) in history.messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"offset\":{},", m.offset));
        if let Some(e) = &m.event {
            body.push_str(&format!("\"event\":\"{}\",", e.as_str()));
        }
        body.push_str(&format!(
            "\"published_at_us\":{},\"data\":",
            m.published_at_us
        ));
        body.push_str(std::str::from_utf8(&m.data).unwrap_or("null"));
        body.push('}');
    }
    body.push_str("]}");
    json(StatusCode::OK, body)
}
