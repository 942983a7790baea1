//! `GET /v1/channels/{channel}/presence[?limit=N]` and `GET /v1/channels/{channel}/presence_stats`:
//! who is in a room, for publishers. Authorised like a publish (an API key, scoped to the
//! channel, taking one request from the key's rate), since a room's members are the app's
//! business, not a reader's.

use herald_core::{ChannelName, ErrorCode, protocol};
use hyper::{Request, Response, StatusCode, body::Incoming};

use super::{
    Body, error, json,
    publish::{authorize, check_scope},
    query,
};
use crate::app::App;

const PREFIX: &str = "/v1/channels/";
const MEMBERS: &str = "/presence";
const STATS: &str = "/presence_stats";

/// `Some(stats)` when `path` is a presence route: `false` for the listing, `true` for counts.
fn route(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (channel, stats) = match rest.strip_suffix(MEMBERS) {
        Some(c) => (c, false),
        None => (rest.strip_suffix(STATS)?, true),
    };
    (!channel.is_empty()).then_some((channel, stats))
}

pub fn matches(path: &str) -> bool {
    route(path).is_some()
}

pub async fn handle(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let Some((raw, stats)) = route(req.uri().path()) else {
        return error(ErrorCode::NotFound, "no such route");
    };
    let publisher = match authorize(app, req) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let raw = query::decode_path(raw);
    let channel = match ChannelName::parse_with_limit(&raw, app.config.max_channel_len) {
        Ok(c) => c,
        Err(e) => {
            return error(
                ErrorCode::InvalidChannel,
                &format!("invalid channel {raw:?}: {e}"),
            );
        }
    };
    if let Err((code, message)) = check_scope(publisher, channel.as_str()) {
        return error(code, &message);
    }
    if !app.rooms.is_room(&channel) {
        return error(
            ErrorCode::NotFound,
            &format!("{channel} is not a room: its namespace has no presence"),
        );
    }
    let limit = match query::first(req.uri().query(), "limit").map(|v| v.parse::<usize>()) {
        None => app.rooms.list_max(),
        Some(Ok(l)) => l,
        Some(Err(_)) => {
            return error(
                ErrorCode::BadRequest,
                "`limit` must be a non-negative integer",
            );
        }
    };
    match app.rooms.roster(&channel, (!stats).then_some(limit)).await {
        Ok(roster) if stats => json(
            StatusCode::OK,
            serde_json::json!({
                "channel": channel.as_str(),
                "clients": roster.clients,
                "users": roster.users,
            })
            .to_string(),
        ),
        Ok(roster) => json(StatusCode::OK, protocol::presence_body(&channel, &roster)),
        Err(e) => error(ErrorCode::Unavailable, &e.to_string()),
    }
}
