//! Every metric the Grafana dashboard queries exists in a real node's /metrics after some traffic.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::support::{
    Herald,
    clients::{Sse, Ws},
    poll, repo_file,
};

/// Metrics Prometheus makes up itself rather than scraping (`up` per target).
const SYNTHETIC: &[&str] = &["up"];

/// Every PromQL expression of every panel (rows' nested panels included).
pub fn dashboard_exprs() -> Vec<String> {
    let dash: Value = serde_json::from_str(&repo_file("deploy/grafana/dashboards/herald.json"))
        .expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_owned());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// The metric names an expression selects: identifiers that are not functions, keywords,
/// label names (inside `{}` or `by (...)`), durations, numbers, strings or Grafana variables.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    ];
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        let mut quote: Option<char> = None;
        while j < s.len() {
            match (quote, s[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '\\') => j += 1,
                (None, '"' | '\'' | '`') => quote = Some(s[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {close:?} in {expr}");
    };
    while i < s.len() {
        let c = s[i];
        if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while s[j] != c {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable or a number: skip the whole token.
            i += 1;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut j = i;
            while j < s.len() && s[j].is_whitespace() {
                j += 1;
            }
            // A function call, or an aggregation followed by its grouping: `sum by (le) (...)`.
            let next_word: String = s[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let called =
                (j < s.len() && s[j] == '(') || matches!(next_word.as_str(), "by" | "without");
            if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                if called {
                    i = skip_to(j, ')'); // by (label, ...) and friends
                }
            } else if !called {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_metric_name_parser_finds_selectors_only() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(herald_fanout_latency_seconds_bucket{instance=~"$instance",x="a}b"}[$__rate_interval]))) / on (instance) group_left up{job="herald"} > bool 0.5 or vector(1)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["herald_fanout_latency_seconds_bucket", "up"]
    );
}

/// Sample names and histogram families of a /metrics text exposition.
fn exposition(text: &str) -> (HashSet<String>, HashSet<String>) {
    let mut samples = HashSet::new();
    let mut histograms = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" histogram") {
                histograms.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, histograms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_on_a_node_after_traffic() {
    let h = Herald::start(&[
        "--max-message-bytes",
        "40000",
        "--queue-max-bytes",
        "65536",
        "--queue-max-messages",
        "100000",
    ])
    .await;

    // Subscribers on both transports; a publish delivered to both.
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=dash"), None).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    let epoch = ws.subscribe("dash", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    h.publish("dash", json!({"n": 1})).await;
    assert_eq!(sse.next_message().await.json(), json!({"n": 1}));
    assert_eq!(ws.next_message().await["data"], json!({"n": 1}));
    // A resume (recoveries, history reads) and a closed connection (disconnects).
    drop(ws);
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    ws.subscribe("dash", Some((0, &epoch))).await;
    assert_eq!(ws.next_message().await["offset"], 1);
    // A rejected publish and a history read over HTTP.
    let bad = h
        .http
        .post(h.url("/v1/publish"))
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status(), 400);
    assert_eq!(h.get("/v1/channels/dash/history").await.0, 200);

    // A subscriber that never reads: its queue overflows, so messages are dropped for it.
    let mut stuck = TcpStream::connect(h.addr()).await.expect("connect");
    stuck
        .write_all(
            format!(
                "GET /v1/sse?channel=flood HTTP/1.1\r\nHost: {}\r\n\r\n",
                h.addr()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    h.wait_metric("herald_connections", &["transport=\"sse\""], |v| v == 2.0)
        .await;
    let payload = "x".repeat(32 * 1024);
    let mut sent = 0;
    poll("a slow-consumer drop", || {
        let (h, payload) = (&h, &payload);
        sent += 1;
        async move {
            h.publish("flood", json!(payload)).await;
            (h.metric("herald_messages_dropped_total", &[]).await > 0.0).then_some(())
        }
    })
    .await;
    assert!(sent < 5000, "bounded flood");
    drop(stuck);

    let (_, text) = h.get("/metrics").await;
    let (samples, histograms) = exposition(&text);
    let mut missing = Vec::new();
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 20,
        "a real dashboard: {} queries",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        used.extend(names);
    }
    for name in &used {
        if SYNTHETIC.contains(&name.as_str()) {
            continue;
        }
        if !samples.contains(name) {
            missing.push(name.clone());
        }
        if let Some(base) = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|sfx| name.strip_suffix(sfx))
            .filter(|base| name.ends_with("_bucket") || histograms.contains(*base))
        {
            assert!(
                histograms.contains(base),
                "{name}: {base} is not a histogram"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard queries metrics no node exports: {missing:?}\n{text}"
    );
    // The dashboard covers what the issue asks for.
    for needed in [
        "herald_connections",
        "herald_subscriptions",
        "herald_channels",
        "herald_messages_published_total",
        "herald_messages_delivered_total",
        "herald_publish_duration_seconds_bucket",
        "herald_fanout_latency_seconds_bucket",
        "herald_messages_dropped_total",
        "herald_disconnects_total",
        "herald_recoveries_total",
        "herald_backbone_events_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "up",
    ] {
        assert!(used.contains(needed), "the dashboard charts {needed}");
    }
}
