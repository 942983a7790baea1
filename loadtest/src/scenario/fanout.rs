//! `fanout`: C channels x S subscribers, a paced publisher, and a full delivery audit:
//! every acknowledged message must reach every subscriber of its channel exactly once, in
//! order.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Common, Ctx, parse_duration, spawn_fleet};
use crate::{
    client::Transport,
    payload, publisher,
    report::{self, Connections, Delivery, Publishing, round3},
    stats::{Percentiles, RangeSet},
    subscriber::Fleet,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber transport.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Number of channels.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub channels: usize,
    /// Subscribers per channel.
    #[arg(long, short = 's', default_value_t = 10)]
    pub subscribers: usize,
    /// Publishes per second, in total over all channels.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    /// Payload (published `data`) size in bytes.
    #[arg(long, short = 'p', default_value_t = 100)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishes in flight (one keep-alive connection each, spread over the URLs).
    #[arg(long, short = 'k', default_value_t = 8)]
    pub inflight: usize,
    /// After publishing, wait at most this long for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Give up waiting for all subscriptions after this long (and publish anyway).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub subscribe_timeout: Duration,
    /// Exit 0 even if messages were lost, duplicated or reordered.
    #[arg(long)]
    pub allow_loss: bool,
}

#[derive(Debug, Serialize)]
struct Params {
    urls: Vec<String>,
    transport: Transport,
    channels: usize,
    subscribers_per_channel: usize,
    rate: f64,
    payload: usize,
    duration_s: f64,
    inflight: usize,
    drain_s: f64,
    channel_prefix: String,
    source_ips: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    /// Conditions that do not fail the run but make its numbers mean less.
    warnings: Vec<String>,
    params: Params,
    connections: Connections,
    publish: Publishing,
    delivery: Delivery,
}

pub async fn run(args: Args) -> Result<bool, String> {
    if args.channels == 0 || args.subscribers == 0 {
        return Err("--channels and --subscribers must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be positive".into());
    }
    let ctx = Ctx::new(args.common.clone()).await?;
    let channels = ctx.channel_names(args.channels);
    let total = args.channels * args.subscribers;
    eprintln!(
        "fanout: {} channels x {} {:?} subscribers = {total} connections over {} node(s); \
         publishing {}/s x {} bytes for {:?}",
        args.channels,
        args.subscribers,
        args.transport,
        ctx.targets.len(),
        args.rate,
        args.payload,
        args.duration
    );
    let bucket_secs = (args.duration + args.drain).as_secs() as usize + 5;
    let running = spawn_fleet(
        &ctx,
        args.transport,
        &channels,
        args.subscribers,
        bucket_secs,
    );
    let subscribed = running.wait_settled(args.subscribe_timeout).await;
    eprintln!("subscribed: {subscribed}/{total}; publishing");
    if args.common.flavor == crate::net::Flavor::Nchan {
        // nchan answers the upgrade/stream head before its Redis subscription is certainly
        // live (Herald confirms with a `subscribed` frame): give it a moment so the first
        // messages are not counted as lost by a harness artifact.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    running.fleet.rates.set_start(payload::now_micros());
    let plan = publisher::Plan {
        channels: channels.clone(),
        rate: Some(args.rate),
        duration: args.duration,
        payload_size: args.payload,
        inflight: args.inflight,
        broadcast: None,
        api_key: ctx.common.api_key.clone(),
        retries: ctx.common.retries,
        idempotency_prefix: ctx.prefix.clone(),
    };
    let ticker = super::progress_ticker(running.fleet.clone());
    let outcome = publisher::run(
        plan,
        ctx.dialer.clone(),
        ctx.targets.clone(),
        CancellationToken::new(),
    )
    .await;
    drop(ticker);
    eprintln!(
        "published: {} acked, {} failed; draining",
        outcome.acked, outcome.failed
    );
    let drain_started = Instant::now();
    let complete = wait_drained(
        &running.fleet,
        &outcome.acked_offsets,
        &channels,
        args.subscribers,
        args.drain,
    )
    .await;
    let drain_s = drain_started.elapsed().as_secs_f64();

    let (fleet, results) = running.finish().await;
    let connections = Connections::from_results(&results);
    let publish = Publishing::from_outcome(&outcome, Some(args.rate));
    let mut delivery = Delivery::from_results(&results, &outcome.acked_offsets);
    delivery.latency_us = Percentiles::of(&fleet.latency.merged());
    delivery.per_second = fleet.rates.snapshot();
    delivery.peak_per_s = delivery.per_second.iter().copied().max().unwrap_or(0);
    delivery.complete = complete;
    delivery.drain_s = round3(drain_s);

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if publish.acked_per_s < args.rate * 0.95 {
        warnings.push(format!(
            "offered rate not reached: {:.0} acked msg/s of {} (publisher up to {:.0} ms behind)",
            publish.acked_per_s, args.rate, publish.max_behind_ms
        ));
    }
    if !delivery.complete {
        warnings.push("drain deadline passed before every subscriber had the last message".into());
    }
    if connections.failed > 0 {
        problems.push(format!(
            "{} subscribers failed to subscribe",
            connections.failed
        ));
    }
    if publish.acked == 0 {
        problems.push("no publish was acknowledged".into());
    }
    if publish.failed > 0 {
        problems.push(format!("{} publishes failed", publish.failed));
    }
    let loss = [
        (delivery.lost, "lost"),
        (delivery.duplicated, "duplicated"),
        (delivery.out_of_order, "out of order"),
    ];
    for (n, what) in loss {
        if n > 0 {
            problems.push(format!("{n} deliveries {what}"));
        }
    }
    let loss_free = delivery.lost == 0 && delivery.duplicated == 0 && delivery.out_of_order == 0;
    let ok = connections.failed == 0
        && publish.acked > 0
        && publish.failed == 0
        && (loss_free || args.allow_loss);

    let report = Report {
        scenario: "fanout",
        ok,
        problems,
        warnings,
        params: Params {
            urls: ctx.common.urls.clone(),
            transport: args.transport,
            channels: args.channels,
            subscribers_per_channel: args.subscribers,
            rate: args.rate,
            payload: args.payload,
            duration_s: args.duration.as_secs_f64(),
            inflight: args.inflight,
            drain_s: args.drain.as_secs_f64(),
            channel_prefix: ctx.prefix.clone(),
            source_ips: ctx.common.source_ips.len(),
        },
        connections,
        publish,
        delivery,
    };
    let mut human = String::from("--- fanout ---\n");
    report.connections.human(&mut human);
    report.publish.human(&mut human);
    report.delivery.human(&mut human);
    for w in &report.warnings {
        human.push_str(&format!("warning: {w}\n"));
    }
    human.push_str(&format!(
        "result: {}{}\n",
        if report.ok { "OK" } else { "FAIL" },
        if report.problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.problems.join("; "))
        }
    ));
    report::emit(&human, &report);
    Ok(report.ok)
}

/// Waits until every live subscriber has seen the last acknowledged offset of its channel
/// (channel order is total, so anything earlier has arrived or is lost), or `drain` passes.
pub async fn wait_drained(
    fleet: &Fleet,
    acked: &[RangeSet],
    channels: &Arc<Vec<Arc<str>>>,
    per_channel: usize,
    drain: Duration,
) -> bool {
    let deadline = Instant::now() + drain;
    let last: Vec<u64> = acked.iter().map(|a| a.max().unwrap_or(0)).collect();
    let n = channels.len();
    loop {
        let done = (0..n * per_channel).all(|i| {
            let p = &fleet.progress[i];
            let target = last[i % n];
            target == 0
                || !p.active.load(Ordering::Relaxed)
                || p.max_offset.load(Ordering::Relaxed) >= target
        });
        if done {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
