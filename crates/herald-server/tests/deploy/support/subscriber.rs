//! Clients that behave like real ones behind a load balancer: a subscriber that reconnects
//! whenever its stream ends and resumes from the last position it saw (WebSocket `since`, SSE
//! `Last-Event-ID`), and a publisher that retries with the same idempotency key.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::clients::{Sse, Ws};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transport {
    Sse,
    Ws,
}

/// What one subscriber saw over all its connections.
#[derive(Debug)]
pub struct Report {
    pub transport: Transport,
    /// Every message as received, duplicates included: (offset, data).
    pub messages: Vec<(u64, Value)>,
    /// The channel's epoch.
    pub epoch: String,
    /// How each connection ended: "ws close 1012", "sse herald.reconnect draining", ...
    pub endings: Vec<(Instant, String)>,
    /// Connection attempts that did not give a stream (refused, non-200, failed handshake).
    pub refused: u32,
    /// Streams opened.
    pub connects: u32,
}

/// Starts a subscriber of `channel` through `base` (`http://host:port`). It sends one `()` on
/// `ready` once its first subscription is live, and returns once it has seen an offset at or past
/// the target sent on `target`.
pub fn spawn(
    transport: Transport,
    base: String,
    channel: &str,
    ready: mpsc::UnboundedSender<()>,
    target: watch::Receiver<Option<u64>>,
) -> tokio::task::JoinHandle<Report> {
    let channel = channel.to_owned();
    tokio::spawn(run(transport, base, channel, ready, target))
}

async fn run(
    transport: Transport,
    base: String,
    channel: String,
    ready: mpsc::UnboundedSender<()>,
    mut target: watch::Receiver<Option<u64>>,
) -> Report {
    let mut r = Report {
        transport,
        messages: Vec::new(),
        epoch: String::new(),
        endings: Vec::new(),
        refused: 0,
        connects: 0,
    };
    // Position: the highest offset seen (or the subscribe position), and the SSE resume token.
    let mut pos: Option<u64> = None;
    let mut token: Option<String> = None;
    let done = |pos: Option<u64>, target: &watch::Receiver<Option<u64>>| matches!((*target.borrow(), pos), (Some(t), Some(p)) if p >= t);
    loop {
        if done(pos, &target) {
            return r;
        }
        match transport {
            Transport::Ws => {
                let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
                let Ok(mut ws) = Ws::try_connect(&url).await else {
                    r.refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await; // client backoff
                    continue;
                };
                r.connects += 1;
                let mut op = json!({"op": "subscribe", "channel": channel});
                let resuming = pos.is_some();
                if let Some(p) = pos {
                    op["since"] = json!({"offset": p, "epoch": r.epoch});
                }
                ws.send(op).await;
                loop {
                    tokio::select! {
                        frame = ws.next_or_close() => match frame {
                            Ok(v) if v["type"] == "subscribed" => {
                                if resuming {
                                    assert_eq!(v["recovered"], true, "WS resume: {v}");
                                    // ("", 0), a channel seen before its first message, continues
                                    // into whatever epoch that message created.
                                    if !r.epoch.is_empty() {
                                        assert_eq!(v["epoch"].as_str(), Some(r.epoch.as_str()));
                                    }
                                } else {
                                    let _ = ready.send(());
                                }
                                r.epoch = v["epoch"].as_str().expect("epoch").to_owned();
                                let at = v["offset"].as_u64().expect("offset");
                                pos = Some(pos.map_or(at, |p| p.max(at)));
                            }
                            Ok(v) if v["type"] == "message" => {
                                let offset = v["offset"].as_u64().expect("offset");
                                // A position is the last message's epoch and offset.
                                r.epoch = v["epoch"].as_str().expect("epoch").to_owned();
                                r.messages.push((offset, v["data"].clone()));
                                pos = Some(pos.map_or(offset, |p| p.max(offset)));
                                if done(pos, &target) {
                                    return r;
                                }
                            }
                            Ok(v) => panic!("unexpected WS frame {v}"),
                            Err(code) => {
                                let code = code.map_or("none".to_owned(), |c| c.to_string());
                                r.endings.push((Instant::now(), format!("ws close {code}")));
                                break;
                            }
                        },
                        _ = target.changed() => {
                            if done(pos, &target) {
                                return r;
                            }
                        }
                    }
                }
            }
            Transport::Sse => {
                let url = format!("{base}/v1/sse?channel={channel}");
                let mut sse = match Sse::try_connect(&url, token.as_deref()).await {
                    Ok(sse) if sse.status == 200 => sse,
                    _ => {
                        r.refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await; // client backoff
                        continue;
                    }
                };
                r.connects += 1;
                let resuming = token.is_some();
                let mut ending = "sse ended".to_owned();
                loop {
                    tokio::select! {
                        ev = sse.next() => {
                            let Some(ev) = ev else { break };
                            match ev.event.as_str() {
                                "herald.subscribed" => {
                                    let v = ev.json();
                                    if resuming {
                                        assert_eq!(v["recovered"], true, "SSE resume: {v}");
                                        if !r.epoch.is_empty() {
                                            assert_eq!(v["epoch"].as_str(), Some(r.epoch.as_str()));
                                        }
                                    } else {
                                        let _ = ready.send(());
                                    }
                                    r.epoch = v["epoch"].as_str().expect("epoch").to_owned();
                                    let at = v["offset"].as_u64().expect("offset");
                                    pos = Some(pos.map_or(at, |p| p.max(at)));
                                }
                                "herald.reconnect" | "herald.error" => {
                                    ending = format!("sse {} {}", ev.event, ev.json()["code"].as_str().unwrap_or("?"));
                                }
                                _ => {
                                    // The id is the resume token `epoch,offset,channel`.
                                    let id = ev.id.clone().expect("message id");
                                    if let Some(epoch) = id.split(',').next() {
                                        epoch.clone_into(&mut r.epoch);
                                    }
                                    let offset: u64 = id
                                        .split(',')
                                        .nth(1)
                                        .and_then(|o| o.parse().ok())
                                        .unwrap_or_else(|| panic!("resume token {id}"));
                                    r.messages.push((offset, ev.json()));
                                    pos = Some(pos.map_or(offset, |p| p.max(offset)));
                                    if done(pos, &target) {
                                        return r;
                                    }
                                }
                            }
                        }
                        _ = target.changed() => {
                            if done(pos, &target) {
                                return r;
                            }
                        }
                    }
                }
                if sse.last_id.is_some() {
                    token = sse.last_id.clone();
                }
                r.endings.push((Instant::now(), ending));
            }
        }
    }
}

/// One acknowledged publish: (offset, epoch, the publisher's sequence number in `data`).
pub type Ack = (u64, String, u64);

/// Publishes `{"seq": n}` for n = 1, 2, ... to `channel` through `base` until `stop` turns
/// true, each with idempotency key `<channel>-<n>`, retrying 5xx answers and connection errors
/// with the same key until acknowledged. `acked` carries how many are acknowledged so far.
pub async fn publish_until_stopped(
    base: String,
    channel: String,
    stop: watch::Receiver<bool>,
    acked: watch::Sender<usize>,
) -> (Vec<Ack>, u32) {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/publish");
    let mut acks: Vec<Ack> = Vec::new();
    let mut retries = 0;
    for n in 1u64.. {
        if *stop.borrow() {
            break;
        }
        let body = json!({"channel": channel, "data": {"seq": n}, "idempotency_key": format!("{channel}-{n}")});
        let ack = super::within("an acknowledged publish", async {
            loop {
                match http.post(&url).json(&body).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        let v: Value = resp.json().await.expect("JSON ack");
                        return (
                            v["offset"].as_u64().expect("offset"),
                            v["epoch"].as_str().expect("epoch").to_owned(),
                            n,
                        );
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        assert!(status.is_server_error(), "publish got {status}");
                    }
                    Err(_) => {}
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await; // publisher backoff
            }
        })
        .await;
        acks.push(ack);
        acked.send_replace(acks.len());
        tokio::time::sleep(Duration::from_millis(5)).await; // pacing: ~150 publishes/s
    }
    (acks, retries)
}

/// Checks that `report` holds every acknowledged message, each with the data it was published
/// with, and nothing that was not published (after dropping duplicates by offset).
pub fn assert_exactly_once(report: &Report, acks: &[Ack]) {
    let epoch = &acks[0].1;
    assert_eq!(
        &report.epoch, epoch,
        "{:?}: one epoch throughout",
        report.transport
    );
    let mut got = std::collections::BTreeMap::new();
    for (offset, data) in &report.messages {
        if let Some(prev) = got.insert(*offset, data.clone()) {
            assert_eq!(
                &prev, data,
                "offset {offset} delivered twice with different data"
            );
        }
    }
    for (offset, _, seq) in acks {
        let data = got
            .remove(offset)
            .unwrap_or_else(|| panic!("{:?} lost acknowledged offset {offset}", report.transport));
        assert_eq!(data, json!({"seq": seq}), "offset {offset}");
    }
    assert!(
        got.is_empty(),
        "{:?} received offsets nobody acknowledged: {:?}",
        report.transport,
        got.keys().collect::<Vec<_>>()
    );
}
