//! Join and leave: once per transition across nodes, exactly once when a node is killed, none
//! for a page reload, none where the namespace or the room's size says so.

use serde_json::{Value, json};

use super::{Fleet, connect, ev, room_events, user_token, wait_users};
use crate::support::Herald;

/// Publishes `marker` over HTTP: every subscriber gets it after whatever came before it.
async fn mark(node: &Herald, room: &str, marker: &str) {
    node.publish(room, json!(marker)).await;
}

#[tokio::test]
async fn join_and_leave_arrive_once_per_transition_on_every_node() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let b = fleet.node("200ms").await;
    let room = "chat:once";
    let mut watch_a = connect(&a, "wa").await;
    watch_a.subscribe(room).await;
    let mut watch_b = connect(&b, "wb").await;
    watch_b.subscribe(room).await;

    // Alice opens a tab on each node, closes one (no leave: the other is open), then the other.
    let mut tab1 = connect(&a, "alice").await;
    tab1.subscribe(room).await;
    let mut tab2 = connect(&b, "alice").await;
    tab2.subscribe(room).await;
    wait_users(&mut watch_a, room, &["alice", "alice", "wa", "wb"]).await;
    drop(tab1);
    wait_users(&mut watch_a, room, &["alice", "wa", "wb"]).await;
    drop(tab2);
    for watcher in [&mut watch_a, &mut watch_b] {
        watcher.next_event_of("leave", "alice").await;
    }
    mark(&a, room, "m1").await;
    for watcher in [&mut watch_a, &mut watch_b] {
        let events = room_events(&watcher.frames_until("m1").await);
        let alice: Vec<_> = events.iter().filter(|(_, u)| u == "alice").collect();
        assert_eq!(
            alice,
            [&ev("join", "alice")],
            "the leave was the only other one"
        );
    }
    // In the stream: one join, one leave for alice, whatever node saw what.
    let (status, body) = a
        .get(&format!(
            "/v1/channels/{room}/history?token={}",
            user_token("wa")
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let history: Value = serde_json::from_str(&body).expect("json");
    let alice: Vec<_> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["data"]["user"] == "alice")
        .map(|m| m["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(alice, ["herald.join", "herald.leave"]);
}

#[tokio::test]
async fn a_killed_nodes_members_are_gone_within_the_ttl_and_leave_once() {
    let fleet = Fleet::redis();
    // A long grace: the leaves below are the presence TTL's, not a grace's.
    let mut dying = fleet.node("30s").await;
    let b = fleet.node("30s").await;
    let c = fleet.node("30s").await;
    let room = "chat:crash";
    let mut carol = connect(&b, "carol").await;
    carol.subscribe(room).await;
    let mut dave = connect(&c, "dave").await;
    dave.subscribe(room).await;
    let mut on_dying = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let mut client = connect(&dying, user).await;
        client.subscribe(room).await;
        on_dying.push(client);
    }
    wait_users(
        &mut carol,
        room,
        &["alice", "alice", "bob", "carol", "dave"],
    )
    .await;

    dying.kill().await; // SIGKILL: no goodbye, no more refreshes
    for watcher in [&mut carol, &mut dave] {
        watcher.next_event_of("leave", "alice").await;
        watcher.next_event_of("leave", "bob").await;
    }
    wait_users(&mut dave, room, &["carol", "dave"]).await;
    // More sweeps (a presence read sweeps) send nothing more; then a marker.
    let (status, _) = b.get(&format!("/v1/channels/{room}/presence")).await;
    assert_eq!(status, 200);
    mark(&b, room, "after").await;
    for watcher in [&mut carol, &mut dave] {
        let events = room_events(&watcher.frames_until("after").await);
        assert!(
            events.iter().all(|(kind, _)| kind == "join"),
            "each leave reached each subscriber exactly once: {events:?}"
        );
    }
}

#[tokio::test]
async fn a_page_reload_within_the_grace_sends_no_leave_and_no_join() {
    let fleet = Fleet::redis();
    let a = fleet.node("1s").await;
    let b = fleet.node("1s").await;
    let room = "chat:reload";
    let mut watcher = connect(&a, "watcher").await;
    watcher.subscribe(room).await;
    let mut page = connect(&a, "alice").await;
    page.subscribe(room).await;
    watcher.next_event_of("join", "alice").await;
    // Reload: the old page goes, the new one comes (through the load balancer: another node),
    // then alice leaves for good.
    drop(page);
    let mut page = connect(&b, "alice").await;
    page.subscribe(room).await;
    drop(page);
    watcher.next_event_of("leave", "alice").await;
    mark(&a, room, "m").await;
    let events = room_events(&watcher.frames_until("m").await);
    assert!(
        !events.iter().any(|(_, user)| user == "alice"),
        "the reload sent no leave and no join: {events:?}"
    );
}

#[tokio::test]
async fn no_join_or_leave_without_join_leave_or_above_the_cap() {
    let fleet = Fleet::redis();
    let a = fleet.node("100ms").await;
    let b = fleet.node("100ms").await;
    // `quiet`: presence without join_leave.
    let mut watcher = connect(&a, "w").await;
    watcher.subscribe("quiet:1").await;
    let mut other = connect(&b, "o").await;
    other.subscribe("quiet:1").await;
    wait_users(&mut watcher, "quiet:1", &["o", "w"]).await;
    drop(other);
    // `big`: join/leave while the room holds at most 2 connections: u3 and u4 join silently,
    // u4 leaves silently (3 remain), u3's leave is sent (2 remain).
    let mut members = Vec::new();
    for (node, user) in [(&a, "u1"), (&b, "u2"), (&a, "u3"), (&b, "u4")] {
        let mut client = connect(node, user).await;
        client.subscribe("big:1").await;
        members.push(client);
    }
    let mut first = members.remove(0);
    wait_users(&mut first, "big:1", &["u1", "u2", "u3", "u4"]).await;
    drop(members.pop()); // u4
    wait_users(&mut first, "big:1", &["u1", "u2", "u3"]).await;
    drop(members.pop()); // u3
    first.next_event_of("leave", "u3").await;
    mark(&a, "quiet:1", "q").await;
    assert!(room_events(&watcher.frames_until("q").await).is_empty());
    mark(&a, "big:1", "b").await;
    assert_eq!(
        room_events(&first.frames_until("b").await),
        [ev("join", "u1"), ev("join", "u2")],
        "(u3's leave was taken above)"
    );
}
