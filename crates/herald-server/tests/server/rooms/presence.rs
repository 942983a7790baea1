//! Presence across nodes: the WebSocket ops for subscribers, the HTTP routes for publishers.

use serde_json::{Value, json};

use super::{Fleet, connect, presence, user_token, users, wait_users};
use crate::{auth::TempDir, support::clients::Sse};

#[tokio::test]
async fn presence_lists_users_on_every_node_until_they_leave() {
    let fleet = Fleet::redis();
    let a = fleet.node("300ms").await;
    let b = fleet.node("300ms").await;
    let room = "chat:p";
    let mut alice = connect(&a, "alice").await;
    alice.subscribe(room).await;
    let mut bob = connect(&b, "bob").await;
    bob.subscribe(room).await;
    let mut bob2 = connect(&a, "bob").await; // bob's second tab, on the other node
    bob2.subscribe(room).await;

    let listing = wait_users(&mut alice, room, &["alice", "bob", "bob"]).await;
    assert_eq!(listing["type"], "presence", "{listing}");
    assert_eq!(
        (
            listing["clients"].as_u64(),
            listing["users"].as_u64(),
            listing["truncated"].as_bool()
        ),
        (Some(3), Some(2), Some(false))
    );
    let member = listing["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user"] == "alice")
        .expect("alice")
        .clone();
    assert_eq!(member["info"], json!({"name": "ALICE"}));
    assert!(member["client"].as_str().is_some_and(|c| !c.is_empty()));

    // Publishers read it over HTTP, from any node.
    let (status, body) = b.get(&format!("/v1/channels/{room}/presence")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        users(&serde_json::from_str(&body).expect("json")),
        ["alice", "bob", "bob"]
    );
    let (status, body) = a.get(&format!("/v1/channels/{room}/presence_stats")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"channel": room, "clients": 3, "users": 2})
    );
    let (status, body) = a
        .get(&format!("/v1/channels/{room}/presence?limit=1"))
        .await;
    let capped: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (status, capped["truncated"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(capped["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(capped["clients"], 3, "the counts stay exact");
    let stats = bob
        .request(json!({"op": "presence_stats", "channel": room}))
        .await;
    assert_eq!(
        (
            stats["type"].as_str(),
            stats["clients"].as_u64(),
            stats["users"].as_u64()
        ),
        (Some("presence_stats"), Some(3), Some(2))
    );

    // Bob goes (both tabs): alice is told once the grace is over, and he is gone from presence.
    drop(bob);
    drop(bob2);
    let leave = alice.next_event_of("leave", "bob").await;
    assert_eq!(leave["channel"], room);
    assert!(leave["offset"].as_u64().is_some() && leave["epoch"].as_str().is_some());
    wait_users(&mut alice, room, &["alice"]).await;
}

#[tokio::test]
async fn presence_is_for_subscribers_of_rooms() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let mut alice = connect(&a, "alice").await;
    // Not subscribed: forbidden. Not a room: bad_request.
    let refused = presence(&mut alice, "chat:elsewhere").await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    alice.subscribe("user:alice").await;
    let refused = presence(&mut alice, "user:alice").await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let (status, body) = a.get("/v1/channels/user:alice/presence").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = a.get("/v1/channels/bad%20name/presence").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn presence_over_http_needs_a_key_scoped_to_the_channel() {
    let dir = TempDir::new("rooms-keys");
    let config = dir.file(
        "herald.toml",
        "[[api_keys]]\nname = \"app\"\nkey = \"k-app\"\nchannels = [\"chat:*\"]\n\
         [[api_keys]]\nname = \"other\"\nkey = \"k-other\"\nchannels = [\"orders.*\"]\n\
         [namespaces.chat]\npresence = true\n",
    );
    let node = crate::auth::secured(&["--config", config.to_str().expect("utf8")]).await;
    for (key, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("k-other"), 403),
        (Some("k-app"), 200),
    ] {
        let mut req = node.http.get(node.url("/v1/channels/chat:1/presence"));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let resp = req.send().await.expect("GET");
        assert_eq!(resp.status().as_u16(), status, "{key:?}");
    }
}

#[tokio::test]
async fn sse_subscribers_are_members_and_get_join_and_leave_events() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let b = fleet.node("200ms").await;
    let room = "chat:sse";
    let mut sse = Sse::connect(
        &b.url(&format!(
            "/v1/sse?channel={room}&token={}",
            user_token("sam")
        )),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    // An anonymous-to-the-room reader (no `sub`: not a member) asking for envelopes, on a.
    let mut enveloped = Sse::connect(
        &a.url(&format!(
            "/v1/sse?channel={room}&envelope=true&token={}",
            crate::auth::hs256(&json!({"exp": crate::auth::now() + 60, "channels": ["chat:*"]}))
        )),
        None,
    )
    .await;
    assert_eq!(enveloped.status, 200);
    let mut dave = connect(&a, "dave").await;
    dave.subscribe(room).await;
    // The connection's own op comes after its subscribe: it is listed.
    assert_eq!(users(&presence(&mut dave, room).await), ["dave", "sam"]);
    drop(dave);
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = sse.next().await.expect("event");
        if e.event == "herald.join" || e.event == "herald.leave" {
            let v = e.json();
            assert!(
                e.id.is_some(),
                "join and leave carry a resume token: they have offsets"
            );
            got.push((
                e.event.clone(),
                v["user"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    // With envelopes, the data is the WebSocket frame: type, channel, position and member.
    let mut framed = Vec::new();
    while framed.len() < 2 {
        let e = enveloped.next().await.expect("event");
        // (sam's join may come first: it is published as this stream opens.)
        if (e.event == "herald.join" || e.event == "herald.leave") && e.json()["user"] == "dave" {
            let v = e.json();
            assert_eq!(v["channel"], room, "{v}");
            assert!(
                v["offset"].as_u64().is_some() && v["epoch"].as_str().is_some(),
                "{v}"
            );
            assert_eq!(
                v["info"],
                json!({"name": v["user"].as_str().unwrap_or_default().to_uppercase()})
            );
            framed.push((e.event.clone(), v["type"].clone(), v["user"].clone()));
        }
    }
    assert_eq!(
        framed,
        [
            ("herald.join".to_owned(), json!("join"), json!("dave")),
            ("herald.leave".to_owned(), json!("leave"), json!("dave"))
        ]
    );
    let own = |e: &str, u: &str| (e.to_owned(), u.to_owned());
    assert_eq!(
        got,
        [
            own("herald.join", "sam"),
            own("herald.join", "dave"),
            own("herald.leave", "dave")
        ]
    );
}

#[tokio::test]
async fn rooms_work_in_memory_on_a_node_without_redis() {
    let fleet = Fleet::embedded();
    let node = fleet.node("200ms").await;
    let room = "chat:mem";
    let mut alice = connect(&node, "alice").await;
    alice.subscribe(room).await;
    let mut bob = connect(&node, "bob").await;
    bob.subscribe(room).await;
    alice.next_event_of("join", "bob").await;
    let listing = wait_users(&mut alice, room, &["alice", "bob"]).await;
    assert_eq!(
        (&listing["clients"], &listing["users"]),
        (&json!(2), &json!(2))
    );
    let ack = bob
        .request(json!({"op": "publish", "channel": room, "data": "hi", "from": "mallory"}))
        .await;
    assert_eq!(ack["type"], "published", "{ack}");
    let m = alice.next_message().await;
    assert_eq!(
        (m["data"].as_str(), m["from"].as_str()),
        (Some("hi"), Some("bob"))
    );
    drop(bob);
    alice.next_event_of("leave", "bob").await;
    wait_users(&mut alice, room, &["alice"]).await;
}
