//! Where clients connect: node base URLs and the local source addresses to dial from.
//!
//! Binding each client socket to one of several loopback source addresses (127.0.0.2, ...)
//! multiplies the ephemeral port space, so a single run can hold far more than ~28k
//! connections to one server address.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

/// Which server protocol the target speaks.
///
/// `nchan` exists only so `scripts/bench.sh` can run the very same clients, pacing, payloads
/// and loss/latency accounting against nginx + nchan (the comparison issue 4 asks for). With
/// nchan: publish = `POST /pub?id=CHANNEL` with the raw payload as body (201/202 = acked);
/// subscribe = `GET /sub/CHANNEL` as a WebSocket (each text frame is one raw message) or with
/// `Accept: text/event-stream`. nchan has no per-channel offset in the ack or the frame, so the
/// payload's per-channel `seq` (assigned by the publisher, 1, 2, 3, ...) stands in for the
/// offset on both sides; loss and latency are then computed by the same code as for Herald.
/// Because `seq` is assigned before sending, a channel published with several requests in
/// flight can be reordered between publisher and server: `out_of_order` then counts that too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    #[default]
    Herald,
    Nchan,
}

/// A Herald node (or load balancer) base URL, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The protocol it speaks (Herald unless `--target nchan`).
    pub flavor: Flavor,
    /// Value of the `Host` header.
    pub host: String,
    /// Path prefix without trailing slash (for deployments mounted under a path).
    pub prefix: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]` (`ws://` is accepted as a synonym) and resolves it.
    pub async fn resolve(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| {
                if url.starts_with("https://") || url.starts_with("wss://") {
                    format!(
                        "{url}: TLS is not supported; point the loadtest at the plain-HTTP \
                         nodes or a TLS-terminating proxy's backend"
                    )
                } else {
                    format!("{url}: expected http://host:port")
                }
            })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url}: missing host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .collect();
        // `localhost` often resolves to ::1 first while servers listen on 127.0.0.1, and the
        // --source-ip addresses are IPv4: prefer IPv4.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{url}: {with_port} resolved to nothing"))?;
        Ok(Self {
            addr,
            flavor: Flavor::Herald,
            host: authority.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// Opens TCP connections, rotating over the configured source addresses.
#[derive(Debug)]
pub struct Dialer {
    sources: Vec<IpAddr>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Dialer {
    pub fn new(sources: Vec<IpAddr>, timeout: Duration) -> Self {
        Self {
            sources,
            next: AtomicUsize::new(0),
            timeout,
        }
    }

    pub async fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        let fut = async {
            let socket = if to.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            let source = if self.sources.is_empty() {
                None
            } else {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
                Some(self.sources[i])
            };
            if let Some(ip) = source.filter(|ip| ip.is_ipv4() == to.is_ipv4()) {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(to).await?;
            // Small frames (publishes, subscribe ops) must not wait for Nagle.
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Percent-encodes a query value (channel names may hold `+`, `/`, `:`, `@`, `=`).
pub fn encode_query(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_urls() {
        let t = Target::resolve("http://127.0.0.1:8080").await.expect("ok");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("127.0.0.1:8080", ""));
        let t = Target::resolve("http://127.0.0.1/herald/")
            .await
            .expect("ok");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.prefix, "/herald");
        let t = Target::resolve("http://localhost:9").await.expect("ok");
        assert!(t.addr.is_ipv4(), "{}", t.addr);
        assert!(Target::resolve("https://x").await.is_err());
        assert!(Target::resolve("127.0.0.1:80").await.is_err());
    }

    #[test]
    fn encodes_query() {
        let mut s = String::new();
        encode_query(&mut s, "a+b/c:d");
        assert_eq!(s, "a%2Bb%2Fc%3Ad");
    }
}
