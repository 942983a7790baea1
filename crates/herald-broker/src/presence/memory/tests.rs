use std::{collections::HashMap, time::Duration};

use herald_core::{Message, room::Member};

use super::*;
use crate::{Broker, MemoryConfig, Sink};

const GRACE: Duration = Duration::from_secs(5);

fn broker(join_leave: bool, max_members: usize) -> Arc<MemoryBroker> {
    let policy = RoomPolicy {
        join_leave,
        grace: GRACE,
        max_members,
    };
    MemoryBroker::new(MemoryConfig {
        rooms: RoomsConfig {
            by_namespace: HashMap::from([("room".to_owned(), policy)]),
            ..RoomsConfig::default()
        },
        ..MemoryConfig::default()
    })
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("name")
}

/// The join/leave messages a channel got, as `(event, user)`.
#[derive(Default)]
struct Events(parking_lot::Mutex<Vec<(String, String)>>);

impl Sink for Events {
    fn deliver(&self, msg: Arc<Message>) {
        let v: serde_json::Value = serde_json::from_slice(&msg.data).expect("member JSON");
        let event = msg.event.as_ref().map_or("message", |e| e.as_str());
        let user = v["user"].as_str().unwrap_or_default().to_owned();
        self.0.lock().push((event.to_owned(), user));
    }
}

impl Events {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock())
    }
}

async fn watch(b: &Arc<MemoryBroker>, channel: &str) -> Arc<Events> {
    let events = Arc::new(Events::default());
    b.subscribe(&ch(channel), events.clone())
        .await
        .expect("subscribe");
    events
}

fn ev(event: &str, user: &str) -> (String, String) {
    (event.to_owned(), user.to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_user_joins_once_and_leaves_after_the_grace() {
    let b = broker(true, 100);
    let p = b.clone().presence().expect("presence");
    let c = ch("room:1");
    let events = watch(&b, "room:1").await;
    let enter = |client: &str, user: &str| {
        let p = p.clone();
        let c = c.clone();
        let member = Member::new(user, client, None);
        let client = client.to_owned();
        async move { p.enter(&c, &client, Some(member)).await.expect("enter") }
    };
    enter("c1", "alice").await;
    enter("c2", "alice").await;
    enter("c3", "bob").await;
    enter("c3", "bob").await; // the same connection again: nothing
    assert_eq!(
        events.take(),
        [ev("herald.join", "alice"), ev("herald.join", "bob")]
    );
    let r = p.roster(&c, 10).await.expect("roster");
    assert_eq!(
        (r.clients, r.users, r.members.len(), r.truncated),
        (3, 2, 3, false)
    );

    p.exit(&c, "c1");
    p.exit(&c, "c3");
    tokio::time::sleep(GRACE / 2).await;
    assert!(events.take().is_empty(), "inside the grace");
    tokio::time::sleep(GRACE).await;
    assert_eq!(
        events.take(),
        [ev("herald.leave", "bob")],
        "alice still has c2"
    );
    p.exit(&c, "c2");
    p.exit(&c, "c2");
    tokio::time::sleep(GRACE * 2).await;
    assert_eq!(events.take(), [ev("herald.leave", "alice")]);
    assert_eq!(p.roster(&c, 10).await.expect("roster"), Roster::default());
}

#[tokio::test(start_paused = true)]
async fn a_reload_within_the_grace_sends_nothing() {
    let b = broker(true, 100);
    let p = b.clone().presence().expect("presence");
    let c = ch("room:1");
    let events = watch(&b, "room:1").await;
    p.enter(&c, "c1", Some(Member::new("alice", "c1", None)))
        .await
        .expect("enter");
    assert_eq!(events.take(), [ev("herald.join", "alice")]);
    p.exit(&c, "c1");
    tokio::time::sleep(GRACE / 2).await;
    p.enter(&c, "c2", Some(Member::new("alice", "c2", None)))
        .await
        .expect("enter");
    tokio::time::sleep(GRACE * 2).await;
    assert!(events.take().is_empty(), "no leave, no join");
}

#[tokio::test(start_paused = true)]
async fn no_events_without_join_leave_or_above_the_cap_and_listings_are_capped() {
    let quiet = broker(false, 100);
    let p = quiet.clone().presence().expect("presence");
    let c = ch("room:q");
    let events = watch(&quiet, "room:q").await;
    p.enter(&c, "c1", Some(Member::new("a", "c1", None)))
        .await
        .expect("enter");
    p.exit(&c, "c1");
    tokio::time::sleep(GRACE * 2).await;
    assert!(events.take().is_empty());

    let capped = broker(true, 2);
    let p = capped.clone().presence().expect("presence");
    let c = ch("room:big");
    let events = watch(&capped, "room:big").await;
    for i in 0..4 {
        let client = format!("c{i}");
        let member = Member::new(&format!("u{i}"), &client, None);
        p.enter(&c, &client, Some(member)).await.expect("enter");
    }
    assert_eq!(
        events.take(),
        [ev("herald.join", "u0"), ev("herald.join", "u1")]
    );
    let r = p.roster(&c, 3).await.expect("roster");
    assert_eq!(
        (r.members.len(), r.truncated, r.clients, r.users),
        (3, true, 4, 4)
    );
    let counts = p.roster(&c, 0).await.expect("roster");
    assert!(counts.members.is_empty() && counts.clients == 4);

    // Not a room: nothing is kept.
    let other = ch("other");
    p.enter(&other, "c9", Some(Member::new("z", "c9", None)))
        .await
        .expect("enter");
    assert_eq!(
        p.roster(&other, 10).await.expect("roster"),
        Roster::default()
    );
}

#[tokio::test(start_paused = true)]
async fn join_and_leave_take_offsets_in_the_channels_order() {
    let b = broker(true, 100);
    let p = b.clone().presence().expect("presence");
    let c = ch("room:1");
    let publish = |n: u64| Publish {
        channel: c.clone(),
        event: None,
        data: Bytes::from(n.to_string()),
        idempotency_key: None,
        sender: None,
    };
    b.publish(publish(1)).await.expect("publish");
    p.enter(&c, "c1", Some(Member::new("a", "c1", None)))
        .await
        .expect("enter");
    b.publish(publish(2)).await.expect("publish");
    let h = b
        .history(
            &c,
            crate::HistoryQuery::after(herald_core::StreamPosition::start(), 10, usize::MAX),
        )
        .await
        .expect("history");
    let events: Vec<_> = h
        .messages
        .iter()
        .map(|m| (m.offset, m.event.as_ref().map(|e| e.as_str().to_owned())))
        .collect();
    assert_eq!(
        events,
        [(1, None), (2, Some("herald.join".to_owned())), (3, None)]
    );
}
