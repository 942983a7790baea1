//! Starting herald processes and talking HTTP to them.

pub mod clients;

use std::{process::Stdio, time::Duration};

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
}

impl Herald {
    /// Starts `herald --listen 127.0.0.1:0 <args>` and waits for its "listening" line.
    pub async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = within("herald to start", lines.next_line())
            .await
            .expect("read stdout")
            .expect("a line");
        let base = line
            .strip_prefix("herald listening on ")
            .expect("listening line")
            .to_owned();
        Self {
            child,
            base,
            // A fresh connection per request: a pooled keep-alive connection that the server
            // closes during a drain would race the next request and fail it spuriously.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
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
