//! RedisBroker against a real three-master Redis Cluster: sharded pub/sub between two nodes,
//! history resume, and a killed shard connection, with channels spread over every shard.

mod support;

use std::{collections::HashSet, sync::Arc, time::Duration};

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_core::StreamPosition;
use support::{Collect, RedisCluster, after, ch, eventually, latest, publish};

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
