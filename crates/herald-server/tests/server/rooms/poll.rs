//! Rooms over long-polling: a held poll makes its user a member, a client's message reaches a
//! poll with its `from` and `info`, and a chain of polls receives the room's joins and leaves.

use serde_json::{Value, json};

use super::{Fleet, connect, user_token, wait_users};
use crate::support::Herald;

/// `GET /v1/poll` as `sub`, from `last_event_id` (none: from now), waiting at most `timeout`.
async fn poll(node: &Herald, room: &str, sub: &str, last_event_id: Option<&str>) -> Value {
    let mut path = format!(
        "/v1/poll?channel={room}&timeout=20s&token={}",
        user_token(sub)
    );
    if let Some(id) = last_event_id {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        path.push_str(&format!("&last_event_id={id}"));
    }
    let (status, body) = node.get(&path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test]
async fn a_held_poll_is_a_member_and_gets_client_messages_with_their_sender() {
    let fleet = Fleet::redis();
    let a = fleet.node("30s").await;
    let b = fleet.node("30s").await;
    // `quiet`: presence without join/leave, so nothing but dave's message ends the poll.
    let room = "quiet:poll";
    // Pam's poll is held while dave enters, sees her listed, and speaks (with a forged sender,
    // which the server ignores).
    let (answer, mut dave) = tokio::join!(poll(&b, room, "pam", None), async {
        let mut dave = connect(&a, "dave").await;
        dave.subscribe(room).await;
        wait_users(&mut dave, room, &["dave", "pam"]).await;
        let ack = dave
            .request(
                json!({"op": "publish", "channel": room, "data": {"text": "hi pam"},
                "from": "mallory", "info": {"forged": true}}),
            )
            .await;
        assert_eq!(ack["type"], "published", "{ack}");
        dave
    });
    let got = &answer["messages"][0];
    assert_eq!(
        (&got["from"], &got["info"], &got["data"], &got["event"]),
        (
            &json!("dave"),
            &json!({"name": "DAVE"}),
            &json!({"text": "hi pam"}),
            &json!("message")
        ),
        "{answer}"
    );
    // The poll is over: pam is no longer a connection of the room.
    wait_users(&mut dave, room, &["dave"]).await;
}

#[tokio::test]
async fn a_chain_of_polls_gets_the_rooms_joins_and_leaves() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let b = fleet.node("200ms").await;
    let room = "chat:poll";
    let mut position: Option<String> = None;
    let mut dave: Option<super::Client> = None;
    let mut seen: Vec<(String, Value)> = Vec::new();
    // Polls chain on b (each from the previous answer's position); dave comes and goes on a.
    while !seen.iter().any(|(e, _)| e == "herald.leave") {
        let polled = poll(&b, room, "pam", position.as_deref());
        let answer = if position.is_some() && seen.is_empty() && dave.is_none() {
            // The chain is under way (its first answer was pam's own join): dave enters while
            // this poll is held.
            let (answer, client) = tokio::join!(polled, async {
                let mut client = connect(&a, "dave").await;
                client.subscribe(room).await;
                client
            });
            dave = Some(client);
            answer
        } else {
            polled.await
        };
        position = answer["last_event_id"].as_str().map(str::to_owned);
        for m in answer["messages"].as_array().expect("messages") {
            let event = m["event"].as_str().unwrap_or_default();
            if (event == "herald.join" || event == "herald.leave") && m["data"]["user"] == "dave" {
                assert!(m["offset"].as_u64().is_some(), "{m}");
                seen.push((event.to_owned(), m["data"]["user"].clone()));
            }
        }
        if !seen.is_empty() {
            drop(dave.take()); // dave goes for good: his leave comes after the grace
        }
    }
    assert_eq!(
        seen,
        [
            ("herald.join".to_owned(), json!("dave")),
            ("herald.leave".to_owned(), json!("dave"))
        ]
    );
}
