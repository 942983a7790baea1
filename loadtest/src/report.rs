//! Report sections shared by the scenarios: a human summary on stderr and exactly one JSON
//! line on stdout, so `herald-loadtest ... | jq` and scripts that append runs to a file work.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    publisher::Outcome,
    stats::{LossCount, Percentiles, RangeSet, count_loss},
    subscriber::SubResult,
};

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    pub subscribed: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// TCP connect + upgrade + subscription confirmed, microseconds.
    pub connect_us: Percentiles,
    pub reconnects: u64,
    pub disconnects: BTreeMap<String, u64>,
    /// Resumes answered `recovered: false`.
    pub unrecovered: u64,
    pub open_at_end: u64,
}

impl Connections {
    pub fn from_results(results: &[SubResult]) -> Self {
        let mut c = Connections {
            attempted: results.len() as u64,
            ..Default::default()
        };
        let mut h = crate::stats::new_histogram();
        for r in results {
            c.established += u64::from(r.established);
            c.subscribed += u64::from(r.subscribed);
            if let Some(f) = &r.fail {
                c.failed += 1;
                *c.failures.entry(f.clone()).or_default() += 1;
            }
            if let Some(us) = r.connect_us {
                h.saturating_record(us.max(1));
            }
            c.reconnects += u64::from(r.reconnects);
            for (k, v) in &r.disconnects {
                *c.disconnects.entry(k.clone()).or_default() += v;
            }
            c.unrecovered += u64::from(r.unrecovered);
            c.open_at_end += u64::from(r.open_at_end);
        }
        c.connect_us = Percentiles::of(&h);
        c
    }

    pub fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "connections: {} attempted, {} established, {} subscribed, {} failed, {} open at end",
            self.attempted, self.established, self.subscribed, self.failed, self.open_at_end
        );
        for (k, v) in &self.failures {
            let _ = writeln!(out, "  failed: {v} x {k}");
        }
        let _ = writeln!(out, "  connect+subscribe us: {}", fmt_pct(&self.connect_us));
        if self.reconnects > 0 || !self.disconnects.is_empty() || self.unrecovered > 0 {
            let _ = writeln!(
                out,
                "  reconnects: {} (unrecovered resumes: {})",
                self.reconnects, self.unrecovered
            );
            for (k, v) in &self.disconnects {
                let _ = writeln!(out, "  disconnect: {v} x {k}");
            }
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Publishing {
    pub attempted: u64,
    pub acked: u64,
    pub acked_messages: u64,
    pub failed: u64,
    pub retried: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub target_rate: Option<f64>,
    pub acked_per_s: f64,
    /// How late the schedule ran at worst: large values mean the offered rate was not met.
    pub max_behind_ms: f64,
    pub latency_us: Percentiles,
    pub connections: u64,
}

impl Publishing {
    pub fn from_outcome(o: &Outcome, target_rate: Option<f64>) -> Self {
        let secs = o.elapsed.as_secs_f64().max(1e-9);
        Publishing {
            attempted: o.attempted,
            acked: o.acked,
            acked_messages: o.acked_messages,
            failed: o.failed,
            retried: o.retried,
            errors: o.errors.clone(),
            elapsed_s: round3(secs),
            target_rate,
            acked_per_s: round3(o.acked_messages as f64 / secs),
            max_behind_ms: round3(o.max_behind_us as f64 / 1000.0),
            latency_us: Percentiles::of(&o.latency),
            connections: o.connects,
        }
    }

    pub fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "publish: {} attempted, {} acked ({} messages), {} failed in {:.2}s = {:.0} acked msg/s{}",
            self.attempted,
            self.acked,
            self.acked_messages,
            self.failed,
            self.elapsed_s,
            self.acked_per_s,
            self.target_rate
                .map(|r| format!(" (target {r}/s, worst lag {:.1} ms)", self.max_behind_ms))
                .unwrap_or_default()
        );
        for (k, v) in &self.errors {
            let _ = writeln!(out, "  error: {v} x {k}");
        }
        let _ = writeln!(out, "  publish latency us: {}", fmt_pct(&self.latency_us));
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Delivered offsets that were not acknowledged to us (failed acks, other publishers).
    pub unexpected: u64,
    pub foreign: u64,
    pub unattributed: u64,
    pub server_errors: BTreeMap<String, u64>,
    /// End-to-end: publisher's send timestamp to subscriber's receive, microseconds.
    pub latency_us: Percentiles,
    /// Deliveries per second since publishing started.
    pub per_second: Vec<u64>,
    pub peak_per_s: u64,
    /// Every expected message arrived before the drain deadline.
    pub complete: bool,
    pub drain_s: f64,
}

impl Delivery {
    /// Loss is counted for subscribers whose subscription went live; a failed subscriber is
    /// reported under connections, not as loss.
    pub fn from_results(results: &[SubResult], acked: &[RangeSet]) -> Self {
        let mut d = Delivery::default();
        for r in results.iter().filter(|r| r.subscribed) {
            let Some(acked) = acked.get(r.channel) else {
                continue;
            };
            let LossCount {
                expected,
                delivered,
                lost,
                unexpected,
            } = count_loss(&r.tracker.received, acked, r.base);
            d.expected += expected;
            d.delivered += delivered;
            d.lost += lost;
            d.unexpected += unexpected;
            d.duplicated += r.tracker.duplicates;
            d.out_of_order += r.tracker.out_of_order;
            d.foreign += r.foreign;
            d.unattributed += r.unattributed;
            for (k, v) in &r.errors {
                *d.server_errors.entry(k.clone()).or_default() += v;
            }
        }
        d
    }

    pub fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "delivery: expected {}, delivered {}, lost {}, duplicated {}, out of order {}, unexpected {}{}",
            self.expected,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.unexpected,
            if self.complete {
                format!(" (complete after {:.2}s drain)", self.drain_s)
            } else {
                format!(" (INCOMPLETE after {:.2}s drain)", self.drain_s)
            }
        );
        if self.foreign + self.unattributed > 0 {
            let _ = writeln!(
                out,
                "  foreign payloads: {}, unattributed events: {}",
                self.foreign, self.unattributed
            );
        }
        for (k, v) in &self.server_errors {
            let _ = writeln!(out, "  server error: {v} x {k}");
        }
        let _ = writeln!(
            out,
            "  end-to-end latency us: {}",
            fmt_pct(&self.latency_us)
        );
        let _ = writeln!(
            out,
            "  deliveries/s (peak {}): {:?}",
            self.peak_per_s, self.per_second
        );
    }
}

pub fn fmt_pct(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".to_owned();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} (n={}, mean {:.1})",
        p.p50, p.p90, p.p99, p.p999, p.max, p.count, p.mean
    )
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints the human summary to stderr and the JSON line to stdout.
pub fn emit(human: &str, json: &impl Serialize) {
    eprint!("{human}");
    match serde_json::to_string(json) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode the JSON report: {e}"),
    }
}
