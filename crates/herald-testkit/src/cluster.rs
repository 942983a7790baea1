//! A Redis Cluster on loopback: three masters, optionally a replica each, optionally serving
//! clients over TLS (the cluster bus and replication then use TLS too) with extra arguments for
//! every node (e.g. an ACL user). Every node keeps a plain port for the tests' own redis-cli.

use std::process::{Command, Stdio};

use crate::{RedisServer, TestCerts, eventually, free_port};

/// How to build a [`RedisCluster`]; the default is three masters, no replica, plain TCP.
#[derive(Default)]
pub struct ClusterOptions<'a> {
    /// Replicas per master.
    pub replicas: usize,
    /// Serve clients over TLS with these certificates (client certificates required).
    pub tls: Option<&'a TestCerts>,
    /// Extra `redis-server` arguments for every node.
    pub args: Vec<String>,
    /// `cluster-node-timeout` in ms (default 2000): how long before a silent master is failed
    /// over to its replica.
    pub node_timeout_ms: Option<u32>,
}

/// Three masters with all slots assigned, and their replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    tls: bool,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions<'_>) -> Self {
        let count = 3 * (1 + options.replicas);
        let timeout = options.node_timeout_ms.unwrap_or(2000).to_string();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|i| {
                let conf = format!("nodes-{i}.conf");
                // The bus port defaults to the client port + 10000, past 65535 for half the
                // ephemeral range: give it a port of its own.
                let bus = free_port().to_string();
                let mut args = vec![
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-port",
                    &bus,
                    // Full resyncs start at once (Redis 7 waits 5 s for more replicas).
                    "--repl-diskless-sync",
                    "yes",
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                args.extend(options.args.iter().map(String::as_str));
                match options.tls {
                    Some(certs) => {
                        args.extend(["--tls-cluster", "yes"]);
                        RedisServer::start_tls(certs, "yes", &args)
                    }
                    None => RedisServer::start_with(&args),
                }
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &options.replicas.to_string()])
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster create failed");
        let cluster = Self {
            nodes,
            tls: options.tls.is_some(),
        };
        let replicas = format!("connected_slaves:{}", options.replicas);
        eventually("the cluster to be ok with every replica in sync", || {
            cluster.nodes.iter().all(|n| {
                let info = n.cli(&["info", "replication"]);
                n.cli(&["cluster", "info"]).contains("cluster_state:ok")
                    && if info.contains("role:master") {
                        info.contains(&replicas) && !info.contains("state=wait_bgsave")
                    } else {
                        info.contains("master_link_status:up")
                    }
            })
        });
        cluster
    }

    /// `redis+cluster://` (`rediss+cluster://` with TLS) listing every node's client port.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port()))
            .collect();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// The plain port of the master serving `key`'s slot, as the first running node sees it.
    pub fn owner_of(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.running())
            .expect("a running node");
        let slot: u16 = node
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("keyslot");
        let shards = node.cli(&["cluster", "slots"]);
        // redis-cli prints each range as: start, end, ip, port, id, ... one value per line.
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        for w in lines.windows(4) {
            if let (Ok(start), Ok(end), Ok(port)) = (
                w[0].parse::<u16>(),
                w[1].parse::<u16>(),
                w[3].parse::<u16>(),
            ) && w[2] == "127.0.0.1"
                && (start..=end).contains(&slot)
            {
                return port;
            }
        }
        panic!("no owner for slot {slot}: {shards}");
    }

    /// One channel name (`<prefix>-<i>`) on each master, so a test covers every shard.
    pub fn channels_on_every_shard(&self, prefix: &str) -> Vec<String> {
        let mut owners = std::collections::HashSet::new();
        let channels: Vec<String> = (0..1000)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|name| owners.insert(self.owner_of(&format!("herald:{{{name}}}"))))
            .take(3)
            .collect();
        assert_eq!(channels.len(), 3, "channels cover every shard");
        channels
    }

    /// The node listening on plain port `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// Waits until `key`'s slot is served by a master other than `old` (a replica was
    /// promoted) and every running node says the cluster is ok; returns the new owner's port.
    pub fn wait_for_failover(&self, key: &str, old: u16) -> u16 {
        let mut owner = old;
        eventually("the cluster to promote a replica", || {
            owner = self.owner_of(key);
            owner != old
                && self
                    .nodes
                    .iter()
                    .filter(|n| n.running())
                    .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        });
        owner
    }
}
