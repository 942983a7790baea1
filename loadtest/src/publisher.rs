//! The paced HTTP publisher: K keep-alive connections spread over the node URLs, each with
//! one publish in flight, following one shared schedule (message i is due at start + i/R).
//!
//! A shared schedule instead of K independent timers keeps the total rate exact whatever K is;
//! a worker that falls behind sends immediately, and the report shows how far behind the
//! schedule ran, so an overloaded server cannot quietly lower the offered load.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    client::http::HttpConn,
    net::{Dialer, Flavor, Target},
    payload,
    stats::{RangeSet, new_histogram},
};

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub channels: Arc<Vec<Arc<str>>>,
    /// Messages per second in total; `None` publishes as fast as acks come back.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub payload_size: usize,
    pub inflight: usize,
    /// Use `/v1/broadcast` with this many channels per request (taken round-robin).
    pub broadcast: Option<usize>,
    pub api_key: Option<String>,
    /// Retries of a publish that got 503 or an IO error, each on the next node, with the same
    /// idempotency key (sent only when retries are on, so plain runs measure the plain path).
    pub retries: usize,
    /// Idempotency keys are `<prefix>-<message index>`.
    pub idempotency_prefix: String,
}

/// What happened, merged over workers.
#[derive(Debug)]
pub struct Outcome {
    /// Requests sent (a broadcast is one request).
    pub attempted: u64,
    /// Requests answered 200.
    pub acked: u64,
    /// Messages acknowledged (a broadcast acks one per channel).
    pub acked_messages: u64,
    pub failed: u64,
    /// Retries made (each also listed under `errors` as `retried: ...`).
    pub retried: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Histogram<u64>,
    /// Acknowledged offsets per channel index.
    pub acked_offsets: Vec<RangeSet>,
    pub elapsed: Duration,
    /// How late the last scheduled publish went out (0 when unpaced or on time).
    pub max_behind_us: u64,
    pub connects: u64,
}

#[derive(Deserialize)]
struct Ack<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    offset: Option<u64>,
    #[serde(borrow, default)]
    results: Option<Vec<Ack<'a>>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorInner<'a>,
}

#[derive(Deserialize)]
struct ErrorInner<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// Publishes per `plan` until its duration is over (or `cancel`).
pub async fn run(
    plan: Plan,
    dialer: Arc<Dialer>,
    targets: Arc<Vec<Target>>,
    cancel: CancellationToken,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let total = plan
        .rate
        .map(|r| (r * plan.duration.as_secs_f64()).round() as u64);
    let plan = Arc::new(plan);
    let mut workers = Vec::new();
    for k in 0..plan.inflight.max(1) {
        let (plan, dialer, targets, next, cancel) = (
            plan.clone(),
            dialer.clone(),
            targets.clone(),
            next.clone(),
            cancel.clone(),
        );
        workers.push(tokio::spawn(async move {
            worker(k, &plan, &dialer, &targets, &next, start, total, &cancel).await
        }));
    }
    let mut out = Outcome {
        attempted: 0,
        acked: 0,
        acked_messages: 0,
        failed: 0,
        retried: 0,
        errors: BTreeMap::new(),
        latency: new_histogram(),
        acked_offsets: vec![RangeSet::default(); plan.channels.len()],
        elapsed: Duration::ZERO,
        max_behind_us: 0,
        connects: 0,
    };
    for w in workers {
        let Ok(w) = w.await else {
            *out.errors
                .entry("publisher task panicked".into())
                .or_default() += 1;
            continue;
        };
        out.attempted += w.attempted;
        out.acked += w.acked;
        out.acked_messages += w.acked_messages;
        out.failed += w.failed;
        out.retried += w.retried;
        for (k, v) in w.errors {
            *out.errors.entry(k).or_default() += v;
        }
        let _ = out.latency.add(&w.latency);
        for (all, mine) in out.acked_offsets.iter_mut().zip(&w.acked_offsets) {
            all.extend_from(mine);
        }
        out.max_behind_us = out.max_behind_us.max(w.max_behind_us);
        out.connects += w.connects;
    }
    out.elapsed = start.elapsed();
    out
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    k: usize,
    plan: &Plan,
    dialer: &Dialer,
    targets: &[Target],
    next: &AtomicU64,
    start: Instant,
    total: Option<u64>,
    cancel: &CancellationToken,
) -> Outcome {
    let mut conns: Vec<HttpConn> = targets
        .iter()
        .map(|t| HttpConn::new(t, plan.api_key.as_deref()))
        .collect();
    let nch = plan.channels.len() as u64;
    let mut body = Vec::with_capacity(plan.payload_size + 256);
    let mut out = Outcome {
        attempted: 0,
        acked: 0,
        acked_messages: 0,
        failed: 0,
        retried: 0,
        errors: BTreeMap::new(),
        latency: new_histogram(),
        acked_offsets: vec![RangeSet::default(); plan.channels.len()],
        elapsed: Duration::ZERO,
        max_behind_us: 0,
        connects: 0,
    };
    let nchan = targets.first().is_some_and(|t| t.flavor == Flavor::Nchan);
    let mut path_buf = String::with_capacity(64);
    let path = if plan.broadcast.is_some() {
        "/v1/broadcast"
    } else {
        "/v1/publish"
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if cancel.is_cancelled() {
            break;
        }
        // The duration bounds the run even when the server cannot take the offered rate:
        // unsent messages are not sent late; the report shows the rate actually reached.
        if start.elapsed() >= plan.duration {
            break;
        }
        if let (Some(rate), Some(total)) = (plan.rate, total) {
            if i >= total {
                break;
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = cancel.cancelled() => break,
                }
            } else {
                out.max_behind_us = out.max_behind_us.max((now - due).as_micros() as u64);
            }
        }
        body.clear();
        let ts = payload::now_micros();
        if nchan {
            // nchan: raw payload to `/pub?id=CHANNEL`; its `seq` is the offset (net::Flavor).
            let ci = (i % nch) as usize;
            let seq = i / nch + 1;
            payload::write(&mut body, seq, ts, plan.payload_size);
            out.attempted += 1;
            let t = k % targets.len();
            path_buf.clear();
            path_buf.push_str("/pub?id=");
            crate::net::encode_query(&mut path_buf, &plan.channels[ci]);
            let sent = Instant::now();
            match conns[t].post(dialer, &targets[t], &path_buf, &body).await {
                Ok((201 | 202, _)) => {
                    out.latency
                        .saturating_record((sent.elapsed().as_micros() as u64).max(1));
                    out.acked += 1;
                    out.acked_messages += 1;
                    out.acked_offsets[ci].insert(seq);
                }
                Ok((status, _)) => {
                    out.failed += 1;
                    *out.errors.entry(format!("http {status}")).or_default() += 1;
                }
                Err(e) => {
                    out.failed += 1;
                    *out.errors.entry(format!("io: {e}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        }
        match plan.broadcast {
            None => {
                let ch = &plan.channels[(i % nch) as usize];
                body.extend_from_slice(br#"{"channel":""#);
                body.extend_from_slice(ch.as_bytes());
                body.extend_from_slice(b"\",");
                idempotency_key(&mut body, plan, i);
                body.extend_from_slice(br#""data":"#);
                payload::write(&mut body, i / nch + 1, ts, plan.payload_size);
                body.push(b'}');
            }
            Some(n) => {
                body.extend_from_slice(br#"{"channels":["#);
                for j in 0..n as u64 {
                    if j > 0 {
                        body.push(b',');
                    }
                    body.push(b'"');
                    body.extend_from_slice(
                        plan.channels[((i * n as u64 + j) % nch) as usize].as_bytes(),
                    );
                    body.push(b'"');
                }
                body.extend_from_slice(b"],");
                idempotency_key(&mut body, plan, i);
                body.extend_from_slice(br#""data":"#);
                payload::write(&mut body, i + 1, ts, plan.payload_size);
                body.push(b'}');
            }
        }
        out.attempted += 1;
        let mut tries = 0;
        loop {
            // A retry goes to the next node: the one that failed may be down.
            let t = (k + tries) % targets.len();
            let sent = Instant::now();
            let r = conns[t].post(dialer, &targets[t], path, &body).await;
            let retryable = match &r {
                Ok((status, _)) => *status == 503,
                Err(_) => true,
            };
            if retryable && tries < plan.retries {
                tries += 1;
                out.retried += 1;
                let label = match &r {
                    Ok((status, _)) => format!("retried: http {status}"),
                    Err(e) => format!("retried: io: {e}"),
                };
                *out.errors.entry(label).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
                continue;
            }
            match r {
                Ok((200, resp)) => {
                    out.latency
                        .saturating_record((sent.elapsed().as_micros() as u64).max(1));
                    match serde_json::from_slice::<Ack<'_>>(resp) {
                        Ok(ack) => {
                            out.acked += 1;
                            let single = [Ack {
                                channel: ack.channel,
                                offset: ack.offset,
                                results: None,
                            }];
                            let acks = ack.results.as_deref().unwrap_or(&single);
                            let per_request = plan.broadcast.unwrap_or(1) as u64;
                            for (j, a) in acks.iter().enumerate() {
                                let (Some(ch), Some(off)) = (&a.channel, a.offset) else {
                                    continue;
                                };
                                out.acked_messages += 1;
                                // Results come in request order; search otherwise.
                                let guess = ((i * per_request + j as u64) % nch) as usize;
                                let ci = if *plan.channels[guess] == **ch {
                                    Some(guess)
                                } else {
                                    plan.channels.iter().position(|c| **c == **ch)
                                };
                                if let Some(ci) = ci {
                                    out.acked_offsets[ci].insert(off);
                                }
                            }
                        }
                        Err(_) => {
                            out.failed += 1;
                            *out.errors
                                .entry("200 with unparsable body".into())
                                .or_default() += 1;
                        }
                    }
                }
                Ok((status, resp)) => {
                    out.failed += 1;
                    let code = serde_json::from_slice::<ErrorBody<'_>>(resp)
                        .map(|e| e.error.code.into_owned())
                        .unwrap_or_else(|_| "no error body".into());
                    *out.errors
                        .entry(format!("http {status} {code}"))
                        .or_default() += 1;
                }
                Err(e) => {
                    out.failed += 1;
                    *out.errors.entry(format!("io: {e}")).or_default() += 1;
                    // Do not spin on a dead node.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            break;
        }
    }
    out.connects = conns.iter().map(|c| c.connects).sum();
    out
}

/// Writes `"idempotency_key":"<prefix>-<i>",` when retries are on.
fn idempotency_key(body: &mut Vec<u8>, plan: &Plan, i: u64) {
    use std::io::Write as _;
    if plan.retries > 0 {
        // Writing into a Vec cannot fail.
        let _ = write!(
            body,
            r#""idempotency_key":"{}-{i}","#,
            plan.idempotency_prefix
        );
    }
}
