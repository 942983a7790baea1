//! Publishing, whatever the transport: one call into the broker with its outcome counted, and a
//! typed result that each transport renders its own way (HTTP as a JSON body, WebSocket as its
//! `published` frame). Validation and permissions stay with the transport (an API key's scope,
//! a token's `publish` claim); what reaches here is allowed.

use herald_broker::{Broker, BrokerError, Published};
use herald_core::{
    ErrorCode,
    protocol::{Publish, Rejection},
};

use crate::{limits::Limit, metrics::Metrics};

/// Publishes through the broker: `Ok` once the message is in history (or was already, for a
/// repeated idempotency key).
pub async fn publish(
    broker: &dyn Broker,
    metrics: &Metrics,
    p: Publish,
) -> Result<Published, Rejection> {
    let timer = metrics.publish_duration.start_timer();
    let result = broker.publish(p).await;
    timer.observe_duration();
    match result {
        Ok(published) => {
            let outcome = if published.duplicate {
                "duplicate"
            } else {
                "ok"
            };
            metrics.published.with_label_values(&[outcome]).inc();
            Ok(published)
        }
        Err(e) => Err(refused(metrics, &e)),
    }
}

/// Counts a publish the request's validation refused.
pub fn rejected(metrics: &Metrics, r: &Rejection) {
    metrics.published.with_label_values(&["rejected"]).inc();
    if r.code == ErrorCode::PayloadTooLarge {
        metrics.limits.hit(Limit::MaxMessageBytes);
    }
}

/// What the client is told about a broker failure, and how it is counted.
fn refused(metrics: &Metrics, e: &BrokerError) -> Rejection {
    match e {
        BrokerError::Unavailable(_) => {
            metrics.published.with_label_values(&["unavailable"]).inc();
            Rejection::new(
                ErrorCode::Unavailable,
                format!("{e}; retry with the same idempotency_key"),
            )
        }
        BrokerError::Full(_) => {
            metrics.published.with_label_values(&["full"]).inc();
            metrics.limits.hit(Limit::MemoryMaxBytes);
            tracing::warn!(error = %e, "publish refused");
            Rejection::new(
                ErrorCode::StorageFull,
                format!("{e}; retry later with the same idempotency_key"),
            )
        }
        BrokerError::Internal(_) => {
            metrics.published.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "publish failed");
            Rejection::new(ErrorCode::Internal, e.to_string())
        }
    }
}
