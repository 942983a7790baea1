//! The Cluster's slot map as `CLUSTER SLOTS` reports it: which master serves which slots.
//! The self-probe plans one channel per master from it, and the replication barrier finds the
//! primary of a live message's slot with it.

use redis::Value;

/// A range of slots and the master serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// `host:port`.
    pub addr: String,
    /// The node id (as `CLUSTER MYID` says it).
    pub id: String,
}

/// Parses a `CLUSTER SLOTS` reply (ranges it cannot read are left out).
pub(crate) fn parse(reply: Value) -> Vec<SlotRange> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let Value::Array(master) = r.get(2)? else {
                return None;
            };
            let addr = format!("{}:{}", text(master.first()?)?, text(master.get(1)?)?);
            let id = master.get(2).and_then(text).unwrap_or_default();
            Some(SlotRange {
                start: int(r.first()?)?,
                end: int(r.get(1)?)?,
                addr,
                id,
            })
        })
        .collect()
}

/// The range serving `slot`, if any.
pub(crate) fn owner(ranges: &[SlotRange], slot: u16) -> Option<&SlotRange> {
    ranges.iter().find(|r| (r.start..=r.end).contains(&slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_replies_parse() {
        let node = |ip: &str, port, id: &str| {
            Value::Array(vec![
                Value::BulkString(ip.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("h", 1, "a"),
                node("r", 2, "b"),
            ]),
            Value::Array(vec![Value::Int(100), Value::Int(16383), node("h", 3, "c")]),
            Value::Nil,
        ]);
        let range = |start, end, addr: &str, id: &str| SlotRange {
            start,
            end,
            addr: addr.to_owned(),
            id: id.to_owned(),
        };
        let ranges = parse(reply);
        assert_eq!(
            ranges,
            vec![range(0, 99, "h:1", "a"), range(100, 16383, "h:3", "c")]
        );
        assert_eq!(owner(&ranges, 99).map(|r| r.id.as_str()), Some("a"));
        assert_eq!(owner(&ranges, 100).map(|r| r.id.as_str()), Some("c"));
        assert!(parse(Value::Nil).is_empty());
        assert!(owner(&[], 1).is_none());
    }
}
