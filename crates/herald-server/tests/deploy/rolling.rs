//! Rolling restart through nginx: while a publisher publishes continuously, each of the three
//! nodes in turn gets SIGTERM, drains, exits and is started again on the same address (so nginx's
//! upstream stays valid). Subscribers on both transports, connected through nginx, reconnect and
//! resume; every acknowledged message reaches every one of them exactly once (after dropping
//! duplicates by offset), with the data it was published with.
//!
//! Needs the Redis broker wiring in the server (`--redis-url`).

use tokio::sync::{mpsc, watch};

use crate::{
    nginx::Fleet,
    support::{
        subscriber::{self, Transport, assert_exactly_once},
        within,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_through_nginx_loses_nothing() {
    let mut fleet = Fleet::start(3, &["--drain-window", "1s"]).await;
    let base = fleet.nginx.url("");

    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (target_tx, target_rx) = watch::channel(None);
    let mut subscribers = Vec::new();
    for transport in [Transport::Ws, Transport::Sse, Transport::Ws, Transport::Sse] {
        subscribers.push(subscriber::spawn(
            transport,
            base.clone(),
            "roll",
            ready_tx.clone(),
            target_rx.clone(),
        ));
    }
    for _ in &subscribers {
        within("subscribers to be live", ready_rx.recv())
            .await
            .expect("ready");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (acked_tx, mut acked_rx) = watch::channel(0usize);
    let publisher = tokio::spawn(subscriber::publish_until_stopped(
        base.clone(),
        "roll".to_owned(),
        stop_rx,
        acked_tx,
    ));

    // Each node in turn: let some publishes through, then drain it, and start it again.
    const STEP: usize = 40;
    for (i, node) in fleet.nodes.iter_mut().enumerate() {
        let want = STEP * (i + 1);
        within(
            "publishes to be acknowledged",
            acked_rx.wait_for(|n| *n >= want),
        )
        .await
        .expect("publisher running");
        node.terminate();
        node.wait_for_ready(false).await;
        node.wait_exit().await;
        node.restart().await;
        node.wait_for_ready(true).await;
    }
    let want = STEP * 4;
    within(
        "publishes after the last restart",
        acked_rx.wait_for(|n| *n >= want),
    )
    .await
    .expect("publisher running");
    stop_tx.send_replace(true);
    let (acks, retries) = within("the publisher to stop", publisher)
        .await
        .expect("publisher");

    // Idempotent retries: one offset per message, no holes, no duplicates in history.
    let offsets: Vec<u64> = acks.iter().map(|a| a.0).collect();
    assert_eq!(
        offsets,
        (1..=acks.len() as u64).collect::<Vec<_>>(),
        "acknowledged offsets are 1..=n ({retries} retried attempts)"
    );

    target_tx.send_replace(Some(acks.len() as u64));
    for s in subscribers {
        let report = within("a subscriber to catch up", s)
            .await
            .expect("subscriber");
        assert_exactly_once(&report, &acks);
        // Every node was drained, so every subscriber was told to reconnect at least once, with
        // the documented signal, and reconnected through nginx.
        assert!(!report.endings.is_empty(), "{report:?}");
        for (_, ending) in &report.endings {
            let expected = match report.transport {
                Transport::Ws => "ws close 1012",
                Transport::Sse => "sse herald.reconnect draining",
            };
            assert_eq!(ending, expected, "{:?}", report.transport);
        }
        assert!(report.connects as usize > report.endings.len() - 1);
    }
}
