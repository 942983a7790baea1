//! Token buckets: the rate limit behind API keys, WebSocket messages and new connections per
//! address. A bucket is 16 bytes (it lives in every WebSocket's reader task) and takes the time
//! as milliseconds from a clock its owner keeps, so it is pure and tested without waiting.

use std::time::Duration;

/// A sustained rate and how far a burst may exceed it. `per_second <= 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_second: f64, burst: usize) -> Self {
        Self {
            per_second,
            burst: burst.max(1) as f64,
        }
    }

    /// `burst` 0 means twice the rate (at least 1).
    pub fn with_default_burst(per_second: f64, burst: usize) -> Self {
        let burst = if burst == 0 {
            (per_second * 2.0).ceil().max(1.0) as usize
        } else {
            burst
        };
        Self::new(per_second, burst)
    }

    pub fn is_limited(&self) -> bool {
        self.per_second > 0.0
    }
}

/// What [`TokenBucket::take_or_owe`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Allowed,
    /// Over the rate: refuse this one.
    Refused,
    /// Over the rate for a whole burst's worth of refused messages: the sender keeps flooding.
    Flooding,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// May go negative (down to `-burst`) in [`Self::take_or_owe`]: refused messages are debt.
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn full(rate: &Rate, now_ms: u64) -> Self {
        Self {
            tokens: rate.burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: &Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last_ms = now_ms.max(self.last_ms);
    }

    /// Takes a token, or says how long until one is available (a refusal costs nothing).
    pub fn try_take(&mut self, rate: &Rate, now_ms: u64) -> Result<(), Duration> {
        if !rate.is_limited() {
            return Ok(());
        }
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second;
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Takes a token even when there is none: a refused message still counts, so a sender has to
    /// slow below the rate to be served again, and one that keeps sending faster runs a whole
    /// burst into debt and is [`Taken::Flooding`].
    pub fn take_or_owe(&mut self, rate: &Rate, now_ms: u64) -> Taken {
        if !rate.is_limited() {
            return Taken::Allowed;
        }
        self.refill(rate, now_ms);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Taken::Allowed
        } else if self.tokens >= -rate.burst {
            Taken::Refused
        } else {
            Taken::Flooding
        }
    }

    /// Whether the bucket has refilled completely (so forgetting it changes nothing).
    pub fn is_full(&self, rate: &Rate, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ms);
        b.tokens >= rate.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rate = Rate::new(10.0, 3);
        let mut b = TokenBucket::full(&rate, 0);
        for _ in 0..3 {
            assert_eq!(b.try_take(&rate, 0), Ok(()));
        }
        let wait = b.try_take(&rate, 0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.try_take(&rate, 50).is_err(), "half a token");
        assert_eq!(b.try_take(&rate, 100), Ok(()));
        assert!(!b.is_full(&rate, 100));
        assert!(b.is_full(&rate, 400));
        // Refills never exceed the burst.
        for _ in 0..3 {
            assert_eq!(b.try_take(&rate, 10_000), Ok(()));
        }
        assert!(b.try_take(&rate, 10_000).is_err());
    }

    #[test]
    fn debt_refuses_then_declares_a_flood() {
        let rate = Rate::new(1.0, 2);
        let mut b = TokenBucket::full(&rate, 0);
        let taken: Vec<Taken> = (0..5).map(|_| b.take_or_owe(&rate, 0)).collect();
        assert_eq!(
            taken,
            [
                Taken::Allowed,
                Taken::Allowed,
                Taken::Refused,
                Taken::Refused,
                Taken::Flooding
            ]
        );
        // Slowing down pays the debt back: after 4 s (4 tokens) the sender is served again.
        let mut b = TokenBucket::full(&rate, 0);
        for _ in 0..4 {
            b.take_or_owe(&rate, 0);
        }
        assert_eq!(b.take_or_owe(&rate, 1_000), Taken::Refused);
        assert_eq!(b.take_or_owe(&rate, 5_000), Taken::Allowed);
    }

    #[test]
    fn no_rate_means_no_limit() {
        let rate = Rate::new(0.0, 0);
        let mut b = TokenBucket::full(&rate, 0);
        for _ in 0..1000 {
            assert_eq!(b.take_or_owe(&rate, 0), Taken::Allowed);
            assert_eq!(b.try_take(&rate, 0), Ok(()));
        }
        assert_eq!(Rate::with_default_burst(2.5, 0).burst, 5.0);
    }
}
