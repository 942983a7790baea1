//! Subscriber auth end to end: real nodes, real SSE and WebSocket clients, tokens signed with
//! real keys (HMAC secrets; RSA, EC and Ed25519 keys made by `openssl`).

mod expiry;
mod keys;
mod logs;
mod multinode;
mod namespaces;
mod paths;
mod startup;
mod tokens;

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

/// The HMAC secret of the nodes these tests start (at least 32 bytes).
pub const SECRET: &str = "herald-test-secret-0123456789abcdef";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Claims with `exp` `ttl` seconds from now.
pub fn claims(sub: Option<&str>, channels: &[&str], ttl: i64) -> Value {
    let mut c = json!({"exp": now() + ttl, "iat": now(), "channels": channels});
    if let Some(sub) = sub {
        c["sub"] = sub.into();
    }
    c
}

pub fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// A token for `channels` that lives a minute.
pub fn token(sub: Option<&str>, channels: &[&str]) -> String {
    hs256(&claims(sub, channels, 60))
}

/// An unsigned `alg: none` token (never valid).
pub fn alg_none(claims: &Value) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}

/// A node verifying tokens with [`SECRET`], plus `args`.
pub async fn secured(args: &[&str]) -> Herald {
    let mut all = vec!["--jwt-secret", SECRET];
    all.extend_from_slice(args);
    Herald::start(&all).await
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("herald-auth-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `content` to `name` in the directory; returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A key pair made by `openssl genpkey`: the private key signs, the public PEM configures herald.
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
    pub public_path: PathBuf,
}

fn openssl(args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .status()
        .expect("run openssl (apt-get install openssl)");
    assert!(status.success(), "openssl {args:?}");
}

fn genkey(dir: &Path, name: &str, genpkey_args: &[&str]) -> KeyPair {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let private_s = private.to_str().expect("utf8");
    let mut args = vec!["genpkey", "-out", private_s];
    args.extend_from_slice(genpkey_args);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().expect("utf8"),
    ]);
    KeyPair {
        private_pem: std::fs::read_to_string(&private).expect("private key"),
        public_pem: std::fs::read_to_string(&public).expect("public key"),
        public_path: public,
    }
}

/// Keys made once per test run (RSA key generation takes a moment).
pub struct Keys {
    _dir: TempDir,
    pub rsa: KeyPair,
    pub rsa_other: KeyPair,
    pub ec: KeyPair,
    pub ed: KeyPair,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = TempDir::new("keys");
        let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
        Keys {
            rsa: genkey(&dir.0, "rsa", &rsa),
            rsa_other: genkey(&dir.0, "rsa-other", &rsa),
            ec: genkey(
                &dir.0,
                "ec",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            ed: genkey(&dir.0, "ed", &["-algorithm", "ed25519"]),
            _dir: dir,
        }
    })
}

/// The HTTP status of a refused WebSocket handshake.
pub fn handshake_status(result: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

/// An SSE request that must be refused: its status and error code (the body is checked to be
/// the JSON error only: no event, so nothing of the channel).
pub async fn sse_refused(
    url: &str,
    last_event_id: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let sse = Sse::try_connect_with(url, last_event_id, headers)
        .await
        .expect("SSE request");
    let status = sse.status;
    let body = sse.rest().await;
    assert!(
        !body.contains("data:") && !body.contains("event:"),
        "a refused stream sent events: {body}"
    );
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not a JSON error: {body}"));
    (
        status,
        v["error"]["code"].as_str().expect("code").to_owned(),
    )
}
