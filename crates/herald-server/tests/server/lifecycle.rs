//! Starting, probing and stopping the process.

use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readiness_first_then_clients_spread_over_the_window() {
    const WINDOW: Duration = Duration::from_secs(2);
    let mut h = Herald::start(&["--drain-window", "2s"]).await;
    let mut ws_clients = Vec::new();
    for _ in 0..12 {
        let mut ws = Ws::connect(&h.ws_url("/v1/ws?channel=a")).await;
        ws.next().await;
        ws_clients.push(ws);
    }
    let mut sse_clients = Vec::new();
    for _ in 0..6 {
        sse_clients.push(Sse::connect(&h.url("/v1/sse?channel=a"), None).await);
    }
    h.publish("a", json!(1)).await;

    // A connection a client opened just before the drain and uses just after it.
    let mut early = tokio::net::TcpStream::connect(h.addr())
        .await
        .expect("connect");

    let started = Instant::now();
    h.terminate();
    // Readiness fails first, while the streams are still open and publishes still work.
    let (status, body) = within("readyz to fail", async {
        loop {
            let (status, body) = h.get("/readyz").await;
            if status == 503 {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(body.contains("draining"), "{status} {body}");
    let head = raw_get(&mut early, "/readyz").await;
    assert!(
        head.starts_with("HTTP/1.1 503") && head.to_ascii_lowercase().contains("connection: close"),
        "a request on a connection opened before the drain is answered, and told to go: {head}"
    );
    h.publish("a", json!(2)).await;
    let refused = reqwest::get(h.url("/v1/sse?channel=a"))
        .await
        .expect("response");
    assert_eq!(
        refused.status(),
        503,
        "new streams go elsewhere during the drain"
    );

    // Every client keeps receiving until its own moment comes, then gets the reconnect signal.
    // A client whose moment came before the second publish does not see it (it would resume it
    // on another node), so what it got is [1] or [1, 2].
    let mut tasks = Vec::new();
    for mut ws in ws_clients {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let close = loop {
                match ws.next_or_close().await {
                    Ok(v) if v["type"] == "message" => got.push(v["data"].clone()),
                    Ok(_) => {}
                    Err(code) => break code,
                }
            };
            assert_eq!(close, Some(1012));
            (got, started.elapsed())
        }));
    }
    for mut sse in sse_clients {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ev = sse.next().await.expect("a final event before the end");
                if ev.event == "herald.reconnect" {
                    assert_eq!(ev.json()["code"], "draining");
                    break;
                }
                if !ev.event.starts_with("herald.") {
                    got.push(ev.json());
                }
            }
            assert!(sse.next().await.is_none(), "stream ended");
            (got, started.elapsed())
        }));
    }
    let mut closed_at = Vec::new();
    for t in tasks {
        let (got, at) = within("a client to be drained", t)
            .await
            .expect("client task");
        assert!(got == [json!(1)] || got == [json!(1), json!(2)], "{got:?}");
        closed_at.push(at);
    }
    let status = within("exit", h.child.wait()).await.expect("wait");
    assert!(status.success(), "{status:?}");
    // Spread, not a storm: 18 uniform draws over 2 s essentially never fall within 10% of it.
    closed_at.sort();
    let spread = closed_at[closed_at.len() - 1] - closed_at[0];
    assert!(
        spread > WINDOW / 10,
        "all clients were closed within {spread:?}"
    );
    // The window bounds the drain (plus the documented 2 s grace and process exit).
    assert!(
        started.elapsed() < WINDOW + Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );
}

/// Sends a bare GET on `stream` and returns the response as text, read until the server closes.
async fn raw_get(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nhost: herald\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    within("a response and close", stream.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
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
}

/// Every series the Grafana dashboard queries exists on a fresh node (counters at 0): a node
/// that has not yet seen a slow consumer or a failed publish shows 0, not "No data". The selectors are read
/// from the dashboard itself, so a panel added later is covered too.
#[tokio::test]
async fn every_series_the_dashboard_queries_is_exported_from_the_start() {
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/dashboards/herald.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard"))
            .expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");

    let h = Herald::start(&[]).await;
    let (_, text) = h.get("/metrics").await;
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let mut checked = 0;
    for expr in &exprs {
        for (name, matchers) in herald_selectors(expr) {
            checked += 1;
            let found = series.iter().any(|line| {
                let Some(rest) = line.strip_prefix(name.as_str()) else {
                    return false;
                };
                if !rest.starts_with([' ', '{']) {
                    return false;
                }
                // Counters start at 0; gauges (open sockets, the limit) exist with their value.
                let value = line.rsplit(' ').next().unwrap_or_default();
                (value == "0" || !name.ends_with("_total"))
                    && matchers.iter().all(|(label, op, want)| {
                        let got = label_value(rest, label);
                        match op.as_str() {
                            "=" => got.as_deref() == Some(want.as_str()),
                            "!=" => got.is_some_and(|g| g != *want),
                            "=~" => got.is_some_and(|g| want.split('|').any(|w| w == g)),
                            _ => panic!("matcher {op} in {expr}"),
                        }
                    })
            });
            assert!(
                found,
                "no series at 0 for {name} {matchers:?} (from {expr})"
            );
        }
    }
    assert!(checked > 20, "{checked} selectors");
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push(e.to_owned()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// A PromQL label matcher: label, operator (`=`, `!=`, `=~`), value.
type Matcher = (String, String, String);

/// The `herald_*` selectors of a PromQL expression: metric name and its label matchers (label,
/// operator, value), leaving out `instance` and `job`, which Prometheus adds.
fn herald_selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("herald_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let body = &body[..body.find('}').expect("closing brace")];
            for m in body.split(',') {
                let op_at = m.find(['=', '!']).expect("matcher operator");
                let label = m[..op_at].trim().to_owned();
                let after = &m[op_at..];
                let op_len = after.find('"').expect("quoted value");
                let op = after[..op_len].to_owned();
                let value = after[op_len..].trim_matches('"').to_owned();
                if label != "instance" && label != "job" {
                    matchers.push((label, op, value));
                }
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// The value of `label` in a series' `{...}` part, if it has one.
fn label_value(series: &str, label: &str) -> Option<String> {
    let labels = series.strip_prefix('{')?.split('}').next()?;
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == label).then(|| v.trim_matches('"').to_owned())
    })
}
