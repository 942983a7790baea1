//! Certificates made by the tests (rcgen): a CA, leaf certificates it signs for `localhost` and
//! 127.0.0.1, files herald reads them from, and clients that trust the CA.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

use super::{Herald, Launch, within};

/// A certificate authority only the tests trust.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate: its chain (leaf, then the CA) and key as PEM, and the leaf as DER.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 whose common name is `name`.
    pub fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// An HTTPS client trusting this CA: HTTP/2 when the server offers it (ALPN), a fresh
    /// connection per request unless `pool`, the server's certificate readable per response.
    pub fn client(&self, pool: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("CA PEM"),
            )
            .tls_info(true);
        if !pool {
            b = b.pool_max_idle_per_host(0);
        }
        b.build().expect("client")
    }

    /// rustls client settings trusting this CA, offering `alpn`.
    pub fn rustls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.der().clone())
            .expect("CA as a trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS connection to `addr` (as `localhost`) offering `alpn`.
    pub async fn connect(&self, addr: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        within(
            "a TLS handshake",
            TlsConnector::from(self.rustls(alpn)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake")
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// The certificate and key files of one node, in a directory removed on drop.
pub struct CertFiles {
    dir: PathBuf,
}

impl CertFiles {
    pub fn new(leaf: &Leaf) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create cert dir");
        let files = Self { dir };
        files.install(leaf);
        files
    }

    pub fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    pub fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }

    /// Replaces both files the way a deployment does: write aside, then rename into place.
    pub fn install(&self, leaf: &Leaf) {
        for (name, text) in [("cert.pem", &leaf.chain_pem), ("key.pem", &leaf.key_pem)] {
            let tmp = self.dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, self.dir.join(name)).expect("rename");
        }
    }

    /// Overwrites only the key file (a key that does not match the certificate).
    pub fn install_key(&self, key_pem: &str) {
        std::fs::write(self.dir.join("key.pem"), key_pem).expect("write");
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts herald serving TLS with `files` (plus `args`); its own client trusts `ca` and speaks
/// HTTP/1.1 only, so the test's own scrapes never count as HTTP/2 connections or streams.
pub async fn start(ca: &TestCa, files: &CertFiles, args: &[&str]) -> Herald {
    let (cert, key) = (files.cert(), files.key());
    let mut all = vec!["--tls-cert-file", &cert, "--tls-key-file", &key];
    all.extend_from_slice(args);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let h = Herald::launch(Launch {
        args: &all,
        http: Some(http),
        ..Launch::default()
    })
    .await;
    assert!(h.base.starts_with("https://"), "{}", h.base);
    h
}

/// The certificate the server presented for `resp`.
pub fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}
