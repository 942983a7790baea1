//! Native TLS (rustls with the ring provider; no OpenSSL): the node's certificate, the handshake
//! and which HTTP version it negotiated (ALPN `h2` or `http/1.1`), and certificate rotation.
//!
//! Rotation: the certificate and key files are re-read every `tls_reload_interval` and on
//! SIGHUP; a pair that changed, parses and matches is served to new connections from then on
//! (see [`certs`]). Connections already open keep the session they negotiated.
//!
//! A handshake runs under the connection's request-head deadline (`header_read_timeout` from
//! accept), so a client that opens a socket and never finishes the handshake is closed like a
//! silent plain-text one. Handshake failures (garbage, a plain-text request on the TLS port, an
//! unknown certificate authority at the client, a timeout) end that connection only and are
//! counted in `herald_tls_handshake_failures_total`.

pub mod certs;

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use tokio::{
    net::TcpStream,
    signal::unix::{Signal, SignalKind},
    time::Instant,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{self, ServerConfig, crypto::CryptoProvider},
    server::TlsStream,
};

pub use self::certs::CertError;
use self::certs::{CertFiles, CertStore, Snapshot};
use crate::{config::Config, conn::Protocol};

/// The node's TLS side: the acceptor and the certificate it serves.
pub struct Tls {
    acceptor: TlsAcceptor,
    store: Arc<CertStore>,
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    /// What the files held when the current certificate was installed (or last failed to be).
    seen: Mutex<Snapshot>,
    /// SIGHUP, listened for from the moment the TLS side exists (before the node says it
    /// listens: a SIGHUP right after start must reload, not end the process); taken by
    /// [`Self::watch`].
    hangup: Mutex<Option<Signal>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// The TLS side `config` asks for: `None` without `tls_cert_file` (plain HTTP), an error
    /// when the files cannot be used (reported at start, before the node says it listens).
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, CertError> {
        if config.tls_cert_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let files = CertFiles {
            cert: config.tls_cert_file.clone(),
            key: config.tls_key_file.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let snapshot = files.read()?;
        let store = CertStore::new(files.parse(&snapshot, &provider)?);
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CertError::BadCertificate {
                path: files.cert.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server.alpn_protocols = if config.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Some(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            store,
            files,
            provider,
            seen: Mutex::new(snapshot),
            hangup: Mutex::new(listen_for_hangup()),
        })))
    }

    /// Performs the server side of the handshake before `deadline`; counts and logs a failure
    /// (at debug: a port scanner or a client that does not trust the certificate is not news).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Instant,
        failures: &IntCounterVec,
    ) -> Option<(TlsStream<TcpStream>, Protocol)> {
        match tokio::time::timeout_at(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let protocol = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Protocol::Http2,
                    _ => Protocol::Http1,
                };
                Some((tls, protocol))
            }
            Ok(Err(e)) => {
                failures.with_label_values(&["error"]).inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                failures.with_label_values(&["timeout"]).inc();
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }

    /// Re-reads the files and installs the pair if it changed and is usable. `Ok(true)`: a new
    /// certificate is served from now on; `Ok(false)`: the files are unchanged.
    pub fn reload(&self) -> Result<bool, CertError> {
        let snapshot = self.files.read()?;
        let mut seen = self.seen.lock();
        if *seen == snapshot {
            return Ok(false);
        }
        // Remembered even when it fails to parse: the same broken files are reported once, not
        // at every check. The next change (or SIGHUP, which forgets it) tries again.
        *seen = snapshot.clone();
        drop(seen);
        let key = self.files.parse(&snapshot, &self.provider)?;
        self.store.replace(key);
        Ok(true)
    }

    /// Reloads every `every` (0: never) and on SIGHUP until the task is dropped; `reloads`
    /// counts outcomes (`ok`, `error`).
    pub async fn watch(self: Arc<Self>, every: Duration, reloads: IntCounterVec) {
        let mut hangup = self.hangup.lock().take();
        let mut tick = (!every.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let asked = tokio::select! {
                () = next_tick(&mut tick) => false,
                () = next_hangup(&mut hangup) => true,
            };
            if asked {
                // SIGHUP reloads whatever the files hold, even files that failed before.
                *self.seen.lock() = Snapshot::default();
            }
            match self.reload() {
                Ok(true) => {
                    reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    reloads.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, "TLS certificate not reloaded: still serving the previous one");
                }
            }
        }
    }
}

/// A SIGHUP listener, when there is a runtime to deliver it.
fn listen_for_hangup() -> Option<Signal> {
    tokio::runtime::Handle::try_current().ok()?;
    match tokio::signal::unix::signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload only on change");
            None
        }
    }
}

async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_hangup(hangup: &mut Option<Signal>) {
    if let Some(s) = hangup
        && s.recv().await.is_some()
    {
        return;
    }
    // No handler (or the signal driver is gone): wait for the interval alone.
    *hangup = None;
    std::future::pending().await
}
