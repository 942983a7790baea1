//! RedisBroker against a real three-master Redis Cluster: sharded pub/sub between two nodes,
//! history resume, and a killed shard connection, with channels spread over every shard; with
//! replicated durability, a shard without a replica and a master failover under traffic.

mod support;

use std::{collections::HashSet, sync::Arc, time::Duration};

use herald_broker::{Broker, BrokerError, Durability, RedisBroker, RedisConfig};
use herald_core::StreamPosition;
use herald_testkit::ClusterOptions;
use support::{Collect, RedisCluster, after, ch, cli, eventually, latest, publish, publish_range};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        history_size: 1000,
        history_ttl: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
        probe_interval: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

#[tokio::test]
async fn cluster_relays_between_nodes_and_resumes_from_history() {
    let cluster = RedisCluster::start();
    let publisher = RedisBroker::connect(config(cluster.url()))
        .await
        .expect("connect");
    let node = RedisBroker::connect(config(cluster.url()))
        .await
        .expect("connect");
    node.ready().await.expect("ready");

    let names: Vec<String> = (0..9).map(|i| format!("room-{i}")).collect();
    let owners: HashSet<u16> = names
        .iter()
        .map(|n| cluster.owner_of(&format!("herald:{{{n}}}")))
        .collect();
    assert_eq!(owners.len(), 3, "the channels cover every shard");

    let sinks: Vec<Arc<Collect>> = names.iter().map(|_| Collect::new()).collect();
    for (name, sink) in names.iter().zip(&sinks) {
        node.subscribe(&ch(name), sink.clone())
            .await
            .expect("subscribe");
    }
    for i in 1..=20 {
        for name in &names {
            let p = publisher
                .publish(publish(name, i, None))
                .await
                .expect("publish");
            assert_eq!(p.position.offset, i);
        }
    }
    for sink in &sinks {
        sink.wait_for(20).await;
        assert_eq!(sink.offsets(), (1..=20).collect::<Vec<_>>());
    }

    // A client that saw offset 15 resumes on the other node.
    for (name, sink) in names.iter().zip(&sinks) {
        let seen = sink.messages()[14].position();
        let h = publisher
            .history(&ch(name), after(&seen, 100))
            .await
            .expect("history");
        assert!(h.recovered);
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [16, 17, 18, 19, 20]
        );
        let dup = publisher
            .publish(publish(name, 0, Some("once")))
            .await
            .expect("publish");
        let again = publisher
            .publish(publish(name, 0, Some("once")))
            .await
            .expect("publish");
        assert!(again.duplicate && again.position == dup.position);
    }
    assert_eq!(node.stats().snapshot().decode_errors, 0);
    for shard in &cluster.nodes {
        let probes = shard.cli(&["pubsub", "shardchannels", "herald:{probe:*"]);
        assert!(
            !probes.trim().is_empty(),
            "every shard carries a self-probe channel"
        );
    }
}

#[tokio::test]
async fn cluster_shard_connection_kill_loses_nothing() {
    let cluster = RedisCluster::start();
    let publisher = RedisBroker::connect(config(cluster.url()))
        .await
        .expect("connect");
    let node = RedisBroker::connect(config(cluster.url()))
        .await
        .expect("connect");
    let names: Vec<String> = (0..6).map(|i| format!("k-{i}")).collect();
    let sinks: Vec<Arc<Collect>> = names.iter().map(|_| Collect::new()).collect();
    for (name, sink) in names.iter().zip(&sinks) {
        node.subscribe(&ch(name), sink.clone())
            .await
            .expect("subscribe");
    }
    let n = 200u64;
    let names_for_task = names.clone();
    let p = publisher.clone();
    let task = tokio::spawn(async move {
        for i in 1..=n {
            for name in &names_for_task {
                let key = format!("k{i}");
                loop {
                    match p.publish(publish(name, i, Some(&key))).await {
                        Ok(r) => {
                            assert_eq!(r.position.offset, i);
                            break;
                        }
                        Err(_) => tokio::task::yield_now().await,
                    }
                }
            }
        }
    });
    sinks[0].wait_for(50).await;
    for node in &cluster.nodes {
        node.cli(&["client", "kill", "type", "pubsub"]);
    }
    task.await.expect("publisher");
    for sink in &sinks {
        sink.wait_for(n as usize).await;
        assert_eq!(sink.offsets(), (1..=n).collect::<Vec<_>>());
    }
    eventually("a reconnect", || async {
        node.stats().snapshot().reconnects >= 1
    })
    .await;
    eprintln!("stats: {:?}", node.stats().snapshot());
    let top = publisher
        .history(&ch(&names[0]), latest(0))
        .await
        .expect("history")
        .top;
    let resumed = publisher
        .history(
            &ch(&names[0]),
            after(
                &StreamPosition {
                    epoch: top.epoch.clone(),
                    offset: n - 1,
                },
                10,
            ),
        )
        .await
        .expect("history");
    assert!(resumed.recovered && resumed.messages.len() == 1);

    // A connection that silently stops delivering is caught by the per-shard self-probe.
    node.debug_mute_pubsub();
    for name in &names {
        publisher
            .publish(publish(name, n + 1, None))
            .await
            .expect("publish");
    }
    for sink in &sinks {
        sink.wait_for(n as usize + 1).await;
        assert_eq!(sink.offsets(), (1..=n + 1).collect::<Vec<_>>());
    }
    assert!(node.stats().snapshot().probe_failures >= 1);
}

/// The plain port of the replica of the master on `master`, from the master's own view.
fn replica_of(cluster: &RedisCluster, master: u16) -> u16 {
    let info = cli(master, &["info", "replication"]);
    let port = info
        .lines()
        .find_map(|l| l.strip_prefix("slave0:"))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("port=")))
        .unwrap_or_else(|| panic!("no replica of {master}: {info}"));
    let port: u16 = port.trim().parse().expect("port");
    assert!(cluster.nodes.iter().any(|n| n.port == port), "{port}");
    port
}

/// Replicated durability on Cluster waits for a replica of the shard that owns the channel:
/// with one shard's replica dead, publishes to that shard's channels fail as unavailable while
/// the other shards' channels publish and deliver, even with that shard's `WAIT` still out; once
/// the replica is back, the held publish is acknowledged, its retry is a duplicate, and the
/// subscriber gets the message once.
#[tokio::test]
async fn cluster_replicated_durability_fails_only_the_shard_without_a_replica() {
    let mut cluster = RedisCluster::start_with(ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    });
    let replicated = |wait_timeout| RedisConfig {
        durability: Durability::Replicated,
        wait_timeout,
        ..config(cluster.url())
    };
    // `quick` gives up on a replica soon; `patient` keeps its `WAIT` out for longer than any
    // test runs, so while it waits on the broken shard the others must still get through. The
    // subscriber and everything that must succeed use `patient`: a slow replica under load
    // cannot fail them.
    let quick = RedisBroker::connect(replicated(Duration::from_millis(300)))
        .await
        .expect("connect");
    let patient = RedisBroker::connect(replicated(Duration::from_secs(3600)))
        .await
        .expect("connect");
    patient.ready().await.expect("ready");
    let channels = cluster.channels_on_every_shard("d");
    let sinks: Vec<Arc<Collect>> = channels.iter().map(|_| Collect::new()).collect();
    for (c, sink) in channels.iter().zip(&sinks) {
        patient
            .subscribe(&ch(c), sink.clone())
            .await
            .expect("subscribe");
        let p = patient.publish(publish(c, 1, None)).await.expect("publish");
        assert_eq!(p.position.offset, 1);
    }
    for sink in &sinks {
        sink.wait_for(1).await;
    }

    let (broken, healthy) = (&channels[0], &channels[1..]);
    let master = cluster.owner_of(&format!("herald:{{{broken}}}"));
    let replica = replica_of(&cluster, master);
    cluster.node(replica).kill();

    let failed = quick.publish(publish(broken, 2, Some("k2"))).await;
    assert!(
        matches!(failed, Err(BrokerError::Unavailable(_))),
        "{failed:?}"
    );
    let waiting = tokio::spawn({
        let patient = patient.clone();
        let broken = broken.clone();
        async move { patient.publish(publish(&broken, 3, Some("k3"))).await }
    });
    let others = async {
        for (i, c) in healthy.iter().enumerate() {
            for n in 2..=3 {
                let p = patient.publish(publish(c, n, None)).await.expect("publish");
                assert_eq!(p.position.offset, n);
            }
            sinks[i + 1].wait_for(3).await;
            assert_eq!(sinks[i + 1].offsets(), [1, 2, 3]);
        }
    };
    // Not a speed check: without the bound, a barrier that serialised shards would hang here.
    tokio::time::timeout(Duration::from_secs(60), others)
        .await
        .expect("the healthy shards are not held up by the broken one");
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    assert!(quick.stats().snapshot().replica_ack_timeouts >= 1);

    cluster.node(replica).restart();
    // The write behind the failed publish is on the primary: once the replica has it, the
    // patient publish is acknowledged and the retry of the failed one finds its key.
    let p = waiting.await.expect("task").expect("acknowledged");
    assert_eq!(p.position.offset, 3);
    let retried = patient
        .publish(publish(broken, 2, Some("k2")))
        .await
        .expect("the retry");
    assert!(retried.duplicate);
    assert_eq!(retried.position.offset, 2);
    sinks[0].wait_for(3).await;
    assert_eq!(sinks[0].offsets(), [1, 2, 3]);
}

/// A Cluster master killed under traffic with replicated durability: its replica is promoted,
/// publishes to its shard fail or wait until the new master has a replica again (the old master,
/// restarted, rejoins as one), and afterwards every channel has every acknowledged publish
/// exactly once, in order, one offset per idempotency key, for the subscriber too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_with_replicated_durability_loses_no_acknowledged_message() {
    let mut cluster = RedisCluster::start_with(ClusterOptions {
        replicas: 1,
        node_timeout_ms: Some(1000),
        ..ClusterOptions::default()
    });
    // Generous: a slow replica on a loaded machine must not fail the subscribes (publishes
    // retry anyway).
    let replicated = || RedisConfig {
        durability: Durability::Replicated,
        wait_timeout: Duration::from_secs(5),
        ..config(cluster.url())
    };
    let publisher = RedisBroker::connect(replicated()).await.expect("connect");
    let node = RedisBroker::connect(replicated()).await.expect("connect");
    let channels = cluster.channels_on_every_shard("f");
    let sinks: Vec<Arc<Collect>> = channels.iter().map(|_| Collect::new()).collect();
    for (c, sink) in channels.iter().zip(&sinks) {
        node.subscribe(&ch(c), sink.clone())
            .await
            .expect("subscribe");
    }
    let n = 40u64;
    // Each channel's second half starts only once the master is dead: publishing goes on
    // through the kill however fast the first half went.
    let (killed, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = channels
        .iter()
        .map(|c| {
            let (publisher, c, mut gate) = (publisher.clone(), c.clone(), gate.clone());
            tokio::spawn(async move {
                let (mut acked, first) = publish_range(publisher.clone(), &c, 1..=n / 2).await;
                let _ = gate.wait_for(|k| *k).await;
                let (more, second) = publish_range(publisher, &c, n / 2 + 1..=n).await;
                acked.extend(more);
                (acked, first + second)
            })
        })
        .collect();
    sinks[0]
        .wait_for(usize::try_from(n / 4).expect("small"))
        .await;
    let key = format!("herald:{{{}}}", channels[0]);
    let old = cluster.owner_of(&key);
    cluster.node(old).kill();
    let _ = killed.send(true);
    let promoted = cluster.wait_for_failover(&key, old);
    // The promoted master has no replica left: the old one, restarted, becomes its replica.
    cluster.node(old).restart();
    let mut failures = 0;
    for (c, task) in channels.iter().zip(tasks) {
        let (acked, failed) = task.await.expect("publisher");
        assert_eq!(
            acked,
            (1..=n).collect::<Vec<_>>(),
            "{c}: one offset per key"
        );
        failures += failed;
    }
    for (c, sink) in channels.iter().zip(&sinks) {
        sink.wait_for(n as usize).await;
        assert_eq!(
            sink.offsets(),
            (1..=n).collect::<Vec<_>>(),
            "{c}: once, in order"
        );
    }
    eprintln!(
        "cluster failover {old} -> {promoted}: {failures} publish attempts failed; publisher {:?}; node {:?}",
        publisher.stats().snapshot(),
        node.stats().snapshot()
    );
    // The kill hit the node: its sharded pub/sub lost the dead master's socket. (The publisher
    // may see no failure: the cluster client retries a request while the replica is promoted.)
    eventually("a pub/sub reconnect", || async {
        node.stats().snapshot().reconnects >= 1
    })
    .await;
    for c in &channels {
        let h = node.history(&ch(c), latest(1)).await.expect("history");
        assert_eq!(h.top.offset, n, "{c}: the masters have everything");
    }
}
