//! Starting herald processes and talking HTTP to them.

pub mod clients;
pub mod raw;
pub mod tls;

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub use herald_testkit::within;

/// A herald process on an ephemeral port, killed on drop.
pub struct Herald {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    /// Everything the process wrote to stderr, when started with [`Launch::capture_log`].
    log: Option<Arc<Mutex<String>>>,
}

/// How to start herald beyond its arguments.
#[derive(Default)]
pub struct Launch<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Keep stderr (the log) for [`Herald::log`] instead of passing it through.
    pub capture_log: bool,
    /// Run under `ulimit -n` with this open-file limit.
    pub open_files: Option<u64>,
    /// The client for [`Herald::http`] (e.g. one trusting a test CA); default: plain reqwest.
    pub http: Option<reqwest::Client>,
}

impl Herald {
    /// Starts `herald --listen 127.0.0.1:0 <args>` and waits for its "listening" line. The
    /// binary is this build's, or `$HERALD_TEST_BIN` (to run the suite against another build,
    /// e.g. to see a regression test fail on an older one).
    pub async fn start(args: &[&str]) -> Self {
        Self::launch(Launch {
            args,
            ..Launch::default()
        })
        .await
    }

    pub async fn launch(how: Launch<'_>) -> Self {
        let bin = std::env::var("HERALD_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald").to_owned());
        let bin = bin.as_str();
        let mut cmd = match how.open_files {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .args(
                (!how.args.contains(&"--log-level"))
                    .then_some(["--log-level", "warn"])
                    .into_iter()
                    .flatten(),
            )
            .args(how.args)
            .envs(how.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if how.capture_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herald");
        let log = child.stderr.take().map(|stderr| {
            let log = Arc::new(Mutex::new(String::new()));
            let sink = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = sink.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            log
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let Some(line) = within("herald to start", lines.next_line())
            .await
            .expect("read stdout")
        else {
            let status = child.wait().await.expect("exit status");
            // The log task may still be copying the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let log = log.map(|l| l.lock().expect("log").clone());
            panic!("herald exited at start ({status}); log: {log:?}");
        };
        let base = line
            .strip_prefix("herald listening on ")
            .expect("listening line")
            .to_owned();
        Self {
            child,
            base,
            // A fresh connection per request: a pooled keep-alive connection that the server
            // closes during a drain would race the next request and fail it spuriously.
            http: how.http.unwrap_or_else(|| {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("client")
            }),
            log,
        }
    }

    /// The captured log so far (see [`Launch::capture_log`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .expect("started with capture_log")
            .lock()
            .expect("log")
            .clone()
    }

    /// Waits until the captured log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        within(&format!("log line {needle:?}"), async {
            while !self.log().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Runs `herald --listen 127.0.0.1:0 <args>` expecting it to exit by itself; returns its
    /// exit code, stdout and stderr.
    pub async fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
        let out = within(
            "herald to exit",
            Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["--listen", "127.0.0.1:0"])
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run herald");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs herald with `args` (see [`Herald::run_to_exit`]) and checks that the start is
    /// refused: exit status 1 before "listening", a message containing `why`, and no `secret`
    /// anywhere in what it printed.
    pub async fn assert_refused_at_start(args: &[String], why: &str, secret: &str) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = Self::run_to_exit(&args).await;
        assert_eq!(
            code,
            Some(1),
            "{why}: exits with status 1; stderr: {stderr}"
        );
        assert!(
            !stdout.contains("listening"),
            "{why}: refused before listening"
        );
        assert!(stderr.contains(why), "{why}: says why: {stderr}");
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{why}: no secret in {stderr}"
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http", "ws", 1))
    }

    pub fn addr(&self) -> String {
        let (_scheme, addr) = self.base.split_once("://").expect("scheme://addr");
        addr.to_owned()
    }

    /// POSTs JSON text to `path`; returns status and parsed body.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = within(
            "POST",
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send(),
        )
        .await
        .expect("POST");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}")),
        )
    }

    /// Publishes `data` to `channel`, asserting success; returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        let body = serde_json::json!({"channel": channel, "data": data}).to_string();
        let (status, v) = self.post("/v1/publish", &body).await;
        assert_eq!(status, 200, "publish failed: {v}");
        v["offset"].as_u64().expect("offset")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = within("GET", self.http.get(self.url(path)).send())
            .await
            .expect("GET");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// The value of an unlabelled metric, or the sum over all label sets of a labelled one
    /// matching every `label="value"` filter given.
    pub async fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter(|l| filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls a metric until `pred` holds (the server offers no event for it).
    pub async fn wait_metric(
        &self,
        name: &str,
        filters: &[&str],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        within(&format!("metric {name} {filters:?}"), async {
            loop {
                let v = self.metric(name, filters).await;
                if pred(v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Publishes `data` with an idempotency key, retrying 503s and connection errors (as a real
    /// publisher would) until acknowledged; returns (offset, epoch, how many attempts failed).
    pub async fn publish_retrying(
        &self,
        channel: &str,
        data: Value,
        key: &str,
    ) -> (u64, String, u32) {
        let body = serde_json::json!({"channel": channel, "data": data, "idempotency_key": key})
            .to_string();
        within("an acknowledged publish", async {
            let mut failures = 0;
            loop {
                let sent = self
                    .http
                    .post(self.url("/v1/publish"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(resp) = sent {
                    let status = resp.status().as_u16();
                    if let Ok(v) = resp.json::<Value>().await {
                        if status == 200 {
                            let epoch = v["epoch"].as_str().expect("epoch").to_owned();
                            return (v["offset"].as_u64().expect("offset"), epoch, failures);
                        }
                        assert_eq!(status, 503, "only unavailability is retried: {v}");
                    }
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits until `/readyz` says ready (`true`) or unready (`false`).
    pub async fn wait_for_ready(&self, ready: bool) {
        within(&format!("readyz == {ready}"), async {
            while (self.get("/readyz").await.0 == 200) != ready {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
