//! Rooms on a real redis-server, with several brokers as the nodes of a fleet: presence is the
//! union of the nodes' members, a node that stops refreshing drops out when its presence
//! expires, and every join and leave is published exactly once, however many nodes sweep.

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_broker::{Broker, Presence, RedisBroker, RedisConfig, RoomPolicy, RoomsConfig};
use herald_core::{ChannelName, room::Member};
use support::{Collect, RedisCluster, RedisServer, ch, eventually, latest, publish};

/// Short enough for a quick test, long enough that a loaded CI machine never misses a refresh.
const TTL: Duration = Duration::from_millis(1500);

fn rooms(grace: Duration, max_members: usize) -> RoomsConfig {
    let policy = RoomPolicy {
        join_leave: true,
        grace,
        max_members,
    };
    RoomsConfig {
        by_namespace: HashMap::from([("room".to_owned(), policy)]),
        ttl: TTL,
    }
}

async fn node(redis: &RedisServer, rooms: RoomsConfig) -> (Arc<RedisBroker>, Arc<dyn Presence>) {
    node_at(redis.url(), rooms).await
}

async fn node_at(url: String, rooms: RoomsConfig) -> (Arc<RedisBroker>, Arc<dyn Presence>) {
    let b = RedisBroker::connect(RedisConfig {
        url,
        history_size: 1000,
        history_ttl: Duration::from_secs(60),
        rooms,
        ..RedisConfig::default()
    })
    .await
    .expect("connect");
    let p = b.clone().presence().expect("presence");
    (b, p)
}

fn member(user: &str, client: &str) -> Member {
    Member::new(user, client, Some(br#"{"name":"x"}"#))
}

async fn enter(p: &Arc<dyn Presence>, c: &ChannelName, user: &str, client: &str) {
    p.enter(c, client, Some(member(user, client)))
        .await
        .expect("enter");
}

/// `(event, user)` of the room events a sink got, in order.
fn room_events(sink: &Collect) -> Vec<(String, String)> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            let event = m.event.as_ref()?.as_str().to_owned();
            let v: serde_json::Value = serde_json::from_slice(&m.data).ok()?;
            Some((event, v["user"].as_str()?.to_owned()))
        })
        .collect()
}

fn ev(event: &str, user: &str) -> (String, String) {
    (event.to_owned(), user.to_owned())
}

/// Publishes a marker and waits until every sink has it: whatever was published before it has
/// reached them (a channel's messages arrive in order).
async fn settle(b: &Arc<RedisBroker>, sinks: &[&Arc<Collect>], channel: &str) {
    let published = b.publish(publish(channel, 0, None)).await.expect("marker");
    for sink in sinks {
        let sink = (*sink).clone();
        eventually("the marker", || {
            let sink = sink.clone();
            let offset = published.position.offset;
            async move { sink.offsets().contains(&offset) }
        })
        .await;
    }
}

#[tokio::test]
async fn presence_spans_nodes_and_each_transition_is_sent_once() {
    let redis = RedisServer::start();
    let cfg = rooms(Duration::from_millis(300), 100);
    let (a, pa) = node(&redis, cfg.clone()).await;
    let (b, pb) = node(&redis, cfg).await;
    let c = ch("room:1");
    let (sa, sb) = (Collect::new(), Collect::new());
    a.subscribe(&c, sa.clone()).await.expect("subscribe");
    b.subscribe(&c, sb.clone()).await.expect("subscribe");

    enter(&pa, &c, "alice", "a1").await;
    enter(&pb, &c, "bob", "b1").await;
    enter(&pb, &c, "alice", "b2").await; // alice's second connection, on the other node
    let roster = pa.roster(&c, 10).await.expect("roster");
    assert_eq!((roster.clients, roster.users), (3, 2));
    let mut users: Vec<String> = roster
        .members
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(m).expect("json"))
        .map(|v| format!("{}@{}", v["user"].as_str().expect("user"), v["client"]))
        .collect();
    users.sort();
    assert_eq!(users, ["alice@\"a1\"", "alice@\"b2\"", "bob@\"b1\""]);

    pa.exit(&c, "a1"); // alice still has b2: no leave
    pb.exit(&c, "b1");
    sb.wait_for(3).await; // join alice, join bob, leave bob
    pb.exit(&c, "b2");
    eventually("alice's leave", || {
        let sb = sb.clone();
        async move { room_events(&sb).len() == 4 }
    })
    .await;
    settle(&a, &[&sa, &sb], "room:1").await;
    let expected = [
        ev("herald.join", "alice"),
        ev("herald.join", "bob"),
        ev("herald.leave", "bob"),
        ev("herald.leave", "alice"),
    ];
    assert_eq!(room_events(&sa), expected);
    assert_eq!(room_events(&sb), expected);
    let h = a.history(&c, latest(100)).await.expect("history");
    assert_eq!(
        h.messages.len(),
        5,
        "4 room events and the marker, each once"
    );
    assert_eq!(pb.roster(&c, 10).await.expect("roster").clients, 0);
}

#[tokio::test]
async fn a_dead_nodes_members_leave_once_when_its_presence_expires() {
    let redis = RedisServer::start();
    dead_node_case(redis.url()).await;
}

/// The same on a 3-master Redis Cluster: the room script's keys (a dead node's connection set
/// included) share the channel's slot, and its messages go out with SPUBLISH.
#[tokio::test]
async fn a_dead_nodes_members_leave_once_on_a_cluster() {
    let cluster = RedisCluster::start();
    dead_node_case(cluster.url()).await;
}

async fn dead_node_case(url: String) {
    let cfg = rooms(Duration::from_secs(30), 100);
    let c = ch("room:crash");
    let (dying, pd) = node_at(url.clone(), cfg.clone()).await;
    let mut survivors = Vec::new();
    for _ in 0..3 {
        let (b, p) = node_at(url.clone(), cfg.clone()).await;
        let sink = Collect::new();
        b.subscribe(&c, sink.clone()).await.expect("subscribe");
        // An anonymous subscriber: the node watches the room's expiries.
        p.enter(&c, "watcher", None).await.expect("watch");
        survivors.push((b, p, sink));
    }
    enter(&survivors[0].1, &c, "carol", "s1").await;
    for (user, client) in [
        ("alice", "d1"),
        ("alice", "d2"),
        ("bob", "d3"),
        ("carol", "d4"),
    ] {
        enter(&pd, &c, user, client).await;
    }
    assert_eq!(pd.roster(&c, 10).await.expect("roster").clients, 5);

    // kill -9: no exits, no more refreshes.
    drop(pd);
    drop(dying);
    eventually("the dead node's members to expire", || {
        let p = survivors[1].1.clone();
        let c = c.clone();
        async move { p.roster(&c, 10).await.is_ok_and(|r| r.clients == 1) }
    })
    .await;
    let (b0, _, _) = &survivors[0];
    let sinks: Vec<&Arc<Collect>> = survivors.iter().map(|(_, _, s)| s).collect();
    for sink in &sinks {
        let sink = (*sink).clone();
        eventually("the leaves", || {
            let sink = sink.clone();
            async move { room_events(&sink).len() == 5 }
        })
        .await;
    }
    // More sweeps find nothing more to send.
    for (_, p, _) in &survivors {
        p.roster(&c, 10).await.expect("sweep");
    }
    settle(b0, &sinks, "room:crash").await;
    for sink in sinks {
        let mut got = room_events(sink);
        got[2..].sort();
        assert_eq!(
            got,
            [
                ev("herald.join", "carol"),
                ev("herald.join", "alice"),
                ev("herald.join", "bob"),
                ev("herald.leave", "alice"),
                ev("herald.leave", "bob"),
            ],
            "carol stays (she is on a live node too); alice leaves once for two connections"
        );
    }
    let h = b0.history(&c, latest(100)).await.expect("history");
    let leaves = h
        .messages
        .iter()
        .filter(|m| {
            m.event
                .as_ref()
                .is_some_and(|e| e.as_str() == "herald.leave")
        })
        .count();
    assert_eq!(leaves, 2, "in the stream exactly once each");
}

#[tokio::test]
async fn a_reconnect_to_another_node_within_the_grace_sends_nothing() {
    let redis = RedisServer::start();
    let cfg = rooms(Duration::from_secs(1), 100);
    let (a, pa) = node(&redis, cfg.clone()).await;
    let (_b, pb) = node(&redis, cfg).await;
    let c = ch("room:reload");
    let sink = Collect::new();
    a.subscribe(&c, sink.clone()).await.expect("subscribe");
    enter(&pa, &c, "alice", "a1").await;
    pa.exit(&c, "a1");
    enter(&pb, &c, "alice", "b1").await; // the reloaded page, on another node
    pb.exit(&c, "b1");
    eventually("alice's one leave", || {
        let sink = sink.clone();
        async move { room_events(&sink).len() >= 2 }
    })
    .await;
    settle(&a, &[&sink], "room:reload").await;
    // A leave for the first connection would have come a grace after it, before this one.
    assert_eq!(
        room_events(&sink),
        [ev("herald.join", "alice"), ev("herald.leave", "alice")]
    );
}

#[tokio::test]
async fn storms_caps_races_and_a_lost_redis() {
    let redis = RedisServer::start();
    let (a, p) = node(&redis, rooms(Duration::ZERO, 3)).await;
    let c = ch("room:storm");
    let sink = Collect::new();
    a.subscribe(&c, sink.clone()).await.expect("subscribe");
    // 300 members entering at once: each is registered, joins stop at the cap.
    let entering = (0..300).map(|i| {
        let p = p.clone();
        let c = c.clone();
        async move { enter(&p, &c, &format!("u{i}"), &format!("c{i}")).await }
    });
    futures_util::future::join_all(entering).await;
    let roster = p.roster(&c, 50).await.expect("roster");
    assert_eq!((roster.clients, roster.users), (300, 300));
    assert_eq!(roster.members.len(), 50);
    assert!(roster.truncated, "a capped listing says so");
    settle(&a, &[&sink], "room:storm").await;
    assert_eq!(
        room_events(&sink).len(),
        3,
        "no joins above join_leave_max_members"
    );

    // An exit right behind its enter (a connection that vanished at once) leaves no ghost.
    let race = ch("room:race");
    let entering = p.enter(&race, "r1", Some(member("r", "r1")));
    tokio::pin!(entering);
    tokio::select! {
        biased;
        _ = &mut entering => {}
        () = std::future::ready(()) => {}
    }
    p.exit(&race, "r1");
    let _ = entering.await;
    eventually("no ghost", || {
        let p = p.clone();
        let race = race.clone();
        async move { p.roster(&race, 10).await.is_ok_and(|r| r.clients == 0) }
    })
    .await;

    // Redis loses everything: the node enters its members again by itself.
    let small = ch("room:lost");
    enter(&p, &small, "x", "x1").await;
    enter(&p, &small, "y", "y1").await;
    redis.cli(&["FLUSHALL"]);
    assert_eq!(p.roster(&small, 10).await.expect("roster").clients, 0);
    eventually("the resync", || {
        let p = p.clone();
        let small = small.clone();
        async move { p.roster(&small, 10).await.is_ok_and(|r| r.clients == 2) }
    })
    .await;
}
