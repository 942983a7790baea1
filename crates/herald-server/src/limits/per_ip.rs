//! Per client address: open connections and a new-connection token bucket, in a sharded table
//! that stays bounded whatever the number of addresses seen.
//!
//! An entry exists while its address holds a connection or its bucket is still refilling; idle
//! entries are swept when a shard grows, and a shard holding more than [`SHARD_CAP`] idle entries
//! forgets them all (forgetting one only forgives its rate, never its open count), so a shard
//! holds at most about 2 x [`SHARD_CAP`] idle entries. IPv6 addresses are
//! counted per /64, the block one subscriber line usually gets: limiting single IPv6 addresses
//! would stop nobody.

use std::{collections::HashMap, hash::BuildHasher, net::IpAddr};

use parking_lot::Mutex;

use super::{
    Refusal,
    bucket::{Rate, TokenBucket},
};

const SHARDS: usize = 16;
/// Idle entries past which a shard forgets them (so the table holds at most about
/// 16 x 2 x 4096 idle entries, a few MiB, plus one entry per address with an open connection).
const SHARD_CAP: usize = 4096;
/// A shard is swept for idle entries when it has grown to this size (then to twice its size
/// after the sweep), so sweeps cost O(1) per insert on average.
const FIRST_SWEEP: usize = 256;

/// The address connections are counted under: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    bucket: TokenBucket,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<IpAddr, Entry>,
    next_sweep: usize,
}

pub struct PerIp {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// 0: no cap.
    max_open: usize,
    rate: Rate,
}

impl PerIp {
    pub fn new(max_open: usize, rate: Rate) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            max_open,
            rate,
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Counts a new connection from `ip` (already a [`key`]) if its address is under both limits.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let mut shard = self.shard(&ip).lock();
        let rate = self.rate;
        let entry = shard.entries.entry(ip).or_insert_with(|| Entry {
            open: 0,
            bucket: TokenBucket::full(&rate, now_ms),
        });
        if self.max_open > 0 && entry.open as usize >= self.max_open {
            return Err(Refusal::TooManyConnections);
        }
        if let Err(wait) = entry.bucket.try_take(&rate, now_ms) {
            if entry.open == 0 {
                shard.grown(&rate, now_ms);
            }
            return Err(Refusal::RateLimited { retry_after: wait });
        }
        entry.open += 1;
        shard.grown(&rate, now_ms);
        Ok(())
    }

    /// Counts a connection that was already admitted (a WebSocket taking over its socket).
    pub fn hold(&self, ip: IpAddr, now_ms: u64) {
        let rate = self.rate;
        let mut shard = self.shard(&ip).lock();
        shard
            .entries
            .entry(ip)
            .or_insert_with(|| Entry {
                open: 0,
                bucket: TokenBucket::full(&rate, now_ms),
            })
            .open += 1;
    }

    pub fn release(&self, ip: IpAddr, now_ms: u64) {
        let mut shard = self.shard(&ip).lock();
        if let Some(entry) = shard.entries.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.bucket.is_full(&self.rate, now_ms) {
                shard.entries.remove(&ip);
            }
        }
    }

    /// Open connections counted for `ip` (tests and metrics).
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        self.shard(&ip)
            .lock()
            .entries
            .get(&ip)
            .map_or(0, |e| e.open)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }
}

impl Shard {
    /// Sweeps idle entries once the shard has grown enough; past [`SHARD_CAP`] also those whose
    /// bucket is still refilling.
    fn grown(&mut self, rate: &Rate, now_ms: u64) {
        if self.entries.len() < self.next_sweep.max(FIRST_SWEEP) {
            return;
        }
        self.entries
            .retain(|_, e| e.open > 0 || !e.bucket.is_full(rate, now_ms));
        let idle = self.entries.values().filter(|e| e.open == 0).count();
        if idle > SHARD_CAP {
            self.entries.retain(|_, e| e.open > 0);
        }
        self.next_sweep = self.entries.len() * 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(i))
    }

    #[test]
    fn caps_open_connections_per_address() {
        let t = PerIp::new(2, Rate::new(0.0, 0));
        let a = v4(1);
        assert!(t.admit(a, 0).is_ok());
        assert!(t.admit(a, 0).is_ok());
        assert!(matches!(t.admit(a, 0), Err(Refusal::TooManyConnections)));
        assert!(t.admit(v4(2), 0).is_ok(), "other addresses are unaffected");
        t.release(a, 0);
        assert!(t.admit(a, 0).is_ok());
        t.hold(a, 0);
        assert_eq!(t.open(a), 3);
        for _ in 0..3 {
            t.release(a, 0);
        }
        assert_eq!(t.len(), 1, "a released address without a rate is forgotten");
    }

    #[test]
    fn limits_the_new_connection_rate_per_address() {
        let t = PerIp::new(0, Rate::new(1.0, 2));
        let a = v4(7);
        assert!(t.admit(a, 0).is_ok());
        assert!(t.admit(a, 0).is_ok());
        match t.admit(a, 0) {
            Err(Refusal::RateLimited { retry_after }) => {
                assert_eq!(retry_after.as_secs_f64(), 1.0)
            }
            other => panic!("{other:?}"),
        }
        assert!(t.admit(v4(8), 0).is_ok());
        assert!(t.admit(a, 1000).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let t = PerIp::new(0, Rate::new(0.001, 1));
        for i in 0..200_000 {
            let a = v4(i);
            assert!(t.admit(a, 0).is_ok());
            t.release(a, 0);
        }
        assert!(t.len() <= SHARDS * SHARD_CAP * 2, "{}", t.len());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(
            key("::ffff:10.0.0.1".parse().expect("ip")),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
