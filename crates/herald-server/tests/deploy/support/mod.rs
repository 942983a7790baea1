//! Starting herald nodes and the deployment's other processes, and talking HTTP to them.

pub mod clients;
pub mod procs;
pub mod subscriber;

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub use herald_testkit::within;

/// Polls `probe` until it returns `Some` (for processes that offer no event to await).
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    within(what, async {
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// The repository root (the workspace that holds deploy/ and docker-compose.yml).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A file of the repository, as text.
pub fn repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A herald process, killed on drop. It can be stopped and started again on the same address.
pub struct Herald {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    args: Vec<String>,
}

impl Herald {
    /// `herald --listen 127.0.0.1:0 <args>`.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", args).await
    }

    /// `herald --listen <listen> <args>`; waits for its "listening" line.
    pub async fn start_at(listen: &str, args: &[&str]) -> Self {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.splice(0..0, ["--listen".to_owned(), listen.to_owned()]);
        let (child, base) = Self::spawn(&args).await;
        Self {
            child,
            base,
            http: reqwest::Client::new(),
            args,
        }
    }

    async fn spawn(args: &[String]) -> (Child, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--log-level", "warn"])
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
            .expect("a 'listening' line (did the port stay busy?)");
        let base = line
            .strip_prefix("herald listening on ")
            .expect("listening line")
            .to_owned();
        (child, base)
    }

    /// Starts the process again on the address it had (after it exited), same options.
    pub async fn restart(&mut self) {
        let mut args = self.args.clone();
        args[1] = self.addr();
        let (child, base) = Self::spawn(&args).await;
        assert_eq!(base, self.base, "restarted on the same address");
        self.child = child;
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

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = within("GET", self.http.get(self.url(path)).send())
            .await
            .expect("GET");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Publishes `data` to `channel` directly on this node, asserting success; returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        let body = serde_json::json!({"channel": channel, "data": data});
        let resp = within(
            "publish",
            self.http.post(self.url("/v1/publish")).json(&body).send(),
        )
        .await
        .expect("publish");
        assert_eq!(resp.status(), 200, "publish failed");
        let v: Value = resp.json().await.expect("JSON");
        v["offset"].as_u64().expect("offset")
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
    pub async fn wait_metric(&self, name: &str, filters: &[&str], pred: impl Fn(f64) -> bool) {
        poll(&format!("metric {name} {filters:?}"), || async {
            pred(self.metric(name, filters).await).then_some(())
        })
        .await
    }

    /// Waits until `/readyz` says ready (`true`) or unready (`false`).
    pub async fn wait_for_ready(&self, ready: bool) {
        poll(&format!("readyz == {ready}"), || async {
            let ok = matches!(self.http.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200);
            (ok == ready).then_some(())
        })
        .await
    }

    /// Sends SIGTERM (starts the drain).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        procs::signal(pid, "TERM");
    }

    /// Waits for the process to exit; asserts it exited cleanly.
    pub async fn wait_exit(&mut self) {
        let status = within("herald to exit", self.child.wait())
            .await
            .expect("wait");
        assert!(status.success(), "herald exited with {status:?}");
    }
}
