//! The two Lua scripts that touch a channel's keys, and the parsing of their replies.
//!
//! Publishing is one script so that assigning the offset, appending to history, remembering the
//! idempotency key and relaying happen atomically: a publish is either fully in history and on
//! the backbone, or not at all, and two nodes can never hand out the same offset. History reads
//! are a script too, so `top` and `messages` come from one consistent snapshot; a read never
//! creates a channel's epoch (the first publish does) and copies at most one bounded page.
//!
//! `redis::Script` sends EVALSHA and falls back to SCRIPT LOAD on NOSCRIPT (e.g. after a Redis
//! restart), so the script bodies travel only when needed.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Epoch, Message, StreamPosition};
use redis::Value;

use super::codec;
use crate::BrokerError;

/// The Lua function that appends one message to a channel's stream and relays it: the heart of
/// [`PUBLISH`], shared with the room script (`crate::presence`), whose join and leave messages
/// take the same path (offset, history, backbone).
///
/// `herald_append(meta, stream, backbone, new_epoch, size, key_ttl, refresh, ts, event, channel,
/// from, info, data, sharded)` creates the channel's epoch if it has none, takes the next
/// offset, builds the payload (`h1`, or `h2` when `from` is not empty: see `codec`), appends it
/// to history (unless `size` is 0) and publishes it. Returns the epoch and the offset.
///
/// The history entry's time (`t`, what the read script expires entries by) is the message's
/// `published_at_us` (`ts`, the publishing node's clock) in milliseconds: no `TIME` call.
/// The keys' TTLs are set to `key_ttl` when `refresh` is `'1'` (the node did not refresh them
/// within the slack, see `refresh`), and whenever this call creates a key (a new epoch, or a
/// stream that is missing: `XADD NOMKSTREAM` says so), so a key never lives without a TTL.
macro_rules! append_fn {
    () => {
        r#"
local function herald_append(meta, stream, backbone, new_epoch, size, key_ttl, refresh, ts,
                             event, channel, from, info, data, sharded)
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    -- A new incarnation: whatever history is left belongs to a lost epoch.
    epoch = new_epoch
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
    refresh = '1'
  end
  local offset = string.format('%d', redis.call('HINCRBY', meta, 'o', 1))
  local head = offset .. ' ' .. epoch .. ' ' .. ts .. ' ' .. event .. ' ' .. channel
  local payload
  if from ~= '' then
    payload = 'h2 ' .. head .. ' ' .. #from .. ' ' .. #info .. '\n' .. from .. info .. data
  else
    payload = 'h1 ' .. head .. '\n' .. data
  end
  if refresh == '1' then redis.call('PEXPIRE', meta, key_ttl) end
  if tonumber(size) > 0 then
    local id = offset .. '-0'
    local ms = string.format('%d', math.floor(tonumber(ts) / 1000))
    if refresh == '1' or
        not redis.call('XADD', stream, 'NOMKSTREAM', 'MAXLEN', size, id, 't', ms, 'p', payload) then
      redis.call('XADD', stream, 'MAXLEN', size, id, 't', ms, 'p', payload)
      redis.call('PEXPIRE', stream, key_ttl)
    end
  end
  if sharded == 's' then
    redis.call('SPUBLISH', backbone, payload)
  else
    redis.call('PUBLISH', backbone, payload)
  end
  return epoch, offset
end
"#
    };
}
pub(crate) use append_fn;

/// KEYS: meta, stream, backbone channel, [idempotency key].
/// ARGV: new epoch, history size, ttl ms (the idempotency key's), published_at_us, event
/// ('' = default), channel, data, 's' to SPUBLISH (Cluster) or 'p' to PUBLISH, from ('' =
/// none), info, '1' to return the node's id (Cluster), the keys' TTL ms, '1' to refresh the
/// keys' TTLs (see `herald_append`).
/// Returns one string, `<duplicate 0|1>:<epoch>:<offset>:<node id or ''>`: one bulk reply is
/// parsed by the client several times faster than an array of three.
pub(crate) const PUBLISH: &str = concat!(
    append_fn!(),
    r#"
local ttl = ARGV[3]
local node = ''
if ARGV[11] == '1' then node = redis.call('CLUSTER', 'MYID') end
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then return '1:' .. prev .. ':' .. node end
end
local epoch, offset = herald_append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[12],
  ARGV[13], ARGV[4], ARGV[5], ARGV[6], ARGV[9], ARGV[10], ARGV[7], ARGV[8])
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ':' .. offset, 'PX', ttl)
end
return '0:' .. epoch .. ':' .. offset .. ':' .. node
"#
);

/// KEYS: meta, stream.
/// ARGV: ttl ms (messages older than this are expired), mode, since epoch, since offset,
/// limit, max bytes, max entry bytes, '1' to return the node's id (Cluster), the keys' TTL ms.
/// Modes: 'a' after (epoch, offset): another epoch gets nothing, except ('', 0), the position of
/// a channel seen before its first message, which reads the current epoch from its start; 'f'
/// follow: like 'a' but any other epoch reads the current one from its start (the relay); 'o'
/// after the offset in the current epoch; 'l' latest: the newest `limit`.
/// Returns `{epoch, top, node id or '', payload...}`: at most `limit` payloads, and no more
/// payload bytes than `max bytes` (but at least one payload when there is one).
///
/// Never creates anything: a channel without meta reads as `{'', 0}`. An existing meta key's TTL
/// is refreshed, so a channel that is read (subscribed) keeps its epoch while it is quiet.
/// Messages expire by their publish time (the publishing node's clock) against Redis's `TIME`.
///
/// Redis runs one script at a time, so this one stays short: it copies at most one page out of
/// the stream, in XRANGE chunks of at most 64 entries sized so that a chunk of entries like the
/// largest seen so far fits the page (the first chunk assumes the largest possible entry). So a
/// call copies at most `max bytes` plus one chunk, and that overshoot is 64 large entries only
/// once (after a large entry, chunks shrink). The expired head of the stream is found by binary
/// search (a few single-entry reads) and trimmed with one XTRIM, never by walking it.
pub(crate) const READ: &str = r#"
local node = ''
if ARGV[8] == '1' then node = redis.call('CLUSTER', 'MYID') end
local meta = redis.call('HMGET', KEYS[1], 'e', 'o')
if not meta[1] then return {'', '0', node} end
local epoch = meta[1]
local top = tonumber(meta[2]) or 0
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local out = {epoch, string.format('%d', top), node}
local mode = ARGV[2]
local limit = tonumber(ARGV[5]) or 0
local after
if mode == 'o' then
  after = tonumber(ARGV[4]) or 0
elseif mode == 'l' then
  after = math.max(top - limit, 0)
elseif ARGV[3] == epoch then
  after = tonumber(ARGV[4]) or 0
elseif mode == 'f' or (ARGV[3] == '' and ARGV[4] == '0') then
  after = 0
else
  return out
end
if after >= top or limit <= 0 then return out end
local function offset_of(id) return tonumber(string.match(id, '^%d+')) end
local function payload_of(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
-- The first entry at or after offset `o`: its offset and publish time (ms), or nil.
local function probe(o)
  local e = redis.call('XRANGE', KEYS[2], string.format('%d', o) .. '-0', '+', 'COUNT', 1)[1]
  if not e then return nil end
  return offset_of(e[1]), tonumber(payload_of(e, 't')) or 0
end
-- Streams have no per-entry TTL: entries older than the TTL are the oldest, so the first live
-- one is found by binary search over offsets (times grow with offsets) and the rest trimmed.
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
local head, head_t = probe(0)
if head and head_t < cutoff then
  local lo, hi = head, top + 1
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local o, t = probe(mid)
    if o == nil or t >= cutoff then hi = mid else lo = o end
  end
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', hi) .. '-0')
end
local budget = tonumber(ARGV[6]) or 0
-- Chunks are sized by the largest entry seen so far (the largest possible one at first), so
-- small messages come 64 at a time, not budget / max-entry (3 for the defaults) at a time.
local seen_max = math.max(tonumber(ARGV[7]) or 1, 1)
local used, n, next_offset, first = 0, 0, after + 1, true
while n < limit do
  local chunk = math.min(math.max(math.floor((budget - used) / seen_max), 1), limit - n, 64)
  local entries = redis.call('XRANGE', KEYS[2], string.format('%d', next_offset) .. '-0', '+',
    'COUNT', chunk)
  for _, e in ipairs(entries) do
    local p = payload_of(e, 'p')
    if p then
      if first or #p > seen_max then seen_max, first = math.max(#p, 1), false end
      if n > 0 and used + #p > budget then return out end
      out[#out + 1] = p
      used = used + #p
      n = n + 1
    end
    next_offset = offset_of(e[1]) + 1
  end
  if #entries < chunk then break end
end
return out
"#;

/// KEYS: meta, stream. ARGV: the epoch whose history turned out to be behind what a node had
/// already delivered (a failover lost acknowledged messages).
/// Forgets the channel's history if it is still in that epoch, so the next publish starts a new
/// epoch and every client is told (`recovered: false`). Returns 1 if it did.
pub(crate) const RESET: &str = r#"
if redis.call('HGET', KEYS[1], 'e') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

fn bad(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected Redis reply: {what}"))
}

fn bulk(v: Value) -> Result<Vec<u8>, BrokerError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(bad("expected a string")),
    }
}

fn int(v: Value) -> Result<i64, BrokerError> {
    match v {
        Value::Int(i) => Ok(i),
        other => std::str::from_utf8(&bulk(other)?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("expected an integer")),
    }
}

fn array(v: Value) -> Result<Vec<Value>, BrokerError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        _ => Err(bad("expected an array")),
    }
}

/// The publish script's reply, `<duplicate 0|1>:<epoch>:<offset>:<node id or ''>`: (position,
/// duplicate, the id of the Cluster node that ran it or an empty string). Epochs and node ids
/// never contain `:`.
pub(crate) fn parse_publish(v: Value) -> Result<(StreamPosition, bool, String), BrokerError> {
    let raw = bulk(v)?;
    let s = std::str::from_utf8(&raw).map_err(|_| bad("publish reply not UTF-8"))?;
    let mut parts = s.splitn(4, ':');
    let mut next = || parts.next().ok_or_else(|| bad("short publish reply"));
    let dup = match next()? {
        "0" => false,
        "1" => true,
        _ => return Err(bad("duplicate flag")),
    };
    let epoch = Epoch::parse(next()?).ok_or_else(|| bad("epoch"))?;
    let offset = next()?.parse().map_err(|_| bad("offset"))?;
    let node = next()?.to_owned();
    Ok((StreamPosition { epoch, offset }, dup, node))
}

fn text(v: Value) -> Result<String, BrokerError> {
    String::from_utf8(bulk(v)?).map_err(|_| bad("expected text"))
}

/// The read script's reply: the channel's top and the retained messages it returned.
pub(crate) struct ReadReply {
    pub top: StreamPosition,
    pub messages: Vec<Arc<Message>>,
}

/// The read script's reply, and the id of the Cluster node that ran it (or an empty string).
pub(crate) fn parse_read(v: Value) -> Result<(ReadReply, String), BrokerError> {
    let mut it = array(v)?.into_iter();
    // An empty epoch is a channel without history (see `herald_core::Epoch::none`).
    let epoch = bulk(it.next().ok_or_else(|| bad("short read reply"))?)?;
    let epoch = std::str::from_utf8(&epoch)
        .ok()
        .and_then(Epoch::parse)
        .ok_or_else(|| bad("epoch"))?;
    let offset = u64::try_from(int(it.next().ok_or_else(|| bad("short read reply"))?)?)
        .map_err(|_| bad("negative offset"))?;
    let node = text(it.next().ok_or_else(|| bad("short read reply"))?)?;
    let mut messages = Vec::with_capacity(it.len());
    for v in it {
        let msg = codec::decode(Bytes::from(bulk(v)?)).map_err(|e| bad(&e.to_string()))?;
        messages.push(Arc::new(msg));
    }
    let reply = ReadReply {
        top: StreamPosition { epoch, offset },
        messages,
    };
    Ok((reply, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replies_parse() {
        let reply = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let (pos, dup, node) = parse_publish(reply("1:abc:7:n1")).expect("parse");
        assert!(dup);
        assert_eq!(node, "n1");
        assert_eq!(pos.offset, 7);
        assert_eq!(pos.epoch.as_str(), "abc");
        let (pos, dup, node) = parse_publish(reply("0:abc:8:")).expect("parse");
        assert!(!dup && node.is_empty() && pos.offset == 8);
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(0), reply("abc:1"), reply("")]),
            reply("0:abc:1"),
            reply("0:abc"),
            reply("2:abc:1:"),
            reply("0:a,c:1:"),
            reply("0:abc:x:"),
            reply("0:abc:-1:"),
        ] {
            assert!(parse_publish(bad).is_err());
        }
    }

    #[test]
    fn read_replies_parse() {
        let v = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"2".to_vec()),
            Value::BulkString(Vec::new()),
            Value::BulkString(b"h1 2 e1 5  c\n{}".to_vec()),
        ]);
        let (r, node) = parse_read(v).expect("parse");
        assert_eq!(node, "");
        assert_eq!(r.top.offset, 2);
        assert_eq!(r.messages.len(), 1);
        let garbage = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"-1".to_vec()),
        ]);
        assert!(parse_read(garbage).is_err());
    }
}
