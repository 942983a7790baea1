//! Fuzz target `names`: channel names, event types and epochs.
//!
//! Every other encoder writes these names into JSON and SSE without escaping, and the resume
//! token splits on `,` and `;`; so an accepted name must be exactly the documented charset and
//! length, and a refusal must give the right reason.

use crate::{
    channel::{ChannelName, EventName, MAX_CHANNEL_LEN, MAX_EVENT_LEN, NameError},
    message::{Epoch, MAX_EPOCH_LEN, Message},
    token::ResumeToken,
};

use super::wire;

fn in_charset(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:@/=+".contains(&b)
}

/// The refusal the documented rules give for `name` with limit `max`, or `None` if it is valid.
fn expected_refusal(name: &str, max: usize) -> Option<NameError> {
    if name.is_empty() {
        return Some(NameError::Empty);
    }
    if name.len() > max {
        return Some(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    name.chars()
        .find(|c| !c.is_ascii() || !in_charset(*c as u8))
        .map(NameError::BadChar)
}

/// A name may be written between JSON quotes as it is.
fn assert_json_safe(name: &str) {
    let quoted = serde_json::to_string(name).expect("a string serialises");
    assert_eq!(
        quoted,
        format!("\"{name}\""),
        "{name:?} needs JSON escaping"
    );
}

/// The harness: `data` is tried as a channel name (under several limits), an event type and an
/// epoch; whatever is accepted is used the way the server uses it.
pub fn names(data: &[u8]) {
    let name = super::text(data);
    let name = name.as_ref();

    for max in [
        1,
        16,
        super::LIMITS.max_channel_len,
        MAX_CHANNEL_LEN,
        usize::MAX,
    ] {
        let limit = max.min(MAX_CHANNEL_LEN);
        let got = ChannelName::parse_with_limit(name, max);
        assert_eq!(got.as_ref().err(), expected_refusal(name, limit).as_ref());
        if let Ok(c) = got {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            assert_json_safe(name);
        }
    }

    let event = EventName::parse(name);
    let want = expected_refusal(name, MAX_EVENT_LEN).or_else(|| {
        name.starts_with(crate::channel::RESERVED_EVENT_PREFIX)
            .then_some(NameError::Reserved)
    });
    assert_eq!(event.as_ref().err(), want.as_ref());

    let epoch = Epoch::parse(name);
    // 0-32 alphanumerics; the empty epoch is that of a channel without history.
    let epoch_ok = name.len() <= MAX_EPOCH_LEN && name.bytes().all(|b| b.is_ascii_alphanumeric());
    assert_eq!(epoch.is_some(), epoch_ok);
    if let Some(e) = &epoch {
        assert_eq!(e.as_str(), name);
        assert_eq!(e.is_none(), name.is_empty());
    }

    // Accepted names in the places the server writes them: a resume token, an SSE event and a
    // WebSocket frame.
    let Ok(channel) = ChannelName::parse(name) else {
        return;
    };
    let epoch = epoch.unwrap_or_else(|| Epoch::from_random(u64::MAX));
    let mut token = ResumeToken::default();
    token.set(
        &channel,
        crate::message::StreamPosition {
            epoch: epoch.clone(),
            offset: u64::MAX,
        },
    );
    let text = token.to_string();
    assert_eq!(ResumeToken::parse(&text).as_ref(), Ok(&token), "{text:?}");
    let msg = Message {
        channel,
        offset: u64::MAX,
        epoch,
        event: event.ok(),
        data: bytes::Bytes::from_static(b"{\"k\":[1,\"\\n\"]}"),
        published_at_us: 0,
        sender: None,
    };
    wire::check_sse_message(&text, &msg);
    wire::check_message_frame(&msg);
    wire::check_poll_answer(&text, &msg);
}
