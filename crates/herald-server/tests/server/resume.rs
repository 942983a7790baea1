//! Resume: SSE Last-Event-ID and WebSocket `since` deliver exactly what was missed, and the seam
//! between history and live messages loses and duplicates nothing.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

#[tokio::test]
async fn sse_resume_delivers_exactly_the_missed_messages() {
    let h = Herald::start(&[]).await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=news&channel=other"), None).await;
    h.publish("news", json!(1)).await;
    assert_eq!(sse.next_message().await.json(), json!(1));
    let token = sse.last_id.clone().expect("id");
    drop(sse);

    for i in 2..=6 {
        h.publish("news", json!(i)).await;
    }
    h.publish("other", json!("o1")).await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=news&channel=other"), Some(&token)).await;
    let mut subscribed = Vec::new();
    let mut got = Vec::new();
    while got.len() < 6 {
        let ev = sse.next().await.expect("event");
        if ev.event == "herald.subscribed" {
            subscribed.push(ev.json());
        } else {
            got.push(ev.json());
        }
    }
    assert!(
        subscribed.iter().all(|s| s["recovered"] == true),
        "{subscribed:?}"
    );
    assert_eq!(
        got,
        [
            json!(2),
            json!(3),
            json!(4),
            json!(5),
            json!(6),
            json!("o1")
        ]
    );
    // And the stream is live afterwards, with nothing repeated.
    h.publish("news", json!(7)).await;
    assert_eq!(sse.next_message().await.json(), json!(7));
    assert_eq!(
        h.metric("herald_recoveries_total", &["outcome=\"recovered\""])
            .await,
        2.0
    );

    // The same through the query parameter (a first connection that already has a position).
    let mut again = Sse::connect(
        &h.url(&format!(
            "/v1/sse?channel=news&last_event_id={}",
            urlencode(&token)
        )),
        None,
    )
    .await;
    assert_eq!(again.next_message().await.json(), json!(2));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn ws_since_delivers_exactly_the_missed_messages() {
    let h = Herald::start(&[]).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    ws.subscribe("c", None).await;
    h.publish("c", json!(1)).await;
    let m = ws.next_message().await;
    // A position is the epoch and offset of the last message seen (the channel had no epoch
    // before its first message).
    let epoch = m["epoch"].as_str().expect("epoch").to_owned();
    drop(ws);
    for i in 2..=4 {
        h.publish("c", json!(i)).await;
    }
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    let sub = ws
        .subscribe("c", Some((m["offset"].as_u64().expect("offset"), &epoch)))
        .await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(true), Some(1))
    );
    for i in 2..=4 {
        let m = ws.next_message().await;
        assert_eq!((m["offset"].as_u64(), &m["data"]), (Some(i), &json!(i)));
    }
    h.publish("c", json!(5)).await;
    assert_eq!(ws.next_message().await["offset"], 5);
}

#[tokio::test]
async fn a_resume_older_than_history_is_reported_not_silent() {
    let h = Herald::start(&["--history-size", "2"]).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    ws.subscribe("c", None).await;
    for i in 1..=5 {
        h.publish("c", json!(i)).await;
    }
    let epoch = ws.next_message().await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    let mut late = Ws::connect(&h.ws_url("/v1/ws")).await;
    let sub = late.subscribe("c", Some((1, &epoch))).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["offset"].as_u64()),
        (Some(false), Some(3))
    );
    // What is still retained follows, so the client loses as little as possible; the flag says
    // offsets 2-3 are gone.
    assert_eq!(late.next_message().await["offset"], 4);
    assert_eq!(late.next_message().await["offset"], 5);
    let other = late.subscribe("d", Some((3, "someotherepoch"))).await;
    assert_eq!(other["recovered"], false, "unknown epoch");

    let token = format!("{epoch},1,c");
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=c"), Some(&token)).await;
    let ev = sse.next().await.expect("event");
    assert_eq!(
        (ev.event.as_str(), &ev.json()["recovered"]),
        ("herald.subscribed", &json!(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_holds_under_a_concurrent_publisher() {
    let h = std::sync::Arc::new(Herald::start(&["--history-size", "10000"]).await);
    let mut first = Ws::connect(&h.ws_url("/v1/ws")).await;
    let epoch = first.subscribe("seam", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    const N: u64 = 600;
    let publisher = {
        let h = h.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                h.publish("seam", json!(i)).await;
            }
        })
    };
    // Subscribers resume from offset 0 at staggered points while the publisher runs.
    let mut clients = Vec::new();
    for k in 0..12 {
        if k % 2 == 0 {
            let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
            ws.subscribe("seam", Some((0, &epoch))).await;
            clients.push((Some(ws), None));
        } else {
            let sse = Sse::connect(
                &h.url("/v1/sse?channel=seam"),
                Some(&format!("{epoch},0,seam")),
            )
            .await;
            clients.push((None, Some(sse)));
        }
    }
    publisher.await.expect("publisher");
    for (ws, sse) in clients {
        let mut seen = Vec::new();
        match (ws, sse) {
            (Some(mut ws), _) => {
                for _ in 0..N {
                    seen.push(ws.next_message().await["offset"].as_u64().expect("offset"));
                }
            }
            (_, Some(mut sse)) => {
                for _ in 0..N {
                    seen.push(sse.next_message().await.json().as_u64().expect("n"));
                }
            }
            _ => unreachable!(),
        }
        assert_eq!(
            seen,
            (1..=N).collect::<Vec<_>>(),
            "every message exactly once, in order"
        );
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), N as usize);
    }
}
