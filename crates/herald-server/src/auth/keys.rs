//! Loading the keys subscriber tokens are verified with, and binding each key to the algorithms
//! it may verify.
//!
//! The algorithm is decided by the key, never by the token: an HMAC secret verifies HS256/384/512
//! only, an RSA key RS*/PS* only, an EC key ES256/ES384, an Ed25519 key EdDSA. So `alg: none`
//! and the classic confusion (an HS256 token "signed" with the RSA public key as the secret) are
//! refused before any signature is computed. Keys come from the configuration or local files
//! only: `jku`/`x5u` headers of a token are never fetched.

use std::path::{Path, PathBuf};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, JwkSet, PublicKeyUse},
};

use crate::config::{MIN_SECRET_BYTES, Secret};

/// Where the configuration says subscriber keys are.
#[derive(Debug, Clone)]
pub enum KeySource {
    Secret(Secret),
    SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
}

/// Why keys could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the HMAC secret is {len} bytes; at least {MIN_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret { len: usize },
    #[error("{path}: not a PEM public key Herald can use (RSA, EC P-256/P-384 or Ed25519)")]
    BadPem { path: PathBuf },
    #[error("{path}: {reason}")]
    BadJwks { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// A key and the algorithms it may verify (all of one family). `Debug` shows no key material
/// (`DecodingKey` redacts itself).
#[derive(Debug)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
    pub kid: Option<String>,
}

/// The configured keys.
#[derive(Debug)]
pub enum KeySet {
    /// A secret or a PEM key: used for every token, whatever its `kid`.
    Single(VerifyingKey),
    /// A JWKS: the token's `kid` picks the key (a token without `kid` only when there is one key).
    Jwks(Vec<VerifyingKey>),
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A secret file's content without its trailing line break (editors and `echo` add one).
fn trim_line_end(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

fn hmac(secret: &[u8]) -> Result<VerifyingKey, KeyError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret { len: secret.len() });
    }
    Ok(VerifyingKey {
        key: DecodingKey::from_secret(secret),
        algorithms: HMAC.to_vec(),
        kid: None,
    })
}

fn pem(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read(path)?;
    let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
        (k, RSA)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
        (k, EC)
    } else if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
        (k, ED)
    } else {
        return Err(KeyError::BadPem {
            path: path.to_owned(),
        });
    };
    Ok(VerifyingKey {
        key,
        algorithms: algorithms.to_vec(),
        kid: None,
    })
}

fn jwks(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    let bad = |reason: String| KeyError::BadJwks {
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&read(path)?)
        .map_err(|e| bad(format!("not a JWKS ({{\"keys\":[...]}}): {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue; // an encryption key never verifies signatures
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => HMAC,
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(_) => EC,
            AlgorithmParameters::OctetKeyPair(_) => ED,
            _ => {
                return Err(bad(format!("key {name}: unsupported key type")));
            }
        };
        // A key that names its algorithm may verify only that one.
        let algorithms = match jwk.common.key_algorithm {
            None => family.to_vec(),
            Some(alg) => match Algorithm::try_from(alg) {
                Ok(a) if family.contains(&a) => vec![a],
                _ => {
                    return Err(bad(format!(
                        "key {name}: `alg` {alg} does not fit its key type"
                    )));
                }
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {name}: {e}")))?;
        if family == HMAC {
            let len = key.try_get_as_bytes().map_or(0, <[u8]>::len);
            if len < MIN_SECRET_BYTES {
                return Err(bad(format!(
                    "key {name}: {}",
                    KeyError::ShortSecret { len }
                )));
            }
        }
        keys.push(VerifyingKey {
            key,
            algorithms,
            kid: jwk.common.key_id.clone(),
        });
    }
    if keys.is_empty() {
        return Err(bad("no signature verification key in the set".into()));
    }
    Ok(keys)
}

impl KeySource {
    /// The option that configured this source (for error messages).
    pub fn option(&self) -> &'static str {
        match self {
            Self::Secret(_) => "jwt_secret",
            Self::SecretFile(_) => "jwt_secret_file",
            Self::PublicKeyFile(_) => "jwt_public_key_file",
            Self::JwksFile(_) => "jwks_file",
        }
    }

    /// Reads and checks the keys.
    pub fn load(&self) -> Result<KeySet, KeyError> {
        Ok(match self {
            Self::Secret(_) | Self::SecretFile(_) => {
                let secret = self.hmac_secret()?.unwrap_or_default();
                KeySet::Single(hmac(&secret)?)
            }
            Self::PublicKeyFile(path) => KeySet::Single(pem(path)?),
            Self::JwksFile(path) => KeySet::Jwks(jwks(path)?),
        })
    }

    /// The HMAC secret, for sources that have one (what `herald token` signs with).
    pub fn hmac_secret(&self) -> Result<Option<Vec<u8>>, KeyError> {
        match self {
            Self::Secret(s) => Ok(Some(s.as_bytes().to_vec())),
            Self::SecretFile(path) => Ok(Some(trim_line_end(read(path)?))),
            Self::PublicKeyFile(_) | Self::JwksFile(_) => Ok(None),
        }
    }
}

impl KeySet {
    /// The key a token with header `kid` is verified with.
    pub fn select(&self, kid: Option<&str>) -> Result<&VerifyingKey, &'static str> {
        match (self, kid) {
            (Self::Single(k), _) => Ok(k),
            (Self::Jwks(keys), Some(kid)) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or("no key in the JWKS has the token's kid"),
            (Self::Jwks(keys), None) if keys.len() == 1 => Ok(&keys[0]),
            (Self::Jwks(_), None) => Err("the token has no kid and the JWKS has several keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    #[test]
    fn secrets_must_be_long_enough_and_lose_their_line_end() {
        let short = KeySource::Secret(Secret("x".repeat(31)));
        assert!(matches!(
            short.load(),
            Err(KeyError::ShortSecret { len: 31 })
        ));
        let file = KeySource::SecretFile(tmp("secret", format!("{}\n", "s".repeat(32)).as_bytes()));
        assert_eq!(file.hmac_secret().expect("read").map(|s| s.len()), Some(32));
        let KeySet::Single(k) = file.load().expect("loads") else {
            panic!("single key")
        };
        assert_eq!(k.algorithms, HMAC);
        let missing = KeySource::SecretFile("/nonexistent/herald-secret".into());
        assert!(
            missing
                .load()
                .expect_err("missing")
                .to_string()
                .contains("/nonexistent/herald-secret")
        );
    }

    #[test]
    fn errors_never_show_key_material() {
        let secret = "tooshort-but-secret";
        let err = KeySource::Secret(Secret(secret.to_owned()))
            .load()
            .expect_err("short")
            .to_string();
        assert!(!err.contains(secret), "{err}");
        let path = tmp(
            "garbage.pem",
            b"-----BEGIN PUBLIC KEY-----\nc2VjcmV0\n-----END PUBLIC KEY-----\n",
        );
        let err = KeySource::PublicKeyFile(path)
            .load()
            .expect_err("bad pem")
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn jwks_keys_are_bound_to_their_type_and_picked_by_kid() {
        let k = |kid: &str, alg: &str| {
            format!(
                r#"{{"kty":"oct","kid":"{kid}","alg":"{alg}","k":"{}"}}"#,
                "QUFB".repeat(11)
            )
        };
        let path = tmp(
            "set.json",
            format!(r#"{{"keys":[{},{}]}}"#, k("a", "HS256"), k("b", "HS512")).as_bytes(),
        );
        let KeySet::Jwks(keys) = KeySource::JwksFile(path.clone()).load().expect("loads") else {
            panic!("jwks")
        };
        assert_eq!(keys[0].algorithms, [Algorithm::HS256]);
        let set = KeySet::Jwks(keys);
        assert_eq!(set.select(Some("b")).expect("b").kid.as_deref(), Some("b"));
        assert!(set.select(Some("c")).is_err());
        assert!(set.select(None).is_err(), "several keys need a kid");
        let wrong = tmp(
            "wrong.json",
            format!(r#"{{"keys":[{}]}}"#, k("a", "RS256")).as_bytes(),
        );
        assert!(
            KeySource::JwksFile(wrong).load().is_err(),
            "an oct key cannot be RS256"
        );
        let empty = tmp("empty.json", br#"{"keys":[]}"#);
        assert!(KeySource::JwksFile(empty).load().is_err());
    }
}
