//! The deployment's other processes, run from Debian's packages on ephemeral ports: redis-server,
//! nginx (with deploy/nginx/nginx.conf), prometheus (with deploy/prometheus/prometheus.yml), and a
//! tiny DNS server that plays Docker's embedded DNS for nginx's `resolver`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{poll, repo_file};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-deploy-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A port free on every one of `ips` (so several nodes can share it, one per loopback address).
pub fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// Sends `kill -<sig> <pid>`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Polls (blocking) until something accepts TCP connections on `addr`.
fn wait_for_port(what: &str, addr: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status:?} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child: `sig` first, then SIGKILL if it lingers.
fn stop(child: &mut Child, sig: &str) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), sig);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = child.try_wait() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }
}

/// redis-server without persistence on an ephemeral port (never 6379).
pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        let addr = format!("127.0.0.1:{port}");
        wait_for_port("redis-server", &addr, &mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(&addr) {
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn ping(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && &buf == b"+PONG\r\n"
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS server on 127.0.0.1 that answers every A query with `addrs` (like Docker's embedded DNS
/// answers a service name with one record per replica) and every other query with no records.
pub struct Dns {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    pub async fn start(addrs: Vec<Ipv4Addr>) -> Self {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS");
        let port = sock.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(answer) = dns_answer(&buf[..n], &addrs) {
                    let _ = sock.send_to(&answer, peer).await;
                }
            }
        });
        Self { port, task }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one DNS query: the question echoed, then A records (TTL 1 s) for A/IN queries.
fn dns_answer(query: &[u8], addrs: &[Ipv4Addr]) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // Walk the question's name (uncompressed labels), then QTYPE and QCLASS.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + query[i] as usize;
    }
    let qend = i + 5;
    let question = query.get(12..qend)?;
    let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
    let qclass = u16::from_be_bytes([query[i + 3], query[i + 4]]);
    let records: &[Ipv4Addr] = if qtype == 1 && qclass == 1 {
        addrs
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81 | (query[2] & 0x01), 0x80]); // response, RD copied, RA, NOERROR
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&(records.len() as u16).to_be_bytes()); // ANCOUNT
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xc0, 12]); // name: pointer to the question's name
        out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Replaces `from` (which must occur exactly once) with `to`.
pub fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur exactly once in the config"
    );
    text.replacen(from, to, 1)
}

/// Debian's nginx running deploy/nginx/nginx.conf with only the documented lines substituted:
/// the listen address, the resolver, the NAME:PORT of the herald nodes, and the HTTPS listen
/// address and certificate files. The certificate is the self-signed one
/// deploy/nginx/selfsigned-cert.sh makes (as in docker-compose.yml).
pub struct Nginx {
    pub port: u16,
    pub tls_port: u16,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// nginx whose resolver is the DNS server on `dns_port`; nodes are `herald:<node_port>`.
    pub fn start(dns_port: u16, node_port: u16) -> Self {
        let dir = TempDir::new("nginx");
        let (port, tls_port) = (free_port(), free_port());
        let tls = NginxTls::selfsigned(&dir, tls_port);
        let conf = nginx_conf(port, dns_port, node_port, &tls);
        let conf_path = dir.path("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut child = Command::new(nginx_bin())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir.0)
            .arg("-g")
            .arg(format!(
                "daemon off; pid {};",
                dir.path("nginx.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx (apt-get install nginx)");
        wait_for_port("nginx", &format!("127.0.0.1:{port}"), &mut child);
        wait_for_port("nginx (TLS)", &format!("127.0.0.1:{tls_port}"), &mut child);
        Self {
            port,
            tls_port,
            child,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.tls_port)
    }

    /// The self-signed certificate nginx serves (PEM).
    pub fn certificate(&self) -> Vec<u8> {
        std::fs::read(self.dir.path("certs/tls.crt")).expect("tls.crt")
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its workers too (SIGKILL would orphan them).
        stop(&mut self.child, "TERM");
    }
}

/// nginx's HTTPS listener: its port and certificate files.
pub struct NginxTls {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NginxTls {
    /// A self-signed pair in `dir/certs`, made by deploy/nginx/selfsigned-cert.sh.
    pub fn selfsigned(dir: &TempDir, port: u16) -> Self {
        let certs = dir.path("certs");
        let out = Command::new("sh")
            .arg(super::repo_root().join("deploy/nginx/selfsigned-cert.sh"))
            .env("HERALD_CERT_DIR", &certs)
            .output()
            .expect("run selfsigned-cert.sh (apt-get install openssl)");
        assert!(
            out.status.success(),
            "selfsigned-cert.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            port,
            cert: certs.join("tls.crt"),
            key: certs.join("tls.key"),
        }
    }
}

/// deploy/nginx/nginx.conf with the documented substitutions.
pub fn nginx_conf(listen_port: u16, dns_port: u16, node_port: u16, tls: &NginxTls) -> String {
    let conf = repo_file("deploy/nginx/nginx.conf");
    let conf = substitute(
        &conf,
        "listen 8443 ssl http2;",
        &format!("listen 127.0.0.1:{} ssl http2;", tls.port),
    );
    let conf = substitute(
        &conf,
        "ssl_certificate /etc/nginx/certs/tls.crt;",
        &format!("ssl_certificate {};", tls.cert.display()),
    );
    let conf = substitute(
        &conf,
        "ssl_certificate_key /etc/nginx/certs/tls.key;",
        &format!("ssl_certificate_key {};", tls.key.display()),
    );
    let conf = substitute(
        &conf,
        "listen 8080;",
        &format!("listen 127.0.0.1:{listen_port};"),
    );
    let conf = substitute(
        &conf,
        "resolver 127.0.0.11 ",
        &format!("resolver 127.0.0.1:{dns_port} "),
    );
    substitute(
        &conf,
        "set $herald_upstream herald:8080;",
        &format!("set $herald_upstream herald:{node_port};"),
    )
}

pub fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Debian's prometheus with deploy/prometheus/prometheus.yml, whose `herald` job's service
/// discovery is replaced by `static_configs` listing `targets`; everything else as in the file.
pub struct Prometheus {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[String]) -> Self {
        let dir = TempDir::new("prometheus");
        let config_path = dir.path("prometheus.yml");
        let port = free_port();
        std::fs::write(&config_path, prometheus_config(targets, port)).expect("write config");
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (apt-get install prometheus)");
        wait_for_port("prometheus", &format!("127.0.0.1:{port}"), &mut child);
        let me = Self {
            port,
            child,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let ready = me.url("/-/ready");
        poll("prometheus to be ready", || async {
            matches!(http.get(&ready).send().await, Ok(r) if r.status() == 200).then_some(())
        })
        .await;
        me
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus/prometheus.yml with job `herald`'s `dns_sd_configs` replaced by
/// `static_configs: [{targets}]`, and the self-scrape target `localhost:9090` pointed at the port
/// this instance listens on. Nothing else changes.
pub fn prometheus_config(targets: &[String], self_port: u16) -> String {
    let text = repo_file("deploy/prometheus/prometheus.yml");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("prometheus.yml parses");
    let jobs = doc["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let mut found = false;
    for job in jobs.iter_mut() {
        let map = job.as_mapping_mut().expect("a scrape config");
        match map.get("job_name").and_then(|v| v.as_str()) {
            Some("herald") => {
                assert!(
                    map.remove("dns_sd_configs").is_some(),
                    "job herald discovers nodes with dns_sd_configs"
                );
                let statics: serde_yaml::Value =
                    serde_yaml::from_str(&format!("[{{targets: [{}]}}]", targets.join(", ")))
                        .expect("static_configs");
                map.insert("static_configs".into(), statics);
                found = true;
            }
            Some("prometheus") => {
                let statics: serde_yaml::Value =
                    serde_yaml::from_str(&format!("[{{targets: ['127.0.0.1:{self_port}']}}]"))
                        .expect("static_configs");
                map.insert("static_configs".into(), statics);
            }
            _ => {}
        }
    }
    assert!(found, "prometheus.yml has a `herald` job");
    serde_yaml::to_string(&doc).expect("serialize")
}
