//! Trusted proxies and the client address behind them.
//!
//! A request's client address is the TCP peer's, unless that peer is a trusted proxy: then it is
//! read from `X-Forwarded-For` (or, when a request has none, `Forwarded`), walking the list from
//! the right past every trusted proxy, so the first address no trusted proxy vouches for is the
//! client's. Entries further left were written by the client and are never believed. Anyone
//! else's such headers are ignored.

use std::{fmt, net::IpAddr};

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("{text:?} is not an address or CIDR block like 10.0.0.0/8 or ::1");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let net = unmap(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The `trusted_proxies` option.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Comma-separated addresses and CIDR blocks.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request that `peer` (a trusted proxy) forwarded, from the values
    /// of its `X-Forwarded-For` and `Forwarded` headers in order of appearance.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
        forwarded: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let mut hops: Vec<Option<IpAddr>> = forwarded_for
            .flat_map(|v| v.split(|&b| b == b','))
            .map(parse_node)
            .collect();
        if hops.is_empty() {
            hops = forwarded
                .flat_map(|v| v.split(|&b| b == b','))
                .map(forwarded_for_param)
                .collect();
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                // Garbage only appears left of the hops trusted proxies wrote: stop at it.
                None => break,
                Some(ip) => {
                    client = *ip;
                    if !self.trusts(*ip) {
                        break;
                    }
                }
            }
        }
        client
    }
}

/// One node of a forwarding list: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted. `None` for anything else (`unknown`, obfuscated names, garbage).
fn parse_node(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(unmap(ip));
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(unmap);
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok().map(unmap)
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239).
fn forwarded_for_param(element: &[u8]) -> Option<IpAddr> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = std::str::from_utf8(pair).ok()?.trim();
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            parse_node(value.as_bytes())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn proxies(s: &str) -> TrustedProxies {
        TrustedProxies::parse_list(s).expect("valid")
    }

    #[test]
    fn cidr_blocks() {
        let p = proxies("10.0.0.0/8, 192.168.1.7, fd00::/8");
        assert!(p.trusts(ip("10.200.0.1")));
        assert!(p.trusts(ip("::ffff:10.0.0.1")));
        assert!(!p.trusts(ip("11.0.0.1")));
        assert!(p.trusts(ip("192.168.1.7")));
        assert!(!p.trusts(ip("192.168.1.8")));
        assert!(p.trusts(ip("fd12::1")));
        assert!(!p.trusts(ip("fe80::1")));
        assert!(proxies("0.0.0.0/0").trusts(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(TrustedProxies::parse_list(bad).is_err(), "{bad}");
        }
    }

    fn client(p: &TrustedProxies, peer: &str, xff: &[&str], fwd: &[&str]) -> IpAddr {
        p.client_ip(
            ip(peer),
            xff.iter().map(|s| s.as_bytes()),
            fwd.iter().map(|s| s.as_bytes()),
        )
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies("127.0.0.1, 10.0.0.0/8");
        // One proxy appended the client.
        assert_eq!(
            client(&p, "127.0.0.1", &["203.0.113.9"], &[]),
            ip("203.0.113.9")
        );
        // The client forged entries on the left; they are not believed.
        assert_eq!(
            client(&p, "127.0.0.1", &["6.6.6.6, 203.0.113.9"], &[]),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies is walked past; several header lines join in order.
        assert_eq!(
            client(
                &p,
                "127.0.0.1",
                &["198.51.100.1, 10.1.1.1", "10.2.2.2"],
                &[]
            ),
            ip("198.51.100.1")
        );
        // Ports and brackets.
        assert_eq!(
            client(&p, "127.0.0.1", &["203.0.113.9:4711"], &[]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(&p, "127.0.0.1", &["[2001:db8::5]:80"], &[]),
            ip("2001:db8::5")
        );
        // Garbage stops the walk; no header leaves the peer.
        assert_eq!(client(&p, "127.0.0.1", &["bogus"], &[]), ip("127.0.0.1"));
        assert_eq!(
            client(&p, "127.0.0.1", &["bogus, 10.0.0.3"], &[]),
            ip("10.0.0.3")
        );
        assert_eq!(client(&p, "127.0.0.1", &[], &[]), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let p = proxies("127.0.0.1");
        assert_eq!(
            client(
                &p,
                "127.0.0.1",
                &[],
                &[r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https"#]
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client(&p, "127.0.0.1", &["203.0.113.9"], &["for=6.6.6.6"]),
            ip("203.0.113.9"),
            "X-Forwarded-For wins"
        );
        assert_eq!(
            client(&p, "127.0.0.1", &[], &["for=unknown"]),
            ip("127.0.0.1")
        );
    }
}
