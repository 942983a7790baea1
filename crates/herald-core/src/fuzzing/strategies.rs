//! proptest strategies for Herald's values: any JSON, valid names, hostile text and messages.

use bytes::Bytes;
use proptest::prelude::*;

use crate::{
    channel::{ChannelName, EventName},
    message::{Epoch, Message},
};

/// Any JSON value, nested a few levels.
pub fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        // Short decimals: serde_json reads them back exactly (long ones may be 1 ULP off).
        (any::<i32>(), 0..6i32)
            .prop_map(|(m, e)| serde_json::Value::from(f64::from(m) / 10f64.powi(e))),
        hostile_text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(hostile_text(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text rich in what breaks line- and quote-based formats: CR, LF, NUL, quotes, backslashes,
/// separators and non-ASCII, mixed with anything else.
pub fn hostile_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        3 => any::<char>(),
        1 => prop::sample::select(vec!['\n', '\r', '\0', '"', '\\', ':', ',', ';', ' ', '\u{2028}', '\u{feff}']),
    ];
    prop::collection::vec(c, 0..40).prop_map(|v| v.into_iter().collect())
}

pub fn channel() -> impl Strategy<Value = ChannelName> {
    "[A-Za-z0-9_.:@/=+-]{1,255}".prop_map(|s| ChannelName::parse(&s).expect("charset"))
}

pub fn event() -> impl Strategy<Value = Option<EventName>> {
    prop::option::of(
        "[A-Za-z0-9_.:@/=+-]{1,64}".prop_filter_map("reserved", |s| EventName::parse(&s).ok()),
    )
}

pub fn epoch() -> impl Strategy<Value = Epoch> {
    "[A-Za-z0-9]{1,32}".prop_map(|s| Epoch::parse(&s).expect("alphanumeric"))
}

/// A message as a publish makes it: data is compact JSON.
pub fn message() -> impl Strategy<Value = Message> {
    (channel(), any::<u64>(), epoch(), event(), json()).prop_map(
        |(channel, offset, epoch, event, data)| Message {
            channel,
            offset,
            epoch,
            event,
            data: Bytes::from(data.to_string()),
            published_at_us: 0,
            sender: None,
        },
    )
}
