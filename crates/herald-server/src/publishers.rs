//! Who may publish over HTTP: the configured API keys, each with a name, the channels it may
//! publish to and an optional rate limit.
//!
//! A presented key is compared with every configured key in constant time, so neither the time
//! taken nor anything else reveals a key or which key matched. Keys are identified to operators
//! by name only: a key never reaches a log line, an error body or a metric. Cookies never
//! authorise a publish (a page on another site can make a browser send them: CSRF), only the
//! `authorization` header does.

use std::time::Duration;

use herald_core::ChannelPattern;
use parking_lot::Mutex;
use prometheus::IntCounter;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::{
    config::{ApiKeys, Secret},
    limits::{
        Limit,
        bucket::{Rate, TokenBucket},
        clock_ms,
    },
    metrics::{LimitCounters, Metrics},
};

/// Why a publish request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `authorization: Bearer` header.
    Missing,
    /// A key that matches no configured key.
    Invalid,
}

/// One configured key, with its rate-limit state and metrics.
pub struct Publisher {
    name: String,
    secret: Secret,
    channels: Vec<ChannelPattern>,
    rate: Option<(Rate, Mutex<TokenBucket>)>,
    forbidden: IntCounter,
    rate_limited: IntCounter,
    limits: LimitCounters,
}

impl Publisher {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this key may publish to `channel`; a refusal is counted.
    pub fn may_publish(&self, channel: &str) -> bool {
        let allowed = ChannelPattern::any_matches(&self.channels, channel);
        if !allowed {
            self.forbidden.inc();
        }
        allowed
    }

    /// Takes one request from the key's rate; `Err` says how long until the next is allowed.
    pub fn take(&self) -> Result<(), Duration> {
        let Some((rate, bucket)) = &self.rate else {
            return Ok(());
        };
        let taken = bucket.lock().try_take(rate, clock_ms());
        if taken.is_err() {
            self.rate_limited.inc();
            self.limits.hit(Limit::ApiKeyRate);
        }
        taken
    }
}

/// Every configured key. With none, publishing is open.
pub struct Publishers {
    keys: Vec<Publisher>,
}

impl Publishers {
    pub fn new(keys: &ApiKeys, metrics: &Metrics) -> Self {
        let now = clock_ms();
        let keys = keys
            .iter()
            .map(|k| {
                let counter = |reason| {
                    metrics
                        .api_key_rejections
                        .with_label_values(&[k.name.as_str(), reason])
                };
                let rate = k.rate.map(|r| {
                    let rate = Rate::new(r.per_second, r.burst as usize);
                    (rate, Mutex::new(TokenBucket::full(&rate, now)))
                });
                Publisher {
                    name: k.name.clone(),
                    secret: k.secret.clone(),
                    channels: k.channels.clone(),
                    rate,
                    forbidden: counter("forbidden"),
                    rate_limited: counter("rate_limited"),
                    limits: metrics.limits.clone(),
                }
            })
            .collect();
        Self { keys }
    }

    /// Publishing needs no key.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The publisher whose key was presented (`None` when publishing is open).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Option<&Publisher>, Denied> {
        if self.is_open() {
            return Ok(None);
        }
        let presented = presented.ok_or(Denied::Missing)?;
        // Every key is compared, and the match is selected without branching on secrets.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = key.secret.as_bytes().ct_eq(presented.as_bytes());
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            Ok(self.keys.get(index as usize))
        } else {
            Err(Denied::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKey, KeyRate};

    fn key(name: &str, secret: &str, channels: &[&str], rate: Option<KeyRate>) -> ApiKey {
        ApiKey {
            name: name.to_owned(),
            secret: Secret(secret.to_owned()),
            channels: channels
                .iter()
                .map(|c| ChannelPattern::parse(c).expect("pattern"))
                .collect(),
            rate,
        }
    }

    #[test]
    fn keys_are_identified_scoped_and_rate_limited_separately() {
        let metrics = Metrics::new(crate::metrics::BrokerStats::Memory(Default::default()));
        let keys = ApiKeys(vec![
            key(
                "billing",
                "k-billing",
                &["orders.*"],
                Some(KeyRate {
                    per_second: 0.001,
                    burst: 2,
                }),
            ),
            key("ops", "k-ops", &["*"], None),
        ]);
        let p = Publishers::new(&keys, &metrics);
        assert_eq!(p.authenticate(None).err(), Some(Denied::Missing));
        assert_eq!(p.authenticate(Some("k-bill")).err(), Some(Denied::Invalid));
        let billing = p.authenticate(Some("k-billing")).expect("ok").expect("key");
        assert_eq!(billing.name(), "billing");
        assert!(billing.may_publish("orders.1"));
        assert!(!billing.may_publish("users.1"));
        assert!(billing.take().is_ok() && billing.take().is_ok());
        assert!(billing.take().is_err(), "over its burst");
        let ops = p.authenticate(Some("k-ops")).expect("ok").expect("key");
        assert_eq!(ops.name(), "ops");
        assert!(ops.take().is_ok(), "another key is not limited");
        assert!(ops.may_publish("users.1"));
        assert_eq!(
            metrics
                .api_key_rejections
                .with_label_values(&["billing", "forbidden"])
                .get(),
            1
        );
        assert_eq!(metrics.limits.get(Limit::ApiKeyRate).get(), 1);
        let open = Publishers::new(&ApiKeys::default(), &metrics);
        assert!(matches!(open.authenticate(None), Ok(None)));
    }
}
