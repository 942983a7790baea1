//! `resume-storm`: while publishing, every subscriber drops its connection at the same moment
//! and resumes on a different node (WebSocket `since`, SSE `Last-Event-ID`). Measures how long
//! until each is live again and audits that nothing acknowledged went missing. Duplicates are
//! allowed by the contract across a reconnect (clients drop them by offset) and are reported,
//! not failed on.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Common, Ctx, fanout::wait_drained, parse_duration, spawn_fleet};
use crate::{
    client::Transport,
    payload, publisher,
    report::{self, Connections, Delivery, Publishing, round3},
    stats::{Percentiles, new_histogram},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Number of channels.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub channels: usize,
    /// Subscribers per channel.
    #[arg(long, short = 's', default_value_t = 10)]
    pub subscribers: usize,
    /// Publishes per second, in total.
    #[arg(long, short = 'r', default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long, short = 'p', default_value_t = 100)]
    pub payload: usize,
    /// How long to publish in total.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// When to drop everyone, after publishing started (default: a third of --duration).
    #[arg(long, value_parser = parse_duration)]
    pub storm_at: Option<Duration>,
    #[arg(long, short = 'k', default_value_t = 8)]
    pub inflight: usize,
    /// After publishing, wait at most this long for the last deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub subscribe_timeout: Duration,
    /// Exit 0 even if messages were lost or reordered.
    #[arg(long)]
    pub allow_loss: bool,
}

#[derive(Debug, Serialize)]
struct Recovery {
    subscribers: u64,
    caught_up: u64,
    not_caught_up: u64,
    /// From the drop until the subscriber received a message published after the drop.
    catch_up_us: Percentiles,
    /// Until the last subscriber caught up: the storm's total recovery time.
    all_caught_up_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    urls: Vec<String>,
    transport: Transport,
    channels: usize,
    subscribers_per_channel: usize,
    rate: f64,
    storm_at_s: f64,
    recovery: Recovery,
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
    if args.common.flavor == crate::net::Flavor::Nchan {
        return Err("resume-storm needs Herald's resume; --target nchan is not supported".into());
    }
    let storm_at = args.storm_at.unwrap_or(args.duration / 3);
    if storm_at >= args.duration {
        return Err("--storm-at must be before the end of --duration".into());
    }
    let ctx = Ctx::new(args.common.clone()).await?;
    if ctx.targets.len() < 2 {
        eprintln!("warning: one --url only: subscribers resume on the same node");
    }
    let channels = ctx.channel_names(args.channels);
    let total = args.channels * args.subscribers;
    eprintln!(
        "resume-storm: {total} {:?} subscribers over {} node(s), {}/s, storm at {storm_at:?} of {:?}",
        args.transport,
        ctx.targets.len(),
        args.rate,
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
    let publishing = tokio::spawn(publisher::run(
        plan,
        ctx.dialer.clone(),
        ctx.targets.clone(),
        CancellationToken::new(),
    ));
    tokio::time::sleep(storm_at).await;
    let dropped_at = payload::now_micros();
    let _ = running.storm.send(dropped_at);
    eprintln!("storm: every subscriber drops and resumes on the next node");
    let outcome = publishing
        .await
        .map_err(|_| "publisher task panicked".to_owned())?;
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

    let mut catch_up = new_histogram();
    let (mut caught_up, mut live) = (0u64, 0u64);
    for p in &running.fleet.progress {
        if !p.active.load(Ordering::Relaxed) {
            continue;
        }
        live += 1;
        let at = p.caught_up_at.load(Ordering::Relaxed);
        if at != 0 {
            caught_up += 1;
            catch_up.saturating_record(at.saturating_sub(dropped_at).max(1));
        }
    }
    let (fleet, results) = running.finish().await;
    let connections = Connections::from_results(&results);
    let publish = Publishing::from_outcome(&outcome, Some(args.rate));
    let mut delivery = Delivery::from_results(&results, &outcome.acked_offsets);
    delivery.latency_us = Percentiles::of(&fleet.latency.merged());
    delivery.per_second = fleet.rates.snapshot();
    delivery.peak_per_s = delivery.per_second.iter().copied().max().unwrap_or(0);
    delivery.complete = complete;
    delivery.drain_s = round3(drain_s);
    let recovery = Recovery {
        subscribers: live,
        caught_up,
        not_caught_up: live - caught_up,
        catch_up_us: Percentiles::of(&catch_up),
        all_caught_up_ms: (caught_up == live && live > 0)
            .then(|| round3(catch_up.max() as f64 / 1000.0)),
    };

    let mut problems = Vec::new();
    if connections.failed > 0 {
        problems.push(format!(
            "{} subscribers failed to subscribe",
            connections.failed
        ));
    }
    if publish.acked == 0 {
        problems.push("no publish was acknowledged".into());
    }
    if recovery.not_caught_up > 0 {
        problems.push(format!(
            "{} subscribers never caught up",
            recovery.not_caught_up
        ));
    }
    if connections.unrecovered > 0 {
        problems.push(format!(
            "{} resumes answered recovered=false",
            connections.unrecovered
        ));
    }
    for (n, what) in [
        (delivery.lost, "lost"),
        (delivery.out_of_order, "out of order"),
    ] {
        if n > 0 {
            problems.push(format!("{n} deliveries {what}"));
        }
    }
    let loss_free = delivery.lost == 0 && delivery.out_of_order == 0;
    let ok = connections.failed == 0
        && publish.acked > 0
        && recovery.not_caught_up == 0
        && connections.unrecovered == 0
        && (loss_free || args.allow_loss);

    let report = Report {
        scenario: "resume-storm",
        ok,
        problems,
        urls: ctx.common.urls.clone(),
        transport: args.transport,
        channels: args.channels,
        subscribers_per_channel: args.subscribers,
        rate: args.rate,
        storm_at_s: storm_at.as_secs_f64(),
        recovery,
        connections,
        publish,
        delivery,
    };
    let mut human = String::from("--- resume-storm ---\n");
    human.push_str(&format!(
        "recovery: {}/{} caught up; catch-up us: {}; all caught up after {}\n",
        report.recovery.caught_up,
        report.recovery.subscribers,
        report::fmt_pct(&report.recovery.catch_up_us),
        report
            .recovery
            .all_caught_up_ms
            .map_or("never".to_owned(), |ms| format!("{ms:.1} ms"))
    ));
    report.connections.human(&mut human);
    report.publish.human(&mut human);
    report.delivery.human(&mut human);
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
