//! Where clients connect: node base URLs and the local source addresses to dial from.
//!
//! Binding each client socket to one of several loopback source addresses (127.0.0.2, ...)
//! multiplies the ephemeral port space, so a single run can hold far more than ~28k
//! connections to one server address.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{self, pki_types::ServerName},
};

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
    /// `https://`: the name the server's certificate must carry.
    pub tls: Option<ServerName<'static>>,
}

impl Target {
    /// Parses `http://host[:port][/prefix]` or `https://...` (`ws://`, `wss://` are accepted as
    /// synonyms) and resolves it.
    pub async fn resolve(url: &str) -> Result<Self, String> {
        let (rest, tls) = match [
            ("http://", false),
            ("ws://", false),
            ("https://", true),
            ("wss://", true),
        ]
        .iter()
        .find_map(|(s, tls)| url.strip_prefix(s).map(|rest| (rest, *tls)))
        {
            Some((rest, tls)) => (rest, tls),
            None => return Err(format!("{url}: expected http://host:port or https://...")),
        };
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
        } else if tls {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        let tls = match tls {
            false => None,
            true => {
                let host = with_port
                    .rsplit_once(':')
                    .map_or(with_port.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Some(
                    ServerName::try_from(host.to_owned())
                        .map_err(|e| format!("{url}: {host} is not a TLS server name: {e}"))?,
                )
            }
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
            tls,
        })
    }
}

/// A client connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The ALPN a connection offers over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// TLS client settings trusting the CA certificates (PEM) in `ca_file`, one per ALPN.
#[derive(Clone)]
pub struct Tls {
    http1: TlsConnector,
    h2: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    pub fn from_ca_file(ca_file: &std::path::Path) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let bad = |e: &dyn std::fmt::Display| format!("--tls-ca {}: {e}", ca_file.display());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = |alpn: &[u8]| -> Result<TlsConnector, String> {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(&e))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Self {
            http1: connector(b"http/1.1")?,
            h2: connector(b"h2")?,
        })
    }
}

/// Opens TCP connections, rotating over the configured source addresses.
#[derive(Debug)]
pub struct Dialer {
    sources: Vec<IpAddr>,
    next: AtomicUsize,
    timeout: Duration,
    tls: Option<Tls>,
}

impl Dialer {
    pub fn new(sources: Vec<IpAddr>, timeout: Duration, tls: Option<Tls>) -> Self {
        Self {
            sources,
            next: AtomicUsize::new(0),
            timeout,
            tls,
        }
    }

    /// Connects to `target`, with TLS (offering `alpn`) when it is an `https://` target.
    pub async fn connect(&self, target: &Target, alpn: Alpn) -> io::Result<Stream> {
        let tcp = self.connect_tcp(target.addr).await?;
        let Some(name) = &target.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let Some(tls) = &self.tls else {
            return Err(io::Error::other("https:// targets need --tls-ca"));
        };
        let connector = match alpn {
            Alpn::Http1 => &tls.http1,
            Alpn::H2 => &tls.h2,
        };
        let handshake = connector.connect(name.clone(), tcp);
        let stream = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Stream::Tls(Box::new(stream)))
    }

    async fn connect_tcp(&self, to: SocketAddr) -> io::Result<TcpStream> {
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
        assert!(t.tls.is_none());
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("127.0.0.1:8080", ""));
        let t = Target::resolve("http://127.0.0.1/herald/")
            .await
            .expect("ok");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.prefix, "/herald");
        let t = Target::resolve("http://localhost:9").await.expect("ok");
        assert!(t.addr.is_ipv4(), "{}", t.addr);
        let t = Target::resolve("https://127.0.0.1:8443").await.expect("ok");
        assert!(t.tls.is_some());
        assert!(Target::resolve("ftp://x").await.is_err());
        assert!(Target::resolve("127.0.0.1:80").await.is_err());
    }

    #[test]
    fn encodes_query() {
        let mut s = String::new();
        encode_query(&mut s, "a+b/c:d");
        assert_eq!(s, "a%2Bb%2Fc%3Ad");
    }
}
