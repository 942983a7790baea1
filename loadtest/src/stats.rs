//! Delivery accounting: which offsets arrived (loss, duplicates, order), latency histograms
//! and deliveries per second.
//!
//! Memory stays flat on long runs: received offsets are kept as sorted inclusive ranges, which
//! collapse to a single range when delivery is complete and in order (the normal case), so a
//! subscriber of a million messages costs a few bytes, not a bitmap.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// A set of u64 stored as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Inserts `x`; returns false if it was already present.
    pub fn insert(&mut self, x: u64) -> bool {
        // Fast path: in-order delivery extends the last range.
        if let Some(last) = self.ranges.last_mut() {
            if last.1.checked_add(1) == Some(x) {
                last.1 = x;
                return true;
            }
            if x > last.1 {
                self.ranges.push((x, x));
                return true;
            }
        } else {
            self.ranges.push((x, x));
            return true;
        }
        // First range whose end is >= x.
        let i = self.ranges.partition_point(|r| r.1 < x);
        if i < self.ranges.len() && self.ranges[i].0 <= x {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == x;
        let joins_next = i < self.ranges.len() && self.ranges[i].0 == x + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = x,
            (false, true) => self.ranges[i].0 = x,
            (false, false) => self.ranges.insert(i, (x, x)),
        }
        true
    }

    #[cfg(test)]
    pub fn contains(&self, x: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < x);
        i < self.ranges.len() && self.ranges[i].0 <= x
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0 + 1).sum()
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// Adds every element of `other`: a linear merge of the two sorted range lists (publisher
    /// workers' sets interleave, so each can hold thousands of ranges).
    pub fn extend_from(&mut self, other: &RangeSet) {
        let (a, b) = (std::mem::take(&mut self.ranges), &other.ranges);
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = if j >= b.len() || (i < a.len() && a[i].0 <= b[j].0) {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            match merged.last_mut() {
                Some(last) if next.0 <= last.1.saturating_add(1) => last.1 = last.1.max(next.1),
                _ => merged.push(next),
            }
        }
        self.ranges = merged;
    }

    /// Number of elements in both sets, restricted to values > `above`.
    pub fn intersection_len_above(&self, other: &RangeSet, above: u64) -> u64 {
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a0, a1) = self.ranges[i];
            let (b0, b1) = other.ranges[j];
            let lo = a0.max(b0).max(above.saturating_add(1));
            let hi = a1.min(b1);
            if lo <= hi {
                n += hi - lo + 1;
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// Number of elements > `above`.
    pub fn len_above(&self, above: u64) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.1 > above)
            .map(|r| r.1 - r.0.max(above + 1) + 1)
            .sum()
    }
}

/// What one delivery was, as a client deduplicating by offset sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    /// New, but below an offset already seen: the server broke channel order.
    OutOfOrder,
    /// Already seen: dropped like a real client would, counted.
    Duplicate,
}

/// Per-subscriber view of one channel.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    pub received: RangeSet,
    pub duplicates: u64,
    pub out_of_order: u64,
    max: u64,
}

impl OffsetTracker {
    pub fn record(&mut self, offset: u64) -> Arrival {
        if !self.received.insert(offset) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        if offset < self.max {
            self.out_of_order += 1;
            return Arrival::OutOfOrder;
        }
        self.max = offset;
        Arrival::InOrder
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Loss accounting of one subscriber against what the publisher got acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossCount {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Delivered offsets nobody acknowledged to us: other publishers, or publishes whose ack
    /// failed although the broker stored them.
    pub unexpected: u64,
}

/// `acked` are the offsets the publisher got acknowledged on the channel; only offsets after
/// `base` (the channel position when the subscription went live) are expected.
pub fn count_loss(received: &RangeSet, acked: &RangeSet, base: u64) -> LossCount {
    let expected = acked.len_above(base);
    let both = received.intersection_len_above(acked, base);
    let delivered_new = received.len_above(base);
    LossCount {
        expected,
        delivered: both,
        lost: expected - both,
        unexpected: delivered_new - both,
    }
}

/// Microsecond histogram bounds: 1 us .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latency histograms shared by many subscriber tasks, sharded so they rarely contend.
#[derive(Debug)]
pub struct LatencySink {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencySink {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            // Same bounds everywhere, so add cannot fail.
            let _ = all.add(&*s.lock());
        }
        all
    }
}

/// A subscriber's local batch of latency samples, flushed to its sink shard when full, so the
/// hot path neither locks nor allocates.
#[derive(Debug)]
pub struct LatencyBatch {
    buf: [u64; 128],
    len: usize,
    shard: usize,
}

impl LatencyBatch {
    pub fn new(shard: usize) -> Self {
        Self {
            buf: [0; 128],
            len: 0,
            shard,
        }
    }

    #[inline]
    pub fn record(&mut self, sink: &LatencySink, micros: u64) {
        self.buf[self.len] = micros;
        self.len += 1;
        if self.len == self.buf.len() {
            self.flush(sink);
        }
    }

    pub fn flush(&mut self, sink: &LatencySink) {
        if self.len == 0 {
            return;
        }
        let mut h = sink.shards[self.shard % sink.shards.len()].lock();
        for &v in &self.buf[..self.len] {
            h.saturating_record(v.max(1));
        }
        self.len = 0;
    }
}

/// Deliveries per wall-clock second since a start time.
#[derive(Debug)]
pub struct RateBuckets {
    start_us: AtomicU64,
    buckets: Vec<AtomicU64>,
}

impl RateBuckets {
    pub fn new(start_us: u64, seconds: usize) -> Self {
        Self {
            start_us: AtomicU64::new(start_us),
            buckets: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Moves second 0 to `start_us` (e.g. when publishing starts, after a long connect phase).
    pub fn set_start(&self, start_us: u64) {
        self.start_us.store(start_us, Ordering::Relaxed);
    }

    fn bucket(&self, now_us: u64) -> usize {
        let start = self.start_us.load(Ordering::Relaxed);
        let s = (now_us.saturating_sub(start) / 1_000_000) as usize;
        s.min(self.buckets.len() - 1)
    }

    pub fn add(&self, bucket: usize, n: u64) {
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Deliveries in the last complete second before `now_us`.
    pub fn last_complete(&self, now_us: u64) -> Option<u64> {
        let b = self.bucket(now_us).checked_sub(1)?;
        Some(self.buckets.get(b)?.load(Ordering::Relaxed))
    }

    /// Counts per second, trailing empty seconds removed.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }
}

/// A subscriber's local counter for the current second, so the shared buckets see one atomic
/// add per subscriber per second instead of one per message.
#[derive(Debug, Default)]
pub struct RateCounter {
    bucket: usize,
    n: u64,
}

impl RateCounter {
    #[inline]
    pub fn tick(&mut self, rates: &RateBuckets, now_us: u64) {
        let b = rates.bucket(now_us);
        if b != self.bucket {
            self.flush(rates);
            self.bucket = b;
        }
        self.n += 1;
    }

    pub fn flush(&mut self, rates: &RateBuckets) {
        if self.n > 0 {
            rates.add(self.bucket, self.n);
            self.n = 0;
        }
    }
}

/// Percentiles of a microsecond histogram, as reported.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[u64]) -> RangeSet {
        let mut s = RangeSet::default();
        for &x in xs {
            s.insert(x);
        }
        s
    }

    #[test]
    fn range_set_merges() {
        let s = set(&[1, 2, 3, 7, 5, 6, 4]);
        assert_eq!(s.ranges, vec![(1, 7)]);
        assert_eq!(s.len(), 7);
        let s = set(&[10, 1, 5, 3]);
        assert_eq!(s.ranges, vec![(1, 1), (3, 3), (5, 5), (10, 10)]);
        assert!(s.contains(5) && !s.contains(4) && !s.contains(11));
        let mut s = set(&[2]);
        assert!(!s.insert(2));
        assert!(s.insert(1));
        assert_eq!(s.ranges, vec![(1, 2)]);
    }

    #[test]
    fn range_set_extend() {
        let mut a = set(&[1, 2, 9]);
        a.extend_from(&set(&[3, 4, 8, 20]));
        assert_eq!(a.ranges, vec![(1, 4), (8, 9), (20, 20)]);
        // Interleaved sets, as publisher workers produce them, merge into one range.
        let mut all = RangeSet::default();
        for w in 0..8u64 {
            all.extend_from(&set(&(0..1000u64)
                .map(|i| i * 8 + w + 1)
                .collect::<Vec<_>>()));
        }
        assert_eq!(all.ranges, vec![(1, 8000)]);
        let mut e = RangeSet::default();
        e.extend_from(&RangeSet::default());
        assert!(e.ranges.is_empty());
    }

    #[test]
    fn tracker_detects_duplicates_and_reordering() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.record(1), Arrival::InOrder);
        assert_eq!(t.record(3), Arrival::InOrder);
        assert_eq!(t.record(2), Arrival::OutOfOrder);
        assert_eq!(t.record(3), Arrival::Duplicate);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(4), Arrival::InOrder);
        assert_eq!((t.duplicates, t.out_of_order, t.max()), (2, 1, 4));
        assert_eq!(t.received.len(), 4);
    }

    #[test]
    fn loss_against_acked_offsets() {
        // Channel was at offset 10 when the subscriber joined; we published 11..=20 but 15's
        // ack failed (it is in the broker anyway), the subscriber missed 13 and 14.
        let mut acked = set(&(11..=20).collect::<Vec<_>>());
        acked = {
            let mut s = RangeSet::default();
            for x in 11..=20 {
                if x != 15 && acked.contains(x) {
                    s.insert(x);
                }
            }
            s
        };
        let received = set(&[11, 12, 15, 16, 17, 18, 19, 20]);
        let c = count_loss(&received, &acked, 10);
        assert_eq!(
            c,
            LossCount {
                expected: 9,
                delivered: 7,
                lost: 2,
                unexpected: 1
            }
        );
    }

    #[test]
    fn loss_ignores_offsets_before_base() {
        let acked = set(&[1, 2, 3, 4, 5]);
        let received = set(&[4, 5]);
        let c = count_loss(&received, &acked, 3);
        assert_eq!(
            (c.expected, c.delivered, c.lost, c.unexpected),
            (2, 2, 0, 0)
        );
    }

    #[test]
    fn latency_batches_reach_the_sink() {
        let sink = LatencySink::new(4);
        let mut b = LatencyBatch::new(7);
        for v in 1..=300 {
            b.record(&sink, v);
        }
        b.flush(&sink);
        let h = sink.merged();
        assert_eq!(h.len(), 300);
        assert_eq!(h.max(), 300);
        let p = Percentiles::of(&h);
        assert_eq!(p.p50, 150);
    }

    #[test]
    fn rate_counter_buckets_by_second() {
        let rates = RateBuckets::new(1_000_000, 10);
        let mut c = RateCounter::default();
        for t in [
            1_000_000, 1_500_000, 2_100_000, 2_200_000, 2_300_000, 99_000_000,
        ] {
            c.tick(&rates, t);
        }
        c.flush(&rates);
        // The far-future sample lands in the last bucket instead of being dropped.
        assert_eq!(rates.snapshot(), vec![2, 3, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
