//! The header read timeout and the keep-alive idle timeout of a hyper connection.
//!
//! hyper only enforces `header_read_timeout` when its connection builder has a timer, and it
//! starts that timer both when it begins reading the first request head and, right after each
//! response, for the next one, so the same timer is also the keep-alive idle timeout. Each
//! connection gets its own [`HeadTimer`]: the first sleep ends at the connection's deadline,
//! fixed when it was accepted (so time spent before hyper took over, in the SSE fast path's peek,
//! counts too), and later sleeps last `keep_alive_timeout`. A sleep that fires counts itself in
//! `herald_limit_rejections_total`.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntCounter;
use tokio::time::Instant;

pub struct HeadTimer {
    head_deadline: Instant,
    keep_alive: Duration,
    first: AtomicBool,
    head_timeouts: IntCounter,
    idle_timeouts: IntCounter,
}

impl HeadTimer {
    pub fn new(
        head_deadline: Instant,
        keep_alive: Duration,
        head_timeouts: IntCounter,
        idle_timeouts: IntCounter,
    ) -> Self {
        Self {
            head_deadline,
            keep_alive,
            first: AtomicBool::new(true),
            head_timeouts,
            idle_timeouts,
        }
    }
}

/// A sleep that counts in `fired` when it completes (when hyper gives up on the connection).
struct CountingSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    fired: Option<IntCounter>,
}

impl Future for CountingSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if let Some(c) = this.fired.take() {
                    c.inc();
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for CountingSleep {}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CountingSleep {
            sleep: Box::pin(tokio::time::sleep(duration)),
            fired: None,
        })
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let (deadline, counter) = if self.first.swap(false, Ordering::Relaxed) {
            (self.head_deadline, &self.head_timeouts)
        } else {
            (Instant::now() + self.keep_alive, &self.idle_timeouts)
        };
        Box::pin(CountingSleep {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            fired: Some(counter.clone()),
        })
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}
