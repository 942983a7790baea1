//! Rooms end to end: real nodes (over Redis for everything across nodes), real WebSocket and
//! SSE clients with real tokens. Client publish with the server's `from`, presence across nodes,
//! join/leave exactly once (also when a node is killed), the reload grace, the cap, private
//! messages.

mod joinleave;
mod poll;
mod presence;
mod private;
mod publish;

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::{
    auth::{SECRET, TempDir, hs256, now},
    support::{Herald, clients::Ws},
};

/// The namespaces of every rooms test.
const NAMESPACES: &str = r#"
[namespaces.chat]
client_publish = "token"
presence = true
join_leave = true
history_size = 100

[namespaces.quiet]
client_publish = "token"
presence = true

[namespaces.big]
presence = true
join_leave = true
join_leave_max_members = 2

[namespaces.user]
user_channels = true
"#;

/// A fleet sharing one config file: nodes over Redis (or one embedded node).
pub struct Fleet {
    dir: TempDir,
    redis: Option<herald_testkit::RedisServer>,
}

impl Fleet {
    pub fn redis() -> Self {
        Self {
            dir: TempDir::new("rooms"),
            redis: Some(herald_testkit::RedisServer::start()),
        }
    }

    /// One node with the embedded broker: rooms in its memory.
    pub fn embedded() -> Self {
        Self {
            dir: TempDir::new("rooms"),
            redis: None,
        }
    }

    /// A node; `grace` is its leave_grace. The presence TTL is short (tests of a dead node
    /// wait for it) yet far above the refresh period on a loaded machine.
    pub async fn node(&self, grace: &str) -> Herald {
        let config = self.dir.file("herald.toml", NAMESPACES);
        let mut args = vec![
            "--jwt-secret",
            SECRET,
            "--config",
            config.to_str().expect("utf8"),
            "--leave-grace",
            grace,
            "--presence-ttl",
            "1500ms",
            "--redis-timeout",
            "1s",
        ];
        let url = self.redis.as_ref().map(|r| r.url());
        if let Some(url) = &url {
            args.extend(["--redis-url", url.as_str()]);
        }
        Herald::start(&args).await
    }
}

/// A token for `sub`: reads and publishes every room namespace, reads its own user channel,
/// with `info`.
pub fn user_token(sub: &str) -> String {
    hs256(&json!({
        "sub": sub,
        "exp": now() + 120,
        "channels": ["chat:*", "quiet:*", "big:*", format!("user:{sub}")],
        "publish": ["chat:*", "quiet:*"],
        "info": {"name": sub.to_uppercase()},
    }))
}

/// A room client: a WebSocket that keeps the frames a wait skipped, so that waiting for one
/// kind of frame never loses another (a join that came before a reply, a message before an ack).
pub struct Client {
    ws: Ws,
    kept: VecDeque<Value>,
    next_id: u64,
}

/// `sub`'s connection to `node`.
pub async fn connect(node: &Herald, sub: &str) -> Client {
    Client::from_url(&node.ws_url(&format!("/v1/ws?token={}", user_token(sub)))).await
}

impl Client {
    /// A connection to a full WebSocket URL (any token, or none).
    pub async fn from_url(url: &str) -> Self {
        Self {
            ws: Ws::connect(url).await,
            kept: VecDeque::new(),
            next_id: 1000,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(v).await;
    }

    /// The first frame (kept or new) matching `pred`; the others stay kept, in order.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.kept.iter().position(&pred) {
            return self.kept.remove(i).expect("kept");
        }
        loop {
            let v = self.ws.next().await;
            if pred(&v) {
                return v;
            }
            self.kept.push_back(v);
        }
    }

    /// The next frame of one of `types`.
    pub async fn next_of(&mut self, types: &[&str]) -> Value {
        self.next_where(|v| types.iter().any(|t| v["type"] == *t))
            .await
    }

    /// The next message frame.
    pub async fn next_message(&mut self) -> Value {
        self.next_of(&["message"]).await
    }

    /// The next join or leave frame of `user`.
    pub async fn next_event_of(&mut self, kind: &str, user: &str) -> Value {
        self.next_where(|v| v["type"] == kind && v["user"] == user)
            .await
    }

    /// Sends `op` with a fresh id; returns the reply that echoes it.
    pub async fn request(&mut self, mut op: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        op["id"] = id.into();
        self.send(op).await;
        self.next_where(|v| v["id"] == id).await
    }

    /// Subscribes; panics unless `subscribed`.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let v = self
            .request(json!({"op": "subscribe", "channel": channel}))
            .await;
        assert_eq!(v["type"], "subscribed", "{v}");
        v
    }

    /// Every frame (kept, then new) before the message whose data is `marker`.
    pub async fn frames_until(&mut self, marker: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = match self.kept.pop_front() {
                Some(v) => v,
                None => self.ws.next().await,
            };
            if v["type"] == "message" && v["data"] == marker {
                return seen;
            }
            seen.push(v);
        }
    }
}

/// `(type, user)` of the join/leave frames among `frames`.
pub fn room_events(frames: &[Value]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|v| v["type"] == "join" || v["type"] == "leave")
        .map(|v| {
            (
                v["type"].as_str().unwrap_or_default().to_owned(),
                v["user"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub fn ev(kind: &str, user: &str) -> (String, String) {
    (kind.to_owned(), user.to_owned())
}

/// The users of a presence listing, sorted.
pub fn users(listing: &Value) -> Vec<String> {
    let mut users: Vec<String> = listing["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user"].as_str().expect("user").to_owned())
        .collect();
    users.sort();
    users
}

/// A presence op's reply.
pub async fn presence(client: &mut Client, channel: &str) -> Value {
    client
        .request(json!({"op": "presence", "channel": channel}))
        .await
}

/// Asks for `channel`'s presence until its users are `expected` (a subscription enters its
/// room right after `subscribed`, and another connection may ask in between); returns the
/// listing.
pub async fn wait_users(client: &mut Client, channel: &str, expected: &[&str]) -> Value {
    crate::support::within(
        &format!("presence of {channel} to be {expected:?}"),
        async {
            loop {
                let listing = presence(client, channel).await;
                if users(&listing) == expected {
                    return listing;
                }
            }
        },
    )
    .await
}
