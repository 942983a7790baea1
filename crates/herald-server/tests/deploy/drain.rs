//! Draining one node of three behind nginx: its readiness fails first, each of its clients is
//! told to reconnect at its own moment over the window, nginx sends every reconnect (and every
//! new stream) to the other nodes, nobody misses a message, and the process exits within the
//! window plus the documented grace.
//!
//! Needs the Redis broker wiring in the server (`--redis-url`).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::{
    nginx::Fleet,
    support::{
        subscriber::{self, Transport},
        within,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_behind_nginx_moves_its_clients_to_the_others() {
    const WINDOW: Duration = Duration::from_secs(2);
    let mut fleet = Fleet::start(3, &["--drain-window", "2s"]).await;
    let base = fleet.nginx.url("");

    const CLIENTS: usize = 30;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (target_tx, target_rx) = watch::channel(None);
    let mut subscribers = Vec::new();
    for i in 0..CLIENTS {
        let transport = if i % 2 == 0 {
            Transport::Ws
        } else {
            Transport::Sse
        };
        subscribers.push(subscriber::spawn(
            transport,
            base.clone(),
            "drain",
            ready_tx.clone(),
            target_rx.clone(),
        ));
    }
    for _ in 0..CLIENTS {
        within("subscribers to be live", ready_rx.recv())
            .await
            .expect("ready");
    }
    // The node with the most clients is drained.
    let mut counts = Vec::new();
    for node in &fleet.nodes {
        counts.push(node.metric("herald_connections", &[]).await as usize);
    }
    assert_eq!(counts.iter().sum::<usize>(), CLIENTS, "{counts:?}");
    let victim = (0..3).max_by_key(|i| counts[*i]).expect("a node");
    let on_victim = counts[victim];
    assert!(on_victim >= CLIENTS / 3);

    let first = fleet.publish("drain", json!({"seq": 1})).await;
    let started = Instant::now();
    fleet.nodes[victim].terminate();
    // Readiness fails first: the node still holds its clients when /readyz turns 503.
    fleet.nodes[victim].wait_for_ready(false).await;
    let still_held = fleet.nodes[victim].metric("herald_connections", &[]).await;
    assert!(still_held > 0.0, "clients were cut before readiness failed");
    let second = fleet.publish("drain", json!({"seq": 2})).await;
    fleet.nodes[victim].wait_exit().await;
    let drained_in = started.elapsed();
    assert!(
        drained_in < WINDOW + Duration::from_secs(2) + Duration::from_secs(3),
        "the drain took {drained_in:?} (window {WINDOW:?} + 2s grace + margin)"
    );
    let third = fleet.publish("drain", json!({"seq": 3})).await;
    let acks = [
        (first.0, first.1, 1),
        (second.0, second.1, 2),
        (third.0, third.1, 3),
    ];

    target_tx.send_replace(Some(third.0));
    let mut told = Vec::new();
    for s in subscribers {
        let report = within("a subscriber to catch up", s)
            .await
            .expect("subscriber");
        subscriber::assert_exactly_once(&report, &acks);
        // nginx retried the draining node's 503 (and, once it was gone, its refused
        // connections) on the others: no reconnect attempt failed.
        assert_eq!(report.refused, 0, "{report:?}");
        for (at, ending) in &report.endings {
            let expected = match report.transport {
                Transport::Ws => "ws close 1012",
                Transport::Sse => "sse herald.reconnect draining",
            };
            assert_eq!(ending, expected);
            told.push(*at - started);
        }
    }
    assert_eq!(
        told.len(),
        on_victim,
        "every client of the node, and only those, was told"
    );
    // Spread, not a storm: ten or more uniform draws over 2 s essentially never fall within 10%.
    told.sort();
    let spread = told[told.len() - 1] - told[0];
    assert!(
        spread > WINDOW / 10,
        "all clients were told within {spread:?}"
    );
}
