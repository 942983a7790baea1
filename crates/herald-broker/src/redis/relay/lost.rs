//! Noticing that history lost what this node delivered, and turning that into an explicit reset.
//!
//! A failover to a replica that had not received the last writes (possible with the default
//! durability) leaves the new primary's history behind what subscribers were shown, and its next
//! publishes reuse those offsets: clients would drop them as duplicates. Every relay read from
//! history is therefore checked against the last message the node delivered (same epoch, the
//! top not behind the cursor, the same message at the cursor). When history lost it, the
//! channel is moved to a new epoch ([`RESET`]: forget its history if it is still in that epoch,
//! so exactly one node does it), and the read is made again: the relay then follows the new
//! epoch and every subscriber gets `subscribed` with `recovered: false`.
//!
//! [`RESET`]: crate::redis::scripts::RESET

use herald_core::{ChannelName, Message, StreamPosition};

use super::{RedisStats, Shared};
use crate::{BrokerError, redis::scripts::ReadReply};

/// Passes `result` through, unless it shows that history lost what this node delivered up to
/// `cursor`: then resets the channel and returns what `read_again` reads.
pub(super) async fn reset_if_lost<F, Fut>(
    shared: &Shared,
    channel: &ChannelName,
    cursor: &StreamPosition,
    last: Option<&Message>,
    result: Result<ReadReply, BrokerError>,
    read_again: F,
) -> Result<ReadReply, BrokerError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ReadReply, BrokerError>>,
{
    let top = match &result {
        Ok(reply) if lost(cursor, last, reply) => reply.top.offset,
        _ => return result,
    };
    let did = shared.reset_channel(channel, cursor).await?;
    if did {
        RedisStats::inc(&shared.stats.history_resets);
    }
    tracing::warn!(
        %channel, delivered = cursor.offset, history_top = top,
        "redis history lost messages this node delivered (failover?): new epoch"
    );
    // The channel is in a new epoch now (or another node reset it first).
    read_again().await
}

/// Whether history lost what this node delivered up to `cursor`: same epoch, but the top is
/// behind it, or the message at the cursor is another one (`last`, when it was read again).
pub(super) fn lost(cursor: &StreamPosition, last: Option<&Message>, reply: &ReadReply) -> bool {
    if reply.top.epoch != cursor.epoch {
        return false; // a new epoch is a reset already
    }
    if reply.top.offset < cursor.offset {
        return true;
    }
    let Some(last) = last else { return false };
    reply
        .messages
        .iter()
        .find(|m| m.offset == last.offset && m.epoch == last.epoch)
        .is_some_and(|m| {
            m.published_at_us != last.published_at_us
                || m.data != last.data
                || m.event != last.event
        })
}
