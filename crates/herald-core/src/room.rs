//! Rooms: who is in a channel (presence) and the join/leave messages the server publishes into
//! its stream.
//!
//! A member is one connection of a user (a token's `sub`) subscribed to a channel of a namespace
//! with presence. Its JSON form `{"user","client","info"?}` is rendered once, when the connection
//! enters, and used as is everywhere after: as the data of `herald.join` / `herald.leave`
//! messages, and as an entry of a presence listing. Brokers store it as opaque bytes next to the
//! user id they count connections by.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// One connection in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Identifies the connection across the fleet (unique per node and connection).
    pub client: Box<str>,
    /// The token's `sub`: join and leave are per user, however many connections it has.
    pub user: Box<str>,
    /// `{"user","client","info"?}`, compact JSON.
    pub json: Bytes,
}

#[derive(Serialize)]
struct Json<'a> {
    user: &'a str,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
}

impl Member {
    /// A member for `user`'s connection `client`; `info` is the token's `info` claim (compact
    /// JSON, already validated when the token was read).
    pub fn new(user: &str, client: &str, info: Option<&[u8]>) -> Self {
        let info = info
            .and_then(|i| std::str::from_utf8(i).ok())
            .and_then(|i| serde_json::from_str::<&RawValue>(i).ok());
        let json = serde_json::to_vec(&Json { user, client, info }).unwrap_or_default();
        Self {
            client: client.into(),
            user: user.into(),
            json: Bytes::from(json),
        }
    }
}

/// A room's members as a presence read found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Member JSON objects (see [`Member::json`]), at most the listing's limit.
    pub members: Vec<Bytes>,
    /// The room has more members than the listing holds.
    pub truncated: bool,
    /// Connections in the room (members, whatever the listing's limit).
    pub clients: u64,
    /// Distinct users in the room.
    pub users: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_escapes_the_user_and_keeps_info_as_is() {
        let m = Member::new("a\"li\nce", "n1-7", Some(br#"{"name":"Al","n":1.50}"#));
        assert_eq!(
            std::str::from_utf8(&m.json).expect("utf8"),
            r#"{"user":"a\"li\nce","client":"n1-7","info":{"name":"Al","n":1.50}}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&m.json).expect("JSON");
        assert_eq!(v["user"], "a\"li\nce");
        let bare = Member::new("bob", "c", None);
        assert_eq!(&bare.json[..], br#"{"user":"bob","client":"c"}"#);
        assert_eq!(&*bare.user, "bob");
    }
}
