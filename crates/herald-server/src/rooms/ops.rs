//! The WebSocket presence ops: `presence` (who is here) and `presence_stats` (how many), for a
//! subscriber of the room. The reply is the frame to send, an `error` frame when refused.

use bytes::Bytes;
use herald_core::{ChannelName, ErrorCode, protocol};

use super::Rooms;

/// Why a presence op is refused, if it is.
fn refusal(rooms: &Rooms, subscribed: bool, channel: &ChannelName) -> Option<(ErrorCode, String)> {
    if !rooms.is_room(channel) {
        return Some((
            ErrorCode::BadRequest,
            format!("{channel} is not a room: its namespace has no presence"),
        ));
    }
    if !subscribed {
        return Some((
            ErrorCode::Forbidden,
            format!("subscribe to {channel} to see who is there"),
        ));
    }
    None
}

/// `{"op":"presence"}`: the `presence` frame (members, at most `presence_list_max`).
pub async fn presence_op(
    rooms: &Rooms,
    subscribed: bool,
    id: Option<u64>,
    channel: &ChannelName,
) -> Bytes {
    read(rooms, subscribed, id, channel, true).await
}

/// `{"op":"presence_stats"}`: the `presence_stats` frame (counts only).
pub async fn presence_stats_op(
    rooms: &Rooms,
    subscribed: bool,
    id: Option<u64>,
    channel: &ChannelName,
) -> Bytes {
    read(rooms, subscribed, id, channel, false).await
}

async fn read(
    rooms: &Rooms,
    subscribed: bool,
    id: Option<u64>,
    channel: &ChannelName,
    members: bool,
) -> Bytes {
    if let Some((code, message)) = refusal(rooms, subscribed, channel) {
        return protocol::error_frame(id, code, &message);
    }
    match rooms.roster(channel, members.then_some(usize::MAX)).await {
        Ok(roster) if members => protocol::presence_frame(id, channel, &roster),
        Ok(roster) => protocol::presence_stats_frame(id, channel, &roster),
        Err(e) => protocol::error_frame(id, ErrorCode::Unavailable, &e.to_string()),
    }
}
