//! Prometheus metrics, rendered in the text format at `GET /metrics`.
//!
//! Names follow Prometheus conventions (`herald_` prefix, `_total` counters, base units) and
//! labels are bounded: never a channel name or a client address. Hot paths count per batch, not
//! per message: a writer adds its whole batch to `delivered` with one atomic add.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
    core::{MetricVec, MetricVecBuilder},
};

use std::sync::Arc;

use herald_broker::{MemoryStats, RedisStats};

use crate::{
    hub::Hub,
    limits::{ConnectionLimits, Limit},
    transport::{DISCONNECT_REASONS, TRANSPORTS},
};

/// Latency buckets from 100 us to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The hub's counters (a separate struct so the hub does not depend on the whole registry).
#[derive(Clone)]
pub struct HubMetrics {
    /// Messages not queued for a subscriber, by reason (`slow_consumer`: its queue overflowed or
    /// it was already cut off).
    pub dropped: IntCounterVec,
    /// Resumes by outcome, counted when the replay ends: `recovered` (the client was given
    /// everything it missed, then went live), `partial` (same epoch, some messages no longer
    /// retained), `reset` (other epoch), `abandoned` (the client left or was cut off before the
    /// replay finished).
    pub recoveries: IntCounterVec,
    /// History reads made for resumes and the history endpoint.
    pub history_reads: IntCounter,
    /// Time for the broker to answer a history read (a Redis script with the Redis broker).
    pub history_duration: Histogram,
    /// `herald_messages_delivered_total` by transport, for deliveries the hub wrote itself.
    pub delivered: IntCounterVec,
    /// `herald_fanout_latency_seconds`, observed once per message the hub wrote directly.
    pub fanout_latency: Histogram,
}

impl HubMetrics {
    /// Counts `n` messages written to sockets of `transport`.
    pub fn wrote(&self, transport: &str, n: u64) {
        self.delivered.with_label_values(&[transport]).inc_by(n);
    }

    /// Observes the age of a message published at `published_at_us`, now that it is written.
    pub fn fanout_age(&self, published_at_us: u64) {
        let age_us = herald_broker::now_us().saturating_sub(published_at_us);
        self.fanout_latency.observe(age_us as f64 / 1e6);
    }
}

impl Default for HubMetrics {
    /// Unregistered counters, for hubs built outside a server (tests).
    fn default() -> Self {
        Self {
            dropped: IntCounterVec::new(Opts::new("dropped", "-"), &["reason"]).expect("metric"),
            recoveries: IntCounterVec::new(Opts::new("recoveries", "-"), &["outcome"])
                .expect("metric"),
            history_reads: IntCounter::new("history_reads", "-").expect("metric"),
            history_duration: Histogram::with_opts(HistogramOpts::new("history_duration", "-"))
                .expect("metric"),
            delivered: IntCounterVec::new(Opts::new("delivered", "-"), &["transport"])
                .expect("metric"),
            fanout_latency: Histogram::with_opts(HistogramOpts::new("fanout_latency", "-"))
                .expect("metric"),
        }
    }
}

/// `herald_limit_rejections_total` by limit, one counter handle per label so a hot path never
/// looks a label up.
#[derive(Clone)]
pub struct LimitCounters(Arc<[IntCounter]>);

impl LimitCounters {
    fn new(vec: &IntCounterVec) -> Self {
        // Every label exists from the start, at 0, so dashboards and alerts see the series.
        Self(
            Limit::ALL
                .iter()
                .map(|l| vec.with_label_values(&[l.label()]))
                .collect(),
        )
    }

    pub fn get(&self, limit: Limit) -> &IntCounter {
        &self.0[limit as usize]
    }

    pub fn hit(&self, limit: Limit) {
        self.get(limit).inc();
    }
}

impl Default for LimitCounters {
    /// Unregistered counters, for parts built outside a server (tests).
    fn default() -> Self {
        Self::new(&IntCounterVec::new(Opts::new("limits", "-"), &["limit"]).expect("metric"))
    }
}

/// The broker's own counters, read at scrape.
pub enum BrokerStats {
    Memory(Arc<MemoryStats>),
    Redis(Arc<RedisStats>),
}

pub struct Metrics {
    registry: Registry,
    /// Requests, connections and messages refused or closed by a limit, by limit (its option
    /// name).
    pub limits: LimitCounters,
    /// Publish requests refused for an API key, by key name and reason (`forbidden`,
    /// `rate_limited`).
    pub api_key_rejections: IntCounterVec,
    /// `accept` failures (e.g. out of file descriptors); the accept loop backs off.
    pub accept_errors: IntCounter,
    client_sockets: IntGauge,
    max_connections: IntGauge,
    /// Open client connections by transport (`sse`, `ws`).
    pub connections: IntGaugeVec,
    /// Client connections opened, by transport.
    pub accepted: IntCounterVec,
    /// Connections closed, by transport and reason.
    pub disconnects: IntCounterVec,
    /// Publishes by outcome (`ok`, `duplicate`, `rejected`, `unavailable`, `error`).
    pub published: IntCounterVec,
    /// Time for the broker to accept a publish (into history).
    pub publish_duration: Histogram,
    /// Messages written to client sockets, by transport.
    pub delivered: IntCounterVec,
    /// From publish accepted to written to a client socket (per written batch, its oldest
    /// message).
    pub fanout_latency: Histogram,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// HTTP connections served, by protocol (`http1`, `h2`) and `tls` (`true`, `false`).
    pub http_connections: IntCounterVec,
    /// Open HTTP/2 streams (requests and SSE streams) on all connections.
    pub h2_streams: IntGauge,
    /// TLS handshakes that failed, by reason (`error`, `timeout`, `plain_http`: a plain-text
    /// request on the TLS port, answered with a JSON 400).
    pub tls_handshake_failures: IntCounterVec,
    /// Certificate reloads by outcome (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    pub hub: HubMetrics,
    subscriptions: IntGauge,
    channels: IntGauge,
    queued: IntGauge,
    queued_bytes: IntGauge,
    /// Redis backbone events (`reconnect`, `connect_failure`, `probe_failure`, `gap_fill`,
    /// `gap_fill_message`, `command_error`, `decode_error`), copied from the broker's counters at
    /// scrape. Zero with the embedded broker.
    backbone: IntCounterVec,
    /// The embedded broker's bytes against `memory_max_bytes` and its channels.
    broker_bytes: IntGauge,
    broker_channels: IntGauge,
    /// Bytes of history responses produced and not yet written to their sockets.
    pub history_response_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Room work asked of the broker, by operation (`enter`, `exit`, `list`, `stats`) and
    /// outcome (`ok`, `error`).
    pub presence: IntCounterVec,
    broker: BrokerStats,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// `vec` with each of `labels` created at 0, so dashboards and alerts see every series (a node
/// that has not yet had a slow consumer shows 0, not "No data").
fn labelled<T: MetricVecBuilder>(vec: MetricVec<T>, labels: &[&[&str]]) -> MetricVec<T> {
    for l in labels {
        vec.with_label_values(l);
    }
    vec
}

/// One label set per transport.
const BY_TRANSPORT: [&[&str]; 3] = [&[TRANSPORTS[0]], &[TRANSPORTS[1]], &[TRANSPORTS[2]]];

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

impl Metrics {
    /// The registry, reading `broker`'s counters at scrape.
    pub fn new(broker: BrokerStats) -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        // Every label set the Grafana dashboard (deploy/grafana) queries exists from the start.
        let connections = labelled(
            register(
                &r,
                IntGaugeVec::new(
                    Opts::new("herald_connections", "Open client connections."),
                    &["transport"],
                )
                .expect("valid metric"),
            ),
            &BY_TRANSPORT,
        );
        let limit_rejections = counter_vec(
            &r,
            "herald_limit_rejections_total",
            "Requests, connections and messages refused or closed by a limit, by limit.",
            &["limit"],
        );
        let delivered = labelled(
            counter_vec(
                &r,
                "herald_messages_delivered_total",
                "Messages written to client sockets.",
                &["transport"],
            ),
            &BY_TRANSPORT,
        );
        let disconnects: Vec<[&str; 2]> = DISCONNECT_REASONS
            .iter()
            .flat_map(|(t, reasons)| reasons.iter().map(move |r| [*t, *r]))
            .collect();
        let disconnects: Vec<&[&str]> = disconnects.iter().map(|l| &l[..]).collect();
        let fanout_latency = histogram(
            &r,
            "herald_fanout_latency_seconds",
            "From publish accepted to written to a client socket (per message the hub writes \
             directly; per batch, its oldest message, for a connection's writer).",
        );
        Self {
            limits: LimitCounters::new(&limit_rejections),
            api_key_rejections: counter_vec(
                &r,
                "herald_api_key_rejections_total",
                "Publish requests refused for an API key, by key name and reason.",
                &["key", "reason"],
            ),
            accept_errors: register(
                &r,
                IntCounter::new(
                    "herald_accept_errors_total",
                    "Failed accepts (e.g. out of file descriptors); the accept loop backs off.",
                )
                .expect("valid metric"),
            ),
            client_sockets: gauge(
                &r,
                "herald_client_sockets",
                "Open client TCP connections (streams, requests, idle), counted against max_connections.",
            ),
            max_connections: gauge(
                &r,
                "herald_max_connections",
                "The max_connections in force (configured or derived from the open-file limit).",
            ),
            connections,
            accepted: labelled(
                counter_vec(
                    &r,
                    "herald_connections_accepted_total",
                    "Client connections opened.",
                    &["transport"],
                ),
                &BY_TRANSPORT,
            ),
            disconnects: labelled(
                counter_vec(
                    &r,
                    "herald_disconnects_total",
                    "Client connections closed, by transport and reason.",
                    &["transport", "reason"],
                ),
                &disconnects,
            ),
            published: labelled(
                counter_vec(
                    &r,
                    "herald_messages_published_total",
                    "Publishes by outcome.",
                    &["outcome"],
                ),
                &[
                    &["ok"],
                    &["duplicate"],
                    &["rejected"],
                    &["unavailable"],
                    &["full"],
                    &["error"],
                ],
            ),
            publish_duration: histogram(
                &r,
                "herald_publish_duration_seconds",
                "Time for the broker to accept a publish into history.",
            ),
            delivered: delivered.clone(),
            fanout_latency: fanout_latency.clone(),
            // The readiness failures the dashboard plots (`readyz` answers 200 or 503).
            http_requests: labelled(
                counter_vec(
                    &r,
                    "herald_http_requests_total",
                    "HTTP requests by route and status.",
                    &["route", "status"],
                ),
                &[&["readyz", "200"], &["readyz", "503"]],
            ),
            http_connections: labelled(
                counter_vec(
                    &r,
                    "herald_http_connections_total",
                    "HTTP connections served, by protocol (http1, h2) and whether over TLS.",
                    &["protocol", "tls"],
                ),
                &[
                    &["http1", "false"],
                    &["h2", "false"],
                    &["http1", "true"],
                    &["h2", "true"],
                ],
            ),
            h2_streams: gauge(
                &r,
                "herald_h2_streams",
                "Open HTTP/2 streams (requests and SSE streams).",
            ),
            tls_handshake_failures: labelled(
                counter_vec(
                    &r,
                    "herald_tls_handshake_failures_total",
                    "TLS handshakes that failed, by reason (error, timeout, plain_http).",
                    &["reason"],
                ),
                &[&["error"], &["timeout"], &["plain_http"]],
            ),
            tls_reloads: labelled(
                counter_vec(
                    &r,
                    "herald_tls_certificate_reloads_total",
                    "Certificate reloads (on file change or SIGHUP) by outcome (ok, error).",
                    &["outcome"],
                ),
                &[&["ok"], &["error"]],
            ),
            hub: HubMetrics {
                dropped: labelled(
                    counter_vec(
                        &r,
                        "herald_messages_dropped_total",
                        "Messages not queued for a subscriber, by reason.",
                        &["reason"],
                    ),
                    &[&["slow_consumer"]],
                ),
                recoveries: labelled(
                    counter_vec(
                        &r,
                        "herald_recoveries_total",
                        "Resumes by outcome, when their replay ends (recovered, partial, reset, abandoned).",
                        &["outcome"],
                    ),
                    &[&["recovered"], &["partial"], &["reset"], &["abandoned"]],
                ),
                history_duration: histogram(
                    &r,
                    "herald_history_read_duration_seconds",
                    "Time for the broker to answer a history read.",
                ),
                history_reads: register(
                    &r,
                    IntCounter::new("herald_history_reads_total", "History reads.")
                        .expect("valid metric"),
                ),
                delivered,
                fanout_latency,
            },
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Local subscriptions (connection x channel).",
            ),
            channels: gauge(
                &r,
                "herald_channels",
                "Channels with local subscribers (or lingering).",
            ),
            queued_bytes: gauge(
                &r,
                "herald_queued_bytes",
                "Bytes held for client connections: queued, being written, buffered or paged by resumes in progress (counted against queue_max_bytes), and history responses not yet written.",
            ),
            queued: gauge(
                &r,
                "herald_queued_messages",
                "Messages queued in connection outboxes, not yet written.",
            ),
            backbone: counter_vec(
                &r,
                "herald_backbone_events_total",
                "Redis backbone events: reconnects, probe failures, gap fills, errors.",
                &["event"],
            ),
            broker_bytes: gauge(
                &r,
                "herald_broker_memory_bytes",
                "Bytes the embedded broker holds (history, idempotency keys, channels), counted against memory_max_bytes; 0 with Redis.",
            ),
            broker_channels: gauge(
                &r,
                "herald_broker_channels",
                "Channels the embedded broker holds (published within the TTL, or subscribed); 0 with Redis.",
            ),
            history_response_bytes: Arc::default(),
            presence: counter_vec(
                &r,
                "herald_presence_total",
                "Room work asked of the broker, by operation (enter, exit, list, stats) and outcome (ok, error).",
                &["op", "outcome"],
            ),
            broker,
            registry: r,
        }
    }

    /// The text exposition of every metric, with the hub's gauges refreshed.
    pub fn render(&self, hub: &Hub, limits: &ConnectionLimits) -> Vec<u8> {
        self.client_sockets.set(limits.open() as i64);
        self.max_connections.set(limits.max_connections() as i64);
        let stats = hub.stats();
        self.subscriptions.set(stats.subscriptions as i64);
        self.channels.set(stats.channels as i64);
        self.queued.set(stats.queued as i64);
        let responses = self
            .history_response_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        self.queued_bytes
            .set((stats.queued_bytes + responses) as i64);
        let snap = match &self.broker {
            BrokerStats::Redis(r) => r.snapshot(),
            BrokerStats::Memory(m) => {
                let get = |v: &std::sync::atomic::AtomicUsize| {
                    v.load(std::sync::atomic::Ordering::Relaxed) as i64
                };
                self.broker_bytes.set(get(&m.bytes));
                self.broker_channels.set(get(&m.channels));
                Default::default()
            }
        };
        for (event, value) in [
            ("reconnect", snap.reconnects),
            ("connect_failure", snap.connect_failures),
            ("probe_failure", snap.probe_failures),
            ("gap_fill", snap.gap_fills),
            ("gap_fill_message", snap.gap_fill_messages),
            ("command_error", snap.command_errors),
            ("decode_error", snap.decode_errors),
            ("primary_switch", snap.primary_switches),
            ("replica_ack_timeout", snap.replica_ack_timeouts),
            ("history_reset", snap.history_resets),
            ("relay_overflow", snap.relay_overflows),
        ] {
            let c = self.backbone.with_label_values(&[event]);
            c.inc_by(value.saturating_sub(c.get()));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Records a batch written to a client: its size and the age of its oldest message.
    pub fn wrote(&self, transport: &str, messages: u64, oldest_published_at_us: Option<u64>) {
        if messages > 0 {
            self.delivered
                .with_label_values(&[transport])
                .inc_by(messages);
        }
        if let Some(at) = oldest_published_at_us {
            let age_us = herald_broker::now_us().saturating_sub(at);
            self.fanout_latency.observe(age_us as f64 / 1e6);
        }
    }
}
