//! The two Lua scripts that touch a channel's keys, and the parsing of their replies.
//!
//! Publishing is one script so that assigning the offset, appending to history, remembering the
//! idempotency key and relaying happen atomically: a publish is either fully in history and on
//! the backbone, or not at all, and two nodes can never hand out the same offset. History reads
//! are a script too, so `top` and `messages` come from one consistent snapshot and a fresh
//! channel gets its epoch exactly once whichever node asks first.
//!
//! `redis::Script` sends EVALSHA and falls back to SCRIPT LOAD on NOSCRIPT (e.g. after a Redis
//! restart), so the script bodies travel only when needed.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Epoch, Message, StreamPosition};
use redis::Value;

use super::codec;
use crate::{BrokerError, History};

/// KEYS: meta, stream, backbone channel, [idempotency key].
/// ARGV: new epoch, history size, ttl ms, published_at_us, event ('' = default), channel, data,
/// 's' to SPUBLISH (Cluster) or 'p' to PUBLISH.
/// Returns `{duplicate 0|1, "<epoch>:<offset>"}`.
pub(crate) const PUBLISH: &str = r#"
local ttl = ARGV[3]
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {1, prev} end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  -- A new incarnation: whatever history is left belongs to a lost epoch.
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'o', 1))
local payload = 'h1 ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' '
  .. ARGV[6] .. '\n' .. ARGV[7]
redis.call('PEXPIRE', KEYS[1], ttl)
if tonumber(ARGV[2]) > 0 then
  local now = redis.call('TIME')
  local ms = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000))
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 't', ms, 'p', payload)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ':' .. offset, 'PX', ttl)
end
if ARGV[8] == 's' then
  redis.call('SPUBLISH', KEYS[3], payload)
else
  redis.call('PUBLISH', KEYS[3], payload)
end
return {0, epoch .. ':' .. offset}
"#;

/// KEYS: meta, stream.
/// ARGV: new epoch, ttl ms, since epoch ('' = none), since offset, limit, mode: 's' (strict: a
/// since in another epoch gets nothing) or 'f' (follow: it gets the current epoch from 1).
/// Returns `{epoch, top, payload...}`.
pub(crate) const READ: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
else
  top = tonumber(redis.call('HGET', KEYS[1], 'o')) or 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local out = {epoch, string.format('%d', top)}
local after = tonumber(ARGV[4]) or 0
if ARGV[3] ~= '' and ARGV[3] ~= epoch then
  if ARGV[6] ~= 'f' then return out end
  after = 0
end
local limit = tonumber(ARGV[5]) or 0
if after >= top or limit <= 0 then return out end
-- Streams have no per-entry TTL: drop entries older than the TTL, which are the oldest.
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[2])
while true do
  local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 16)
  local expired = {}
  local live = false
  for _, e in ipairs(head) do
    local f = e[2]
    local ts = 0
    for i = 1, #f, 2 do
      if f[i] == 't' then ts = tonumber(f[i + 1]) or 0 end
    end
    if ts >= cutoff then live = true break end
    expired[#expired + 1] = e[1]
  end
  if #expired > 0 then redis.call('XDEL', KEYS[2], unpack(expired)) end
  if live or #head < 16 then break end
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', after + 1) .. '-0', '+',
  'COUNT', limit)
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'p' then out[#out + 1] = f[i + 1] end
  end
end
return out
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

/// Parses `"<epoch>:<offset>"`.
fn position(raw: &[u8]) -> Result<StreamPosition, BrokerError> {
    let s = std::str::from_utf8(raw).map_err(|_| bad("position not UTF-8"))?;
    let (epoch, offset) = s.split_once(':').ok_or_else(|| bad("position"))?;
    Ok(StreamPosition {
        epoch: Epoch::parse(epoch).ok_or_else(|| bad("epoch"))?,
        offset: offset.parse().map_err(|_| bad("offset"))?,
    })
}

/// The publish script's reply: (position, duplicate).
pub(crate) fn parse_publish(v: Value) -> Result<(StreamPosition, bool), BrokerError> {
    let mut it = array(v)?.into_iter();
    let dup = int(it.next().ok_or_else(|| bad("short publish reply"))?)? == 1;
    let pos = position(&bulk(it.next().ok_or_else(|| bad("short publish reply"))?)?)?;
    Ok((pos, dup))
}

/// The read script's reply: the channel's top and the retained messages it returned.
pub(crate) struct ReadReply {
    pub top: StreamPosition,
    pub messages: Vec<Arc<Message>>,
}

pub(crate) fn parse_read(v: Value) -> Result<ReadReply, BrokerError> {
    let mut it = array(v)?.into_iter();
    let epoch = bulk(it.next().ok_or_else(|| bad("short read reply"))?)?;
    let epoch = std::str::from_utf8(&epoch)
        .ok()
        .and_then(Epoch::parse)
        .ok_or_else(|| bad("epoch"))?;
    let offset = u64::try_from(int(it.next().ok_or_else(|| bad("short read reply"))?)?)
        .map_err(|_| bad("negative offset"))?;
    let mut messages = Vec::with_capacity(it.len());
    for v in it {
        let msg = codec::decode(Bytes::from(bulk(v)?)).map_err(|e| bad(&e.to_string()))?;
        messages.push(Arc::new(msg));
    }
    Ok(ReadReply {
        top: StreamPosition { epoch, offset },
        messages,
    })
}

/// Applies the [`History`] rules (the same as `MemoryBroker`'s) to a strict read.
pub(crate) fn history(reply: ReadReply, since: Option<&StreamPosition>, limit: usize) -> History {
    let top = reply.top;
    let (after, same_epoch) = match since {
        Some(p) => (p.offset, p.epoch == top.epoch && p.offset <= top.offset),
        None => (0, true),
    };
    if !same_epoch {
        return History {
            messages: Vec::new(),
            top,
            recovered: false,
        };
    }
    let mut messages = reply.messages;
    messages.retain(|m| m.offset > after && m.epoch == top.epoch);
    messages.truncate(limit);
    let complete_start = match messages.first() {
        Some(m) => m.offset == after + 1,
        None => after == top.offset,
    };
    let complete_end = messages.last().is_none_or(|m| m.offset == top.offset);
    History {
        recovered: since.is_some() && complete_start && complete_end,
        messages,
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replies_parse() {
        let v = Value::Array(vec![Value::Int(1), Value::BulkString(b"abc:7".to_vec())]);
        let (pos, dup) = parse_publish(v).expect("parse");
        assert!(dup);
        assert_eq!(pos.offset, 7);
        assert_eq!(pos.epoch.as_str(), "abc");
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(0)]),
            Value::Array(vec![Value::Int(0), Value::BulkString(b"abc".to_vec())]),
            Value::Array(vec![Value::Int(0), Value::BulkString(b"a,c:1".to_vec())]),
        ] {
            assert!(parse_publish(bad).is_err());
        }
    }

    #[test]
    fn read_replies_parse() {
        let v = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"2".to_vec()),
            Value::BulkString(b"h1 2 e1 5  c\n{}".to_vec()),
        ]);
        let r = parse_read(v).expect("parse");
        assert_eq!(r.top.offset, 2);
        assert_eq!(r.messages.len(), 1);
        let garbage = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"-1".to_vec()),
        ]);
        assert!(parse_read(garbage).is_err());
    }
}
