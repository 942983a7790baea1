//! Test support shared by Herald's integration tests: real `redis-server` processes, Clusters
//! and Sentinel deployments on ephemeral ports (never 6379), optionally over TLS with ACL users,
//! each in its own temporary directory, killed and cleaned up on drop so a failing test leaves
//! nothing running.

pub mod acl;
pub mod clients;
pub mod cluster;
pub mod contract;
pub mod sentinel;
pub mod tls;

pub use cluster::{ClusterOptions, RedisCluster};
pub use sentinel::{RedisSentinel, SentinelOptions};
pub use tls::TestCerts;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A port for a server a test starts (redis-server, a Sentinel, a Cluster bus). Taken below the
/// kernel's ephemeral range (32768-60999 by default): a port from `127.0.0.1:0` is free only
/// until the check's socket closes, and in the meantime another test's outgoing connection or
/// `:0` listener could take it, so redis-server failed to bind now and then (seen in CI). Each
/// process walks its own offset of the range and never hands out a port twice; the bind check
/// skips ports something else holds.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(997) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (offset + n) % SPAN;
        if let Ok(port) = u16::try_from(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A redis-server child process. `port` is plain TCP (the tests' own redis-cli uses it); a
/// server started with [`Self::start_tls`] also serves TLS on `tls_port`.
pub struct RedisServer {
    pub port: u16,
    pub tls_port: Option<u16>,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// No persistence: a restart loses everything.
    pub fn start() -> Self {
        Self::start_with(&["--appendonly", "no"])
    }

    /// AOF with fsync on every write: a restart keeps everything acknowledged.
    pub fn start_aof() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(
            free_port(),
            None,
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// Also serves TLS (with `certs`; `client_certs` is `tls-auth-clients`: `yes`, `optional` or
    /// `no`) on a port of its own; replication to and from it uses TLS too.
    pub fn start_tls(certs: &TestCerts, client_certs: &str, extra: &[&str]) -> Self {
        let tls_port = free_port();
        let mut args = certs.redis_args(tls_port, client_certs);
        args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_on(free_port(), Some(tls_port), args)
    }

    fn start_on(port: u16, tls_port: Option<u16>, extra: Vec<String>) -> Self {
        let mut server = Self {
            port,
            tls_port,
            dir: scratch_dir("redis"),
            extra,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        wait_for_ping(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port clients are given: the TLS port if there is one.
    pub fn client_port(&self) -> u16 {
        self.tls_port.unwrap_or(self.port)
    }

    /// Whether the process runs (it was not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stops answering but every connection stays open, like a server
    /// cut off by the network (or frozen) rather than dead.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Starts again on the same port with the same directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under the system's temporary directory, unique in this process.
pub(crate) fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-{what}-test-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a test directory");
    dir
}

/// Polls until the server answers PING, or refuses it for want of a password (bounded: a server
/// that never starts fails the test).
pub(crate) fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping(port) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}

/// Polls `ok` until it holds; panics after 30 s.
pub(crate) fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Guards every await in the tests against hanging forever; never used to assert on speed.
pub const HANG: Duration = Duration::from_secs(30);

/// Awaits `fut` or panics with `what` after [`HANG`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
