//! A Sentinel-managed Redis on loopback: one primary, replicas, three Sentinels, each a real
//! process on an ephemeral port, tuned to fail over as fast as Sentinel allows (500 ms to
//! declare the primary down, 2 s failover timeout) so that failover tests stay short.
//! Optionally everything speaks TLS (clients, replication, Sentinels among themselves), the
//! data nodes get extra arguments (e.g. an ACL user) and the Sentinels a password of their own.
//! Every process keeps a plain port for the tests' own redis-cli.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use crate::{RedisServer, TestCerts, cli, eventually, free_port, scratch_dir, wait_for_ping};

/// The name the Sentinels know the primary by.
pub const PRIMARY_NAME: &str = "herald";

/// How to build a [`RedisSentinel`]; the default is plain TCP without passwords.
#[derive(Default)]
pub struct SentinelOptions<'a> {
    pub replicas: usize,
    /// Serve clients over TLS with these certificates (client certificates required); data
    /// nodes replicate and Sentinels talk to each other and to the data nodes over TLS.
    pub tls: Option<&'a TestCerts>,
    /// Extra `redis-server` arguments for every data node.
    pub node_args: Vec<String>,
    /// The Sentinels' own password (`requirepass`; they give it to each other too).
    pub sentinel_password: Option<String>,
    /// Extra lines for every `sentinel.conf` (e.g. an ACL `user` line).
    pub sentinel_conf: Vec<String>,
}

/// A `redis-server --sentinel` process.
pub struct SentinelProcess {
    /// Plain port (for the tests' redis-cli).
    pub port: u16,
    /// The port clients are given: the TLS port when there is one.
    pub client_port: u16,
    password: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelProcess {
    fn start(primary_port: u16, options: &SentinelOptions<'_>) -> Self {
        let port = free_port();
        let dir = scratch_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {PRIMARY_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {PRIMARY_NAME} 500\n\
             sentinel failover-timeout {PRIMARY_NAME} 2000\n\
             sentinel parallel-syncs {PRIMARY_NAME} 2\n",
            dir = dir.display()
        );
        let mut client_port = port;
        if let Some(certs) = options.tls {
            client_port = free_port();
            text.push_str(&format!("tls-port {client_port}\ntls-replication yes\n"));
            for (name, value) in certs.redis_settings("yes") {
                text.push_str(&format!("{name} {value}\n"));
            }
        }
        if let Some(pw) = &options.sentinel_password {
            text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
        }
        for line in &options.sentinel_conf {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).expect("write sentinel.conf");
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
            client_port,
            password: options.sentinel_password.clone(),
            dir,
            child: Some(child),
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        match &self.password {
            Some(pw) => {
                let mut all = vec!["--no-auth-warning", "-a", pw.as_str()];
                all.extend(args);
                cli(self.port, &all)
            }
            None => cli(self.port, args),
        }
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

    /// The primary's client port as this Sentinel names it.
    fn primary_port(&self) -> Option<u16> {
        self.cli(&["sentinel", "get-master-addr-by-name", PRIMARY_NAME])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
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
    tls: bool,
}

impl RedisSentinel {
    pub fn start(replicas: usize) -> Self {
        Self::start_with(SentinelOptions {
            replicas,
            ..SentinelOptions::default()
        })
    }

    pub fn start_with(options: SentinelOptions<'_>) -> Self {
        let node = |replica_of: Option<u16>| {
            let of = replica_of.map(|p| p.to_string());
            let mut args: Vec<&str> = NODE_ARGS.to_vec();
            if let Some(of) = &of {
                args.extend(["--replicaof", "127.0.0.1", of]);
            }
            args.extend(options.node_args.iter().map(String::as_str));
            match options.tls {
                Some(certs) => RedisServer::start_tls(certs, "yes", &args),
                None => RedisServer::start_with(&args),
            }
        };
        let mut nodes = vec![node(None)];
        for _ in 0..options.replicas {
            let of = nodes[0].client_port();
            nodes.push(node(Some(of)));
        }
        // Sentinels learn replicas from the primary's INFO, which they read at once when they
        // connect but then only every 10 s: the replicas must be attached before they start.
        let want = format!("connected_slaves:{}", options.replicas);
        eventually("replicas to attach", || {
            nodes[0].cli(&["info", "replication"]).contains(&want)
                && nodes[1..].iter().all(|r| {
                    r.cli(&["info", "replication"])
                        .contains("master_link_status:up")
                })
        });
        let primary_port = nodes[0].client_port();
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| SentinelProcess::start(primary_port, &options))
            .collect();
        let replicas = options.replicas.to_string();
        eventually("sentinels to know each other and the replicas", || {
            sentinels.iter().all(|s| {
                s.field("num-other-sentinels").as_deref() == Some("2")
                    && s.field("num-slaves").as_deref() == Some(replicas.as_str())
            })
        });
        Self {
            nodes,
            sentinels,
            tls: options.tls.is_some(),
        }
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/herald` (`rediss+sentinel` with
    /// TLS, listing the Sentinels' TLS ports).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+sentinel://{}/{PRIMARY_NAME}", hosts.join(","))
    }

    /// The client port of the primary, as the first answering Sentinel reports it.
    pub fn primary_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(SentinelProcess::primary_port)
            .expect("a sentinel names the primary")
    }

    /// The data node currently the primary.
    pub fn primary(&mut self) -> &mut RedisServer {
        let port = self.primary_port();
        self.nodes
            .iter_mut()
            .find(|n| n.client_port() == port)
            .expect("the primary is one of the nodes")
    }

    /// Waits until every Sentinel names a primary other than `old` (a client port) and that
    /// server says it is the primary; returns its client port.
    pub fn wait_for_failover(&self, old: u16) -> u16 {
        let mut promoted = 0;
        eventually("sentinel to promote a replica", || {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(SentinelProcess::primary_port)
                .collect();
            match ports.first().copied().flatten() {
                Some(p) if p != old && ports.iter().all(|q| *q == Some(p)) => {
                    promoted = p;
                    self.nodes
                        .iter()
                        .find(|n| n.client_port() == p)
                        .is_some_and(|n| n.cli(&["role"]).starts_with("master"))
                }
                _ => false,
            }
        });
        promoted
    }
}
