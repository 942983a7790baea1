//! Starting, probing and stopping the process.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    Herald,
    clients::{Sse, Ws},
    within,
};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let h = Herald::start(&[]).await;
    assert_eq!(
        h.get("/healthz").await,
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    assert_eq!(
        h.get("/readyz").await,
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    let (status, text) = h.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("herald_subscriptions"), "{text}");
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_exits() {
    let mut h = Herald::start(&["--shutdown-timeout", "5s"]).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws?channel=a")).await;
    ws.next().await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=a"), None).await;
    h.publish("a", json!(1)).await;
    assert_eq!(sse.next_message().await.json(), json!(1));
    h.terminate();
    assert_eq!(ws.next_message().await["data"], 1);
    assert_eq!(ws.next_or_close().await, Err(Some(1012)));
    let ev = sse.next().await.expect("a final event");
    assert_eq!(
        (ev.event.as_str(), &ev.json()["code"]),
        ("herald.reconnect", &json!("draining"))
    );
    assert!(sse.next().await.is_none(), "stream ended");
    let status = within("exit", h.child.wait()).await.expect("wait");
    assert!(status.success(), "{status:?}");
}

#[test]
fn invalid_configuration_exits_2_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--max-channel-len", "999"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_channel_len"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--listen",
        "--redis-url",
        "--history-size",
        "--sse-heartbeat",
        "HERALD_QUEUE_MAX_BYTES",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
    let _ = Duration::ZERO;
}
