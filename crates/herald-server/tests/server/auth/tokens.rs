//! Tokens on every read path: where they may come from, which ones are refused (with which
//! status or close code), and that a refused client gets nothing of the channel.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::{alg_none, claims, handshake_status, hs256, now, secured, sign, sse_refused, token};
use crate::support::clients::{Sse, Ws};

#[tokio::test]
async fn a_valid_token_subscribes_over_sse_from_the_header_the_query_or_the_cookie() {
    let node = secured(&[]).await;
    let t = token(Some("alice"), &["news.*"]);
    let bearer = format!("Bearer {t}");
    let cookie = format!("theme=dark; herald_token={t}");
    let url = node.url("/v1/sse?channel=news.a");
    let by_query = node.url(&format!("/v1/sse?channel=news.a&token={t}"));
    let ways = [
        (
            "header",
            url.as_str(),
            vec![("authorization", bearer.as_str())],
        ),
        ("query", by_query.as_str(), vec![]),
        ("cookie", url.as_str(), vec![("cookie", cookie.as_str())]),
    ];
    for (i, (way, url, headers)) in ways.into_iter().enumerate() {
        let mut sse = Sse::try_connect_with(url, None, &headers)
            .await
            .expect("request");
        assert_eq!(sse.status, 200, "token in the {way}");
        assert_eq!(
            sse.next().await.expect("subscribed").event,
            "herald.subscribed"
        );
        node.publish("news.a", json!(i)).await;
        assert_eq!(sse.next_message().await.json(), json!(i), "{way}");
    }
}

#[tokio::test]
async fn a_valid_token_subscribes_over_websocket_from_the_header_the_query_the_cookie_or_the_auth_op()
 {
    let node = secured(&[]).await;
    let t = token(Some("alice"), &["news.*"]);
    let bearer = format!("bearer {t}");
    let cookie = format!("herald_token={t}");
    let mut clients = vec![
        Ws::try_connect_with(&node.ws_url("/v1/ws"), &[("authorization", &bearer)])
            .await
            .expect("header"),
        Ws::connect(&node.ws_url(&format!("/v1/ws?token={t}"))).await,
        Ws::try_connect_with(&node.ws_url("/v1/ws"), &[("cookie", &cookie)])
            .await
            .expect("cookie"),
    ];
    let mut by_op = Ws::connect(&node.ws_url("/v1/ws")).await;
    by_op.send(json!({"op": "auth", "token": t, "id": 1})).await;
    let authed = by_op.next().await;
    assert_eq!(
        (
            authed["type"].as_str(),
            authed["sub"].as_str(),
            authed["id"].as_u64()
        ),
        (Some("authenticated"), Some("alice"), Some(1))
    );
    clients.push(by_op);
    for ws in &mut clients {
        ws.subscribe("news.a", None).await;
    }
    // `?channel=` with a token subscribes at the upgrade.
    let mut at_upgrade =
        Ws::connect(&node.ws_url(&format!("/v1/ws?channel=news.b&token={t}"))).await;
    assert_eq!(at_upgrade.next().await["type"], "subscribed");
    node.publish("news.a", json!("a")).await;
    node.publish("news.b", json!("b")).await;
    for ws in &mut clients {
        assert_eq!(ws.next_message().await["data"], "a");
    }
    assert_eq!(at_upgrade.next_message().await["data"], "b");
}

#[tokio::test]
async fn refused_tokens_get_the_documented_status_or_close_code_and_nothing_of_the_channel() {
    let node = secured(&[
        "--jwt-audience",
        "herald",
        "--jwt-issuer",
        "auth.example",
        "--jwt-leeway",
        "0s",
    ])
    .await;
    // History a refused client must never see, live or resumed.
    let (_, first) = node
        .post(
            "/v1/publish",
            r#"{"channel":"news.a","data":"secret-history"}"#,
        )
        .await;
    let resume = format!("{},0,news.a", first["epoch"].as_str().expect("epoch"));
    let good = |extra: serde_json::Value| {
        let mut c = claims(Some("mallory"), &["news.*"], 60);
        c["aud"] = "herald".into();
        c["iss"] = "auth.example".into();
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    assert_eq!(
        Sse::try_connect_with(
            &node.url("/v1/sse?channel=news.a"),
            None,
            &[(
                "authorization",
                &format!("Bearer {}", hs256(&good(json!({}))))
            )]
        )
        .await
        .expect("ok")
        .status,
        200,
        "the baseline token is valid"
    );
    let other_secret = EncodingKey::from_secret(b"another-secret-another-secret-0123");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "expired",
            Some(hs256(&good(json!({"exp": now() - 30})))),
            "token_expired",
        ),
        (
            "not yet valid",
            Some(hs256(&good(json!({"nbf": now() + 300})))),
            "unauthorized",
        ),
        (
            "issued in the future",
            Some(hs256(&good(json!({"iat": now() + 300})))),
            "unauthorized",
        ),
        (
            "wrong signature",
            Some(sign(
                &Header::new(Algorithm::HS256),
                &good(json!({})),
                &other_secret,
            )),
            "unauthorized",
        ),
        ("alg none", Some(alg_none(&good(json!({})))), "unauthorized"),
        (
            "wrong audience",
            Some(hs256(&good(json!({"aud": "someone-else"})))),
            "unauthorized",
        ),
        (
            "wrong issuer",
            Some(hs256(&good(json!({"iss": "evil.example"})))),
            "unauthorized",
        ),
        (
            "no exp",
            Some(hs256(
                &json!({"aud":"herald","iss":"auth.example","channels":"*"}),
            )),
            "unauthorized",
        ),
        (
            "malformed",
            Some("this.is-not.a-jwt".to_owned()),
            "unauthorized",
        ),
        ("missing", None, "unauthorized"),
    ];
    for (what, t, code) in cases {
        let bearer = t.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        // SSE: 401 with the code, no event, even when resuming.
        let (status, got) =
            sse_refused(&node.url("/v1/sse?channel=news.a"), Some(&resume), &headers).await;
        assert_eq!((status, got.as_str()), (401, code), "SSE, {what}");
        // WebSocket with the token at the upgrade: refused before the upgrade.
        let url = node.ws_url("/v1/ws?channel=news.a");
        assert_eq!(
            handshake_status(Ws::try_connect_with(&url, &headers).await),
            401,
            "WS upgrade, {what}"
        );
        // History: same answer.
        let mut req = node.http.get(node.url("/v1/channels/news.a/history"));
        if let Some(b) = &bearer {
            req = req.header("authorization", b);
        }
        let resp = req.send().await.expect("history");
        assert_eq!(resp.status().as_u16(), 401, "history, {what}");
        assert!(
            resp.headers().contains_key("www-authenticate"),
            "history, {what}"
        );
        assert!(!resp.text().await.expect("body").contains("secret-history"));
        // The `auth` op: an error frame, then close 4401 (expired: get a new token) or 4403.
        let Some(t) = t else { continue };
        let mut ws = Ws::connect(&node.ws_url("/v1/ws")).await;
        ws.send(json!({"op": "auth", "token": t, "id": 7})).await;
        let err = ws.next().await;
        assert_eq!(
            (
                err["type"].as_str(),
                err["code"].as_str(),
                err["id"].as_u64()
            ),
            (Some("error"), Some(code), Some(7)),
            "auth op, {what}"
        );
        let close = if code == "token_expired" { 4401 } else { 4403 };
        assert_eq!(
            ws.next_or_close().await,
            Err(Some(close)),
            "auth op, {what}"
        );
    }
}

#[tokio::test]
async fn a_websocket_without_a_token_gets_nothing_it_is_not_granted() {
    let node = secured(&[]).await;
    let mut ws = Ws::connect(&node.ws_url("/v1/ws")).await;
    ws.send(json!({"op": "subscribe", "channel": "news.a", "id": 1}))
        .await;
    let err = ws.next().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("unauthorized"), Some(1))
    );
    assert_eq!(
        handshake_status(Ws::try_connect(&node.ws_url("/v1/ws?channel=news.a")).await),
        401
    );
    // Still open: authenticating now works, and only then does the channel flow.
    node.publish("news.a", json!("before")).await;
    ws.send(json!({"op": "auth", "token": token(None, &["news.*"])}))
        .await;
    assert_eq!(ws.next().await["type"], "authenticated");
    ws.subscribe("news.a", None).await;
    node.publish("news.a", json!("after")).await;
    assert_eq!(ws.next_message().await["data"], "after");
}

#[tokio::test]
async fn prefix_patterns_grant_exactly_what_they_say() {
    let node = secured(&[]).await;
    let t = token(Some("1"), &["news.*"]);
    let bearer = format!("Bearer {t}");
    let auth = [("authorization", bearer.as_str())];
    for denied in ["newsletter", "news", "user:1", "news."] {
        let url = node.url(&format!("/v1/sse?channel={denied}"));
        assert_eq!(
            sse_refused(&url, None, &auth).await,
            (403, "forbidden".into()),
            "{denied}"
        );
    }
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={t}"))).await;
    for (i, denied) in ["newsletter", "news", "user:1"].into_iter().enumerate() {
        ws.send(json!({"op": "subscribe", "channel": denied, "id": i}))
            .await;
        let err = ws.next().await;
        assert_eq!(
            (err["code"].as_str(), err["id"].as_u64()),
            (Some("forbidden"), Some(i as u64)),
            "{denied}"
        );
    }
    ws.subscribe("news.sport", None).await;
    // Publishes to the refused channels are acknowledged before the one to news.sport: had
    // any reached this client, it would arrive first.
    for denied in ["newsletter", "news", "user:1"] {
        node.publish(denied, json!(denied)).await;
    }
    node.publish("news.sport", json!("goal")).await;
    let m = ws.next_message().await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("news.sport"), Some("goal"))
    );
}

#[tokio::test]
async fn a_resume_is_authorised_channel_by_channel() {
    let node = secured(&[]).await;
    let (_, n) = node
        .post("/v1/publish", r#"{"channel":"news.a","data":"n1"}"#)
        .await;
    let (_, s) = node
        .post("/v1/publish", r#"{"channel":"secret.x","data":"s1"}"#)
        .await;
    let last_event_id = format!(
        "{},0,news.a;{},0,secret.x",
        n["epoch"].as_str().expect("epoch"),
        s["epoch"].as_str().expect("epoch")
    );
    let t = token(None, &["news.*"]);
    let bearer = format!("Bearer {t}");
    let auth = [("authorization", bearer.as_str())];
    // Asking for the forbidden channel too: the whole stream is refused, nothing is sent.
    let both = node.url("/v1/sse?channel=news.a&channel=secret.x");
    assert_eq!(
        sse_refused(&both, Some(&last_event_id), &auth).await,
        (403, "forbidden".into())
    );
    // Asking only for the granted one with a Last-Event-ID naming both: only news.a resumes.
    let mut sse = Sse::try_connect_with(
        &node.url("/v1/sse?channel=news.a"),
        Some(&last_event_id),
        &auth,
    )
    .await
    .expect("request");
    assert_eq!(sse.status, 200);
    let sub = sse.next().await.expect("subscribed");
    assert_eq!(
        (sub.event.as_str(), sub.json()["channel"].as_str()),
        ("herald.subscribed", Some("news.a"))
    );
    assert_eq!(sse.next_message().await.json(), "n1");
    node.publish("secret.x", json!("s2")).await;
    node.publish("news.a", json!("n2")).await;
    let next = sse.next_message().await;
    assert_eq!(
        next.json(),
        "n2",
        "nothing of secret.x, neither history nor live"
    );
    assert!(
        !next.id.expect("id").contains("secret.x"),
        "the resume token no longer names it"
    );
    // WebSocket: a resume of the forbidden channel is refused like a fresh subscribe.
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={t}"))).await;
    let epoch = s["epoch"].as_str().expect("epoch");
    ws.send(
        json!({"op": "subscribe", "channel": "secret.x", "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    assert_eq!(ws.next().await["code"], "forbidden");
    ws.subscribe("news.a", None).await;
    node.publish("news.a", json!("n3")).await;
    assert_eq!(
        ws.next_message().await["data"],
        "n3",
        "no s1 or s2 before it"
    );
    // History of a channel the token does not grant is refused too.
    let resp = node
        .http
        .get(node.url("/v1/channels/secret.x/history"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("history");
    assert_eq!(resp.status().as_u16(), 403);
    let resp = node
        .http
        .get(node.url(&format!("/v1/channels/news.a/history?token={t}")))
        .send()
        .await
        .expect("history");
    assert_eq!(resp.status().as_u16(), 200);
}
