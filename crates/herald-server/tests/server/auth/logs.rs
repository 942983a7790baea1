//! A token never reaches a log line, wherever it travelled (URL, header, cookie, `auth` op),
//! accepted or refused, even with debug logging (which logs every request's URI).

use serde_json::json;

use super::{SECRET, claims, hs256, token};
use crate::support::{
    Herald, Launch,
    clients::{Sse, Ws},
};

#[tokio::test]
async fn a_token_in_the_url_never_appears_in_the_log() {
    let node = Herald::launch(Launch {
        args: &["--jwt-secret", SECRET, "--log-level", "debug"],
        capture_log: true,
        ..Launch::default()
    })
    .await;
    let good = token(Some("alice"), &["news.*"]);
    let expired = hs256(&claims(Some("alice"), &["news.*"], -60));
    let forged = format!("{}x", &good[..good.len() - 1]);
    let mut sse = Sse::connect(
        &node.url(&format!("/v1/sse?channel=news.a&token={good}")),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    // Through hyper (not the SSE fast path): a second request on a keep-alive connection.
    for t in [&good, &expired, &forged] {
        let (_, _) = node
            .get(&format!("/v1/channels/news.a/history?token={t}"))
            .await;
        let _ = node.get(&format!("/v1/sse?channel=secret&token={t}")).await;
        let _ = Ws::try_connect(&node.ws_url(&format!("/v1/ws?channel=news.a&token={t}"))).await;
    }
    let mut ws = Ws::connect(&node.ws_url("/v1/ws")).await;
    ws.send(json!({"op": "auth", "token": forged})).await;
    assert_eq!(ws.next().await["code"], "unauthorized");
    node.publish("news.a", json!("flush")).await;
    assert_eq!(sse.next_message().await.json(), "flush");
    // The last request's line: everything before it has been captured.
    node.wait_log("uri=/v1/publish").await;
    let text = node.log();
    assert!(
        text.contains("token=[redacted]"),
        "the requests were logged (debug): {text}"
    );
    for (what, t) in [("valid", &good), ("expired", &expired), ("forged", &forged)] {
        // Any recognisable part of a token: each of its three segments.
        for part in t.split('.').filter(|p| p.len() > 8) {
            assert!(
                !text.contains(part),
                "a part of the {what} token is in the log:\n{text}"
            );
        }
    }
}
