//! `idle`: hold N subscribed connections that receive nothing and measure what they cost the
//! server (RSS from `/proc/<pid>/status`) and whether they all stay open (heartbeats and
//! server pings must not kill healthy idle clients).

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use super::{Common, Ctx, parse_duration, spawn_fleet};
use crate::{
    client::Transport,
    report::{self, Connections},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// Connections to hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub channels: usize,
    /// How long to hold them once all are subscribed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Server process id to measure (repeat for several nodes on this machine).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Give up waiting for all subscriptions after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub subscribe_timeout: Duration,
}

#[derive(Debug, Serialize)]
struct Rss {
    pid: u32,
    before_kib: Option<u64>,
    connected_kib: Option<u64>,
    end_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    urls: Vec<String>,
    transport: Transport,
    connections_requested: usize,
    hold_s: f64,
    connections: Connections,
    /// Subscribed and never disconnected until the end.
    stayed_open: u64,
    rss: Vec<Rss>,
    /// Sum over pids of (RSS when all connected - RSS before) / subscribed connections.
    rss_bytes_per_connection: Option<f64>,
    rss_bytes_per_connection_end: Option<f64>,
}

/// VmRSS of a process in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn per_connection(rss: &[Rss], pick: impl Fn(&Rss) -> Option<u64>, n: u64) -> Option<f64> {
    if rss.is_empty() || n == 0 {
        return None;
    }
    let mut delta: i64 = 0;
    for r in rss {
        delta += pick(r)? as i64 - r.before_kib? as i64;
    }
    Some(report::round3(delta as f64 * 1024.0 / n as f64))
}

pub async fn run(args: Args) -> Result<bool, String> {
    if args.connections == 0 || args.channels == 0 {
        return Err("--connections and --channels must be at least 1".into());
    }
    for &pid in &args.pids {
        if vm_rss_kib(pid).is_none() {
            return Err(format!(
                "cannot read VmRSS of pid {pid} (is it running on this machine?)"
            ));
        }
    }
    let ctx = Ctx::new(args.common.clone()).await?;
    let channels = ctx.channel_names(args.channels);
    let per_channel = args.connections.div_ceil(args.channels);
    let mut rss: Vec<Rss> = args
        .pids
        .iter()
        .map(|&pid| Rss {
            pid,
            before_kib: vm_rss_kib(pid),
            connected_kib: None,
            end_kib: None,
        })
        .collect();
    eprintln!(
        "idle: {} {:?} connections over {} node(s), hold {:?}",
        per_channel * args.channels,
        args.transport,
        ctx.targets.len(),
        args.hold
    );
    let running = spawn_fleet(&ctx, args.transport, &channels, per_channel, 1);
    let subscribed = running.wait_settled(args.subscribe_timeout).await;
    // Let the server settle allocations made while accepting before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in &mut rss {
        r.connected_kib = vm_rss_kib(r.pid);
    }
    eprintln!("subscribed: {subscribed}; holding for {:?}", args.hold);
    tokio::time::sleep(args.hold).await;
    for r in &mut rss {
        r.end_kib = vm_rss_kib(r.pid);
    }
    let (_fleet, results) = running.finish().await;
    let connections = Connections::from_results(&results);
    let stayed_open = results
        .iter()
        .filter(|r| r.subscribed && r.open_at_end && r.reconnects == 0)
        .count() as u64;
    let mut server_errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        for (k, v) in &r.errors {
            *server_errors.entry(k.clone()).or_default() += v;
        }
    }
    let n = connections.subscribed;
    let report = Report {
        scenario: "idle",
        ok: connections.failed == 0 && stayed_open == connections.attempted,
        urls: ctx.common.urls.clone(),
        transport: args.transport,
        connections_requested: args.connections,
        hold_s: args.hold.as_secs_f64(),
        rss_bytes_per_connection: per_connection(&rss, |r| r.connected_kib, n),
        rss_bytes_per_connection_end: per_connection(&rss, |r| r.end_kib, n),
        stayed_open,
        rss,
        connections,
    };
    let mut human = String::from("--- idle ---\n");
    report.connections.human(&mut human);
    human.push_str(&format!(
        "stayed open: {}/{}\n",
        report.stayed_open, report.connections.attempted
    ));
    for (k, v) in &server_errors {
        human.push_str(&format!("  server error: {v} x {k}\n"));
    }
    for r in &report.rss {
        human.push_str(&format!(
            "rss pid {}: before {:?} KiB, all connected {:?} KiB, end {:?} KiB\n",
            r.pid, r.before_kib, r.connected_kib, r.end_kib
        ));
    }
    if let Some(b) = report.rss_bytes_per_connection {
        human.push_str(&format!(
            "server RSS per connection: {b:.0} bytes when connected, {} at the end\n",
            report
                .rss_bytes_per_connection_end
                .map_or("?".to_owned(), |e| format!("{e:.0} bytes"))
        ));
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
    fn reads_vm_rss() {
        let status = "Name:\therald\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss_kib(std::process::id()).is_some());
    }

    #[test]
    fn per_connection_delta() {
        let rss = vec![
            Rss {
                pid: 1,
                before_kib: Some(1000),
                connected_kib: Some(1400),
                end_kib: Some(1300),
            },
            Rss {
                pid: 2,
                before_kib: Some(1000),
                connected_kib: Some(1400),
                end_kib: None,
            },
        ];
        assert_eq!(per_connection(&rss, |r| r.connected_kib, 200), Some(4096.0));
        assert_eq!(per_connection(&rss, |r| r.end_kib, 200), None);
    }
}
