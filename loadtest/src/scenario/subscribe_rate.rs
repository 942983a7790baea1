//! `subscribe-rate`: how many new subscriptions per second a node accepts, and what each costs
//! its CPU. K workers each loop: connect, subscribe (with the `--token` if given, so the node
//! verifies a JWT per connection), wait for `subscribed`, hang up. Server CPU per subscribe is
//! the utime+stime delta of each `--pid` over the run (from `/proc/<pid>/stat`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Common, Ctx};
use crate::{
    client::{Conn, End, Resume, Transport},
    report,
    stats::{Percentiles, new_histogram},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Subscribes to make in total.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub subscribes: usize,
    /// Connections opening at once.
    #[arg(long, short = 'k', default_value_t = 32)]
    pub concurrency: usize,
    /// Channels the subscribes are spread over.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub channels: usize,
    /// Server process id to measure CPU of (repeat for several nodes on this machine).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    urls: Vec<String>,
    transport: Transport,
    token: bool,
    subscribes: usize,
    concurrency: usize,
    succeeded: u64,
    failed: BTreeMap<String, u64>,
    duration_s: f64,
    subscribes_per_s: f64,
    /// Connect to `subscribed`, microseconds.
    latency_us: Percentiles,
    /// Server CPU (all `--pid`s, user + system) over the run, divided by successful subscribes.
    server_cpu_us_per_subscribe: Option<f64>,
    server_cpu_s: Option<f64>,
}

/// utime + stime of a process in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|t| t as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Fields 14 and 15 (utime, stime), counted after the `)` that ends the command name (which may
/// itself contain spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// One subscribe: connect, subscribe, wait for the confirmation.
async fn subscribe_once(ctx: &Ctx, args: &Args, i: usize) -> Result<(), End> {
    let target = &ctx.targets[i % ctx.targets.len()];
    let channel = format!("{}-{}", ctx.prefix, i % args.channels);
    let mut conn = Conn::open(
        args.transport,
        &ctx.dialer,
        (target, i % ctx.targets.len()),
        &channel,
        &Resume::default(),
        ctx.common.token.as_deref(),
        None,
    )
    .await?;
    conn.await_subscribed().await
}

pub async fn run(args: Args) -> Result<bool, String> {
    if args.subscribes == 0 || args.concurrency == 0 || args.channels == 0 {
        return Err("--subscribes, --concurrency and --channels must be at least 1".into());
    }
    if args.transport == crate::client::Transport::SseH2 {
        return Err("subscribe-rate opens a connection per subscribe: use ws or sse".into());
    }
    for &pid in &args.pids {
        if cpu_seconds(pid).is_none() {
            return Err(format!(
                "cannot read /proc/{pid}/stat (is it running on this machine?)"
            ));
        }
    }
    let ctx = Arc::new(Ctx::new(args.common.clone()).await?);
    let args = Arc::new(args);
    eprintln!(
        "subscribe-rate: {} {:?} subscribes, {} at once, token: {}",
        args.subscribes,
        args.transport,
        args.concurrency,
        ctx.common.token.is_some()
    );
    let cpu_before: Option<f64> = args.pids.iter().map(|&p| cpu_seconds(p)).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (ctx, args, next) = (ctx.clone(), args.clone(), next.clone());
            tokio::spawn(async move {
                let mut latency = new_histogram();
                let mut failed: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.subscribes {
                        return (latency, failed);
                    }
                    let t = Instant::now();
                    match subscribe_once(&ctx, &args, i).await {
                        Ok(()) => latency.saturating_record(t.elapsed().as_micros().max(1) as u64),
                        Err(e) => *failed.entry(e.kind()).or_default() += 1,
                    }
                }
            })
        })
        .collect();
    let mut latency = new_histogram();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let (h, f) = w.await.map_err(|e| format!("worker: {e}"))?;
        let _ = latency.add(&h);
        for (k, v) in f {
            *failed.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().max(Duration::from_micros(1));
    let cpu_after: Option<f64> = args.pids.iter().map(|&p| cpu_seconds(p)).sum();
    let succeeded = latency.len();
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if !args.pids.is_empty() => Some(a - b),
        _ => None,
    };
    let report = Report {
        scenario: "subscribe-rate",
        ok: failed.is_empty(),
        urls: ctx.common.urls.clone(),
        transport: args.transport,
        token: ctx.common.token.is_some(),
        subscribes: args.subscribes,
        concurrency: args.concurrency,
        succeeded,
        duration_s: report::round3(elapsed.as_secs_f64()),
        subscribes_per_s: report::round3(succeeded as f64 / elapsed.as_secs_f64()),
        latency_us: Percentiles::of(&latency),
        server_cpu_us_per_subscribe: cpu
            .filter(|_| succeeded > 0)
            .map(|c| report::round3(c * 1e6 / succeeded as f64)),
        server_cpu_s: cpu.map(report::round3),
        failed,
    };
    let mut human = String::from("--- subscribe-rate ---\n");
    human.push_str(&format!(
        "subscribed: {}/{} in {:.2}s = {:.0}/s\nlatency (us): {}\n",
        report.succeeded,
        report.subscribes,
        report.duration_s,
        report.subscribes_per_s,
        report::fmt_pct(&report.latency_us)
    ));
    for (k, v) in &report.failed {
        human.push_str(&format!("  failed: {v} x {k}\n"));
    }
    if let Some(us) = report.server_cpu_us_per_subscribe {
        human.push_str(&format!("server CPU: {us:.1} us per subscribe\n"));
    }
    human.push_str(&format!(
        "result: {}\n",
        if report.ok { "OK" } else { "FAIL" }
    ));
    report::emit(&human, &report);
    Ok(report.ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
