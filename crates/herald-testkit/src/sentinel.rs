//! A Sentinel-managed Redis on loopback: one primary, replicas, three Sentinels, each a real
//! process on an ephemeral port, tuned to fail over as fast as Sentinel allows (500 ms to
//! declare the primary down, 2 s failover timeout) so that failover tests stay short.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{RedisServer, cli, free_port, scratch_dir, wait_for_ping};

/// The name the Sentinels know the primary by.
pub const PRIMARY_NAME: &str = "herald";

/// A `redis-server --sentinel` process.
pub struct SentinelProcess {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelProcess {
    fn start(primary_port: u16) -> Self {
        let port = free_port();
        let dir = scratch_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {PRIMARY_NAME} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {PRIMARY_NAME} 500\n\
                 sentinel failover-timeout {PRIMARY_NAME} 2000\n\
                 sentinel parallel-syncs {PRIMARY_NAME} 2\n",
                dir = dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new(sentinel_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis sentinel (apt-get install redis-sentinel or redis-server)");
        wait_for_ping(port);
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// `SENTINEL MASTER <name>` as field -> value.
    fn master_info(&self) -> Vec<(String, String)> {
        let out = self.cli(&["sentinel", "master", PRIMARY_NAME]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
            .collect()
    }

    fn field(&self, name: &str) -> Option<String> {
        self.master_info()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-sentinel` when installed, else `redis-server` (the same binary, run with `--sentinel`).
fn sentinel_binary() -> &'static str {
    let found = Command::new("redis-sentinel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        "redis-sentinel"
    } else {
        "redis-server"
    }
}

/// Arguments every data node gets: any of them may become the primary, and full resyncs must
/// start at once (Redis 7 waits 5 s for more replicas by default).
const NODE_ARGS: &[&str] = &[
    "--appendonly",
    "no",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
];

/// A primary, `replicas` replicas and three Sentinels that agree on all of them.
pub struct RedisSentinel {
    /// Every data node; which one is the primary changes with failovers ([`Self::primary`]).
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

impl RedisSentinel {
    pub fn start(replicas: usize) -> Self {
        let primary = RedisServer::start_with(NODE_ARGS);
        let mut nodes = vec![primary];
        for _ in 0..replicas {
            let of = nodes[0].port.to_string();
            let mut args: Vec<&str> = NODE_ARGS.to_vec();
            args.extend(["--replicaof", "127.0.0.1", &of]);
            nodes.push(RedisServer::start_with(&args));
        }
        // Sentinels learn replicas from the primary's INFO, which they read at once when they
        // connect but then only every 10 s: the replicas must be attached before they start.
        let want = format!("connected_slaves:{replicas}");
        eventually("replicas to attach", || {
            nodes[0].cli(&["info", "replication"]).contains(&want)
                && nodes[1..].iter().all(|r| {
                    r.cli(&["info", "replication"])
                        .contains("master_link_status:up")
                })
        });
        let primary_port = nodes[0].port;
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| SentinelProcess::start(primary_port))
            .collect();
        let replicas = replicas.to_string();
        eventually("sentinels to know each other and the replicas", || {
            sentinels.iter().all(|s| {
                s.field("num-other-sentinels").as_deref() == Some("2")
                    && s.field("num-slaves").as_deref() == Some(replicas.as_str())
            })
        });
        Self { nodes, sentinels }
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/herald`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{PRIMARY_NAME}", hosts.join(","))
    }

    /// The port of the primary, as the first answering Sentinel reports it.
    pub fn primary_port(&self) -> u16 {
        for s in &self.sentinels {
            let out = s.cli(&["sentinel", "get-master-addr-by-name", PRIMARY_NAME]);
            if let Some(port) = out.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no sentinel names the primary");
    }

    /// The data node currently the primary.
    pub fn primary(&mut self) -> &mut RedisServer {
        let port = self.primary_port();
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the primary is one of the nodes")
    }

    /// Waits until every Sentinel names a primary other than `old` and that server says it is
    /// the primary; returns its port.
    pub fn wait_for_failover(&self, old: u16) -> u16 {
        let mut promoted = 0;
        eventually("sentinel to promote a replica", || {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    s.cli(&["sentinel", "get-master-addr-by-name", PRIMARY_NAME])
                        .lines()
                        .nth(1)
                        .and_then(|p| p.trim().parse().ok())
                })
                .collect();
            match ports.first().copied().flatten() {
                Some(p) if p != old && ports.iter().all(|q| *q == Some(p)) => {
                    promoted = p;
                    cli(p, &["role"]).starts_with("master")
                }
                _ => false,
            }
        });
        promoted
    }
}

/// Polls `ok` until it holds; panics after 30 s.
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
