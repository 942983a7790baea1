//! The node's certificate: loaded from PEM files, swapped in place when they change.
//!
//! rustls asks [`CertStore`] for a certificate during every handshake, so replacing the one it
//! holds changes what new connections get at once, while connections already open keep the
//! session they negotiated. A reload reads both files and installs the pair only if it parses and
//! the key matches the certificate: a half-written file, a key for another certificate or a file
//! that vanished for a moment (a secret being rotated) leaves the current pair in place.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::RwLock;
use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Where the certificate chain and its key are read from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The bytes of both files as last read: a reload that finds the same bytes changes nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl CertFiles {
    /// Reads both files (not parsed).
    pub fn read(&self) -> Result<Snapshot, CertError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CertError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Snapshot {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }

    /// Parses what [`Self::read`] returned into a certificate rustls can serve.
    pub fn parse(
        &self,
        snapshot: &Snapshot,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, CertError> {
        let chain = CertificateDer::pem_slice_iter(&snapshot.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::BadCertificate {
                path: self.cert.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let bad_key = |reason: String| CertError::BadKey {
            path: self.key.clone(),
            reason,
        };
        let key =
            PrivateKeyDer::from_pem_slice(&snapshot.key).map_err(|e| bad_key(e.to_string()))?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad_key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) => Ok(certified),
            // rustls cannot compare some key types; it serves them and the client decides.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(_) => Err(CertError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }),
        }
    }
}

/// The certificate every handshake is answered with (SNI is not looked at: one node, one
/// certificate, which may list several names).
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write() = Arc::new(key);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> CertFiles {
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        CertFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        }
    }

    #[test]
    fn a_pair_loads_and_mismatches_and_garbage_are_refused() {
        let dir = std::env::temp_dir().join(format!("herald-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let provider = rustls::crypto::ring::default_provider();
        let (cert_a, key_a) = pair("a.test");
        let (_, key_b) = pair("b.test");

        let ok = files(&dir, &cert_a, &key_a);
        let snap = ok.read().expect("read");
        assert!(ok.parse(&snap, &provider).is_ok());

        let mismatch = files(&dir, &cert_a, &key_b);
        let err = mismatch
            .parse(&mismatch.read().expect("read"), &provider)
            .expect_err("mismatch");
        assert!(matches!(err, CertError::Mismatch { .. }), "{err}");

        for (cert, key, what) in [
            ("", key_a.as_str(), "no PEM certificate"),
            ("garbage", key_a.as_str(), "no PEM certificate"),
            (cert_a.as_str(), "", "no usable private key"),
            (
                cert_a.as_str(),
                &cert_a[..cert_a.len() / 2],
                "no usable private key",
            ),
        ] {
            let f = files(&dir, cert, key);
            let err = f
                .parse(&f.read().expect("read"), &provider)
                .expect_err("refused");
            assert!(err.to_string().contains(what), "{err}");
        }
        let missing = CertFiles {
            cert: dir.join("nope.pem"),
            key: dir.join("k.pem"),
        };
        assert!(matches!(missing.read(), Err(CertError::Read { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
