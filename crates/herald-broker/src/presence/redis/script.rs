//! The room script: every change to a room's presence, and the join/leave messages it causes,
//! in one atomic Lua call, and the room's Redis keys.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `herald:{c}:pm` | hash | connection id -> `<len>:<user><member JSON>` |
//! | `herald:{c}:pu` | hash | user -> connections in the room (all nodes) |
//! | `herald:{c}:pn` | zset | node -> when its presence expires (ms, Redis time) |
//! | `herald:{c}:pc:<node>` | set | that node's connections in the room |
//! | `herald:{c}:pg` | zset | user -> when its leave grace ends (ms) |
//! | `herald:{c}:pl` | hash | user -> the member JSON its leave will announce |
//!
//! A call runs, in order: (1) the members of every node whose presence expired leave (their
//! users leave now: the TTL was their grace); (2) this node's ops: `j` (a connection enters; its
//! user joins if it is its first and it was not inside its grace), `l` (a connection leaves; its
//! user's grace starts if it was its last), `x` (forget all of this node's connections, before
//! re-entering the ones it has: a resync); (3) users whose grace ended and who did not come back
//! leave; (4) this node's presence is refreshed (or dropped when it has no member left);
//! (5) the TTLs and the next deadline. Every message is published by `herald_append`, the same
//! code as a publish, so it takes the channel's next offset. Because each transition removes
//! what caused it (a member, a grace entry) in the same atomic step as its message, no two
//! calls, from any nodes, can send it twice, and the call that finds it sends it.
//!
//! Every time is Redis time (`TIME`), so the nodes' clocks do not matter.

use bytes::Bytes;
use herald_core::{ChannelName, room::Roster};
use redis::Value;

use crate::{BrokerError, redis::append_fn};

pub(super) fn members(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pm")
}

pub(super) fn users(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pu")
}

pub(super) fn nodes(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pn")
}

/// Prefix of the per-node connection sets (`<prefix><node>`).
pub(super) fn node_set_prefix(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pc:")
}

pub(super) fn grace(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pg")
}

pub(super) fn leaving(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:pl")
}

/// KEYS: pm, pu, pn, pg, pl, pc:<node>, meta, stream, backbone.
/// ARGV: 1 node, 2 mode ('w': ops and heartbeat, 'r': sweep and read only), 3 presence ttl ms,
/// 4 grace ms, 5 join_leave '1'|'0', 6 max members for messages, 7 key ttl ms, 8 listing limit
/// (0: counts only), 9 pc prefix, 10 history size, 11 the channel keys' TTL ms, 12 new epoch,
/// 13 published_at_us, 14 channel, 15 's'|'p' (SPUBLISH or PUBLISH), 16.. ops:
/// 'j' client user json | 'l' client | 'x'.
/// Returns `{messages sent, ms until the next grace ends (-1: none), ms until another node's
/// presence expires (-1: none), this node's connections, connections, users, truncated 0|1,
/// member JSON...}`.
pub(super) const ROOM: &str = concat!(
    append_fn!(),
    r#"
local pm, pu, pn, pg, pl, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local node, mode = ARGV[1], ARGV[2]
local ttl, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local join_leave, cap, keep = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local limit, pc = tonumber(ARGV[8]), ARGV[9]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sent = 0
-- A transition is announced when the room holds at most `cap` connections after it.
local function announce(event, json)
  if join_leave and redis.call('HLEN', pm) <= cap then
    herald_append(KEYS[7], KEYS[8], KEYS[9], ARGV[12], ARGV[10], ARGV[11], '1', ARGV[13], event,
      ARGV[14], '', '', json, ARGV[15])
    sent = sent + 1
  end
end
-- '<len>:<user><json>' -> user, json
local function split(v)
  local colon = string.find(v, ':', 1, true)
  local n = tonumber(string.sub(v, 1, colon - 1))
  return string.sub(v, colon + 1, colon + n), string.sub(v, colon + n + 1)
end
-- A connection leaves; at its user's last, the user leaves now or when its grace ends.
local function drop(client, set, later)
  local v = redis.call('HGET', pm, client)
  if not v then return end
  redis.call('HDEL', pm, client)
  redis.call('SREM', set, client)
  local user, json = split(v)
  if redis.call('HINCRBY', pu, user, -1) > 0 then return end
  redis.call('HDEL', pu, user)
  if not join_leave or redis.call('HLEN', pm) > cap then return end
  if later then
    -- Decided now, sent when the grace ends (unless the user comes back).
    redis.call('ZADD', pg, now + grace, user)
    redis.call('HSET', pl, user, json)
  else
    announce('herald.leave', json)
  end
end
-- 1. Nodes whose presence expired.
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', pn, '-inf', now)) do
  redis.call('ZREM', pn, dead)
  local set = pc .. dead
  for _, client in ipairs(redis.call('SMEMBERS', set)) do drop(client, set, false) end
  redis.call('DEL', set)
end
-- 2. This node's ops, in order.
if mode == 'w' then
  local i = 16
  while i <= #ARGV do
    local op = ARGV[i]
    if op == 'j' then
      local client, user, json = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
      i = i + 4
      if redis.call('HSETNX', pm, client, #user .. ':' .. user .. json) == 1 then
        redis.call('SADD', mine, client)
        if redis.call('HINCRBY', pu, user, 1) == 1 then
          -- Back within the grace (a page reload): no leave was sent, so no join either.
          local back = redis.call('ZREM', pg, user) == 1
          redis.call('HDEL', pl, user)
          if not back then announce('herald.join', json) end
        end
      end
    elseif op == 'l' then
      drop(ARGV[i + 1], mine, true)
      i = i + 2
    else
      for _, client in ipairs(redis.call('SMEMBERS', mine)) do drop(client, mine, true) end
      i = i + 1
    end
  end
end
-- 3. Users whose grace ended without a new connection.
for _, user in ipairs(redis.call('ZRANGEBYSCORE', pg, '-inf', now)) do
  redis.call('ZREM', pg, user)
  local json = redis.call('HGET', pl, user)
  redis.call('HDEL', pl, user)
  if json and redis.call('HEXISTS', pu, user) == 0 then
    herald_append(KEYS[7], KEYS[8], KEYS[9], ARGV[12], ARGV[10], ARGV[11], '1', ARGV[13],
      'herald.leave', ARGV[14], '', '', json, ARGV[15])
    sent = sent + 1
  end
end
-- 4. This node's presence: refreshed while it has members. Its connection set outlives the
-- room's other keys by a presence TTL, so whoever finds the node expired can still read it.
local count = redis.call('SCARD', mine)
if mode == 'w' then
  if count > 0 then
    redis.call('ZADD', pn, now + ttl, node)
    redis.call('PEXPIRE', mine, keep + ttl)
  else
    redis.call('ZREM', pn, node)
  end
end
for _, k in ipairs({pm, pu, pn, pg, pl}) do redis.call('PEXPIRE', k, keep) end
-- 5. The room's next deadlines: a grace ending, another node's presence expiring.
local grace_wake, node_wake = -1, -1
local g = redis.call('ZRANGE', pg, 0, 0, 'WITHSCORES')
if g[2] then grace_wake = tonumber(g[2]) - now end
local h = redis.call('ZRANGE', pn, 0, 1, 'WITHSCORES')
for j = 1, #h, 2 do
  if h[j] ~= node then
    node_wake = tonumber(h[j + 1]) - now
    break
  end
end
local out = {sent, grace_wake, node_wake, count, redis.call('HLEN', pm), redis.call('HLEN', pu), 0}
if limit > 0 then
  if out[5] <= limit then
    for _, v in ipairs(redis.call('HVALS', pm)) do
      local _, json = split(v)
      out[#out + 1] = json
    end
  else
    out[7] = 1
    local seen, n, cursor = {}, 0, '0'
    repeat
      local r = redis.call('HSCAN', pm, cursor, 'COUNT', 100)
      cursor = r[1]
      local kv = r[2]
      for j = 1, #kv, 2 do
        if n < limit and not seen[kv[j]] then
          seen[kv[j]] = true
          n = n + 1
          local _, json = split(kv[j + 1])
          out[#out + 1] = json
        end
      end
    until cursor == '0' or n >= limit
  end
end
return out
"#
);

/// What one room call found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Reply {
    /// Join and leave messages it published.
    pub sent: u64,
    /// Milliseconds until the room's next leave grace ends.
    pub grace_ms: Option<u64>,
    /// Milliseconds until another node's presence in the room expires.
    pub node_ms: Option<u64>,
    /// This node's connections in the room, as Redis has them.
    pub mine: u64,
    pub roster: Roster,
}

fn bad(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected Redis reply to the room script: {what}"))
}

fn int(v: &Value) -> Result<i64, BrokerError> {
    match v {
        Value::Int(i) => Ok(*i),
        _ => Err(bad("expected an integer")),
    }
}

pub(super) fn parse(v: Value) -> Result<Reply, BrokerError> {
    let Value::Array(items) = v else {
        return Err(bad("expected an array"));
    };
    if items.len() < 7 {
        return Err(bad("short reply"));
    }
    let count = |i: usize| int(&items[i]).map(|n| n.max(0) as u64);
    let deadline = |i: usize| int(&items[i]).map(|n| u64::try_from(n).ok());
    let mut members = Vec::with_capacity(items.len() - 7);
    for v in &items[7..] {
        match v {
            Value::BulkString(b) => members.push(Bytes::copy_from_slice(b)),
            _ => return Err(bad("expected member JSON")),
        }
    }
    Ok(Reply {
        sent: count(0)?,
        grace_ms: deadline(1)?,
        node_ms: deadline(2)?,
        mine: count(3)?,
        roster: Roster {
            members,
            truncated: count(6)? == 1,
            clients: count(4)?,
            users: count(5)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let v = Value::Array(vec![
            Value::Int(2),
            Value::Int(-1),
            Value::Int(40),
            Value::Int(1),
            Value::Int(3),
            Value::Int(2),
            Value::Int(1),
            Value::BulkString(br#"{"user":"a","client":"c"}"#.to_vec()),
        ]);
        let r = parse(v).expect("parse");
        assert_eq!(
            (r.sent, r.grace_ms, r.node_ms, r.mine),
            (2, None, Some(40), 1)
        );
        assert_eq!((r.roster.clients, r.roster.users), (3, 2));
        assert!(r.roster.truncated);
        assert_eq!(r.roster.members.len(), 1);
        assert!(parse(Value::Nil).is_err());
        assert!(parse(Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn keys_share_the_channel_hash_tag() {
        let c = ChannelName::parse("chat:1").expect("name");
        for k in [
            members(&c),
            users(&c),
            nodes(&c),
            grace(&c),
            leaving(&c),
            node_set_prefix(&c) + "n1",
        ] {
            assert!(k.starts_with("herald:{chat:1}:p"), "{k}");
        }
    }
}
