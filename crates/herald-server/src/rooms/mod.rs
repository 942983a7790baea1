//! Rooms on the server's side: which subscriptions make a connection a room member, who it is
//! there, and the presence reads clients and publishers make. The rooms' state and their join
//! and leave messages belong to the broker (`herald_broker::presence`); this module turns
//! connections into members.
//!
//! A channel is a room when its namespace has `presence = true`. A connection subscribed to a
//! room with a token that has a `sub` is a member: `{"user": sub, "client": its id,
//! "info": the token's info claim}`. Connections without a `sub` read the room without being in
//! it (they still make their node watch the room, see the broker). Only connections in rooms
//! cost anything here: the rest pay one namespace lookup per subscribe and unsubscribe.

mod ops;

use std::sync::Arc;

use herald_broker::{BrokerError, Presence, RoomsConfig};
use herald_core::{
    ChannelName,
    auth::Claims,
    room::{Member, Roster},
};
use prometheus::IntCounterVec;

use crate::config::Config;

pub use ops::{presence_op, presence_stats_op};

/// The node's rooms: the broker's presence plus the namespaces that have it.
pub struct Rooms {
    presence: Option<Arc<dyn Presence>>,
    config: RoomsConfig,
    /// Names this node in its connections' ids (`<node>-<connection>`), so they are unique in
    /// the fleet.
    node: u64,
    list_max: usize,
    /// Most member bytes one listing carries (a quarter of a connection's queue bound): a room
    /// of members with large `info` claims is truncated rather than overflowing the queue.
    list_bytes: usize,
    /// `herald_presence_total` by operation and outcome.
    metrics: IntCounterVec,
}

impl Rooms {
    pub fn new(
        config: &Config,
        presence: Option<Arc<dyn Presence>>,
        metrics: IntCounterVec,
    ) -> Self {
        Self {
            presence,
            config: config.rooms_config(),
            node: rand::random(),
            list_max: config.presence_list_max,
            list_bytes: config.queue_max_bytes / 4,
            metrics,
        }
    }

    /// True when `channel`'s namespace has presence.
    pub fn is_room(&self, channel: &ChannelName) -> bool {
        self.presence.is_some() && self.config.policy(channel).is_some()
    }

    /// The id a connection has in rooms (the `client` of its member).
    pub fn client_id(&self, conn: u64) -> String {
        format!("{:016x}-{conn}", self.node)
    }

    fn count(&self, op: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metrics.with_label_values(&[op, outcome]).inc();
    }

    /// Connection `conn` subscribed `channel` as `who`: it enters the room (as a member when
    /// its token has a `sub`). Resolves once the room has it, so a presence read that follows
    /// lists it. A broker failure is logged, not returned: the subscription stands, and the
    /// broker registers the member again once it can.
    pub async fn enter(&self, conn: u64, channel: &ChannelName, who: Option<&Claims>) {
        let Some(presence) = self.presence.as_ref().filter(|_| self.is_room(channel)) else {
            return;
        };
        let client = self.client_id(conn);
        let member = who.and_then(|claims| {
            let sub = claims.sub.as_deref()?;
            Some(Member::new(sub, &client, claims.info.as_deref()))
        });
        let result = presence.enter(channel, &client, member).await;
        self.count("enter", result.is_ok());
        if let Err(e) = result {
            tracing::warn!(%channel, error = %e, "entering a room failed; retried in the background");
        }
    }

    /// Connection `conn` left `channel` (unsubscribed, or gone).
    pub fn exit(&self, conn: u64, channel: &ChannelName) {
        if let Some(presence) = self.presence.as_ref().filter(|_| self.is_room(channel)) {
            presence.exit(channel, &self.client_id(conn));
            self.count("exit", true);
        }
    }

    /// A connection became `who` (the `auth` op): it is in its rooms as that member from now.
    pub async fn reenter(&self, conn: u64, channels: &[ChannelName], who: &Claims) {
        for channel in channels.iter().filter(|c| self.is_room(c)) {
            self.exit(conn, channel);
            self.enter(conn, channel, Some(who)).await;
        }
    }

    /// Who is in `channel`'s room, from every node: at most `limit` members (capped by
    /// `presence_list_max`), or only the counts.
    pub async fn roster(
        &self,
        channel: &ChannelName,
        limit: Option<usize>,
    ) -> Result<Roster, BrokerError> {
        let Some(presence) = &self.presence else {
            return Ok(Roster::default());
        };
        let limit = limit.map_or(0, |l| l.clamp(1, self.list_max));
        let result = presence.roster(channel, limit).await;
        self.count(if limit == 0 { "stats" } else { "list" }, result.is_ok());
        result.map(|roster| cap_bytes(roster, self.list_bytes))
    }

    /// The most members one listing returns.
    pub fn list_max(&self) -> usize {
        self.list_max
    }
}

/// Keeps the members that fit in `budget` bytes; a listing cut here says `truncated`.
fn cap_bytes(mut roster: Roster, budget: usize) -> Roster {
    let mut used = 0;
    let fit = roster
        .members
        .iter()
        .take_while(|m| {
            used += m.len() + 1;
            used <= budget
        })
        .count();
    if fit < roster.members.len() {
        roster.members.truncate(fit);
        roster.truncated = true;
    }
    roster
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_cut_to_its_byte_budget_and_says_so() {
        let member = |i: usize| Member::new(&format!("u{i}"), "c", None).json;
        let roster = Roster {
            members: (0..10).map(member).collect(),
            truncated: false,
            clients: 10,
            users: 10,
        };
        let each = roster.members[0].len() + 1;
        let cut = cap_bytes(roster.clone(), each * 3);
        assert_eq!(
            (cut.members.len(), cut.truncated, cut.clients),
            (3, true, 10)
        );
        let whole = cap_bytes(roster, usize::MAX);
        assert_eq!((whole.members.len(), whole.truncated), (10, false));
    }
}
