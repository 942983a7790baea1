//! Prometheus metrics, rendered in the text format at `GET /metrics`.
//!
//! Names follow Prometheus conventions (`herald_` prefix, `_total` counters, base units) and
//! labels are bounded: never a channel name or a client address.

use std::sync::Arc;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::hub::Hub;

pub struct Metrics {
    registry: Registry,
    hub: Arc<Hub>,
    /// Open client connections by transport (`sse`, `ws`).
    pub connections: IntGaugeVec,
    /// Connections closed, by transport and reason.
    pub disconnects: IntCounterVec,
    /// Publishes by outcome (`ok`, `duplicate`, `rejected`, `unavailable`).
    pub published: IntCounterVec,
    subscriptions: IntGauge,
    channels: IntGauge,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    pub fn new(hub: Arc<Hub>) -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Self {
            connections: gauge_vec(
                &registry,
                "herald_connections",
                "Open client connections.",
                &["transport"],
            ),
            disconnects: counter_vec(
                &registry,
                "herald_disconnects_total",
                "Client connections closed, by transport and reason.",
                &["transport", "reason"],
            ),
            published: counter_vec(
                &registry,
                "herald_messages_published_total",
                "Publishes by outcome.",
                &["outcome"],
            ),
            subscriptions: gauge(
                &registry,
                "herald_subscriptions",
                "Local subscriptions (connection x channel).",
            ),
            channels: gauge(
                &registry,
                "herald_channels",
                "Channels with local subscribers (or lingering).",
            ),
            registry,
            hub,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.subscriptions.set(self.hub.subscription_count() as i64);
        self.channels.set(self.hub.channel_count() as i64);
        let mut out = Vec::with_capacity(8192);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
