//! The process as a newcomer runs it: flags as documented, outputs that may go away, and every
//! configuration mistake refused before the node says it is listening.

use std::process::{Output, Stdio};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::support::{Herald, clients::Ws, within};

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.kill_on_drop(true);
    cmd
}

/// Runs herald to completion (for configurations that must be refused).
async fn run(args: &[&str]) -> Output {
    within(
        "herald to exit",
        herald()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("run herald")
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn broken_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Stdio::from(writer)
}

/// Reads `child`'s stderr until the "herald serving" log line; returns the address it names.
async fn serving_addr(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    within("the serving log line", async {
        loop {
            let line = lines.next_line().await.expect("read").expect("a log line");
            assert!(
                !line.contains('\x1b'),
                "colour codes in a log file: {line:?}"
            );
            if line.contains("herald serving") {
                let addr = line.split("addr=").nth(1).expect("addr field");
                return addr.split_whitespace().next().expect("address").to_owned();
            }
        }
    })
    .await
}

/// Reads the "herald listening on" line from `child`'s stdout; returns the address.
async fn listening_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let line = within(
        "the listening line",
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("read")
    .expect("a line");
    line.strip_prefix("herald listening on http://")
        .unwrap_or_else(|| panic!("not the listening line: {line}"))
        .to_owned()
}

async fn healthy(addr: &str) {
    let resp = within("healthz", reqwest::get(format!("http://{addr}/healthz")))
        .await
        .expect("the server answers");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_closed_stdout_does_not_stop_the_server() {
    // `herald --listen 127.0.0.1:0 | head -1`, where head is gone before the line is printed.
    let mut child = herald()
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .stdout(broken_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let addr = serving_addr(&mut child).await;
    healthy(&addr).await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
}

#[tokio::test]
async fn a_broken_stderr_does_not_stop_the_server() {
    // Every request logs at debug: each log line meets the broken pipe.
    let mut child = herald()
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .stdout(Stdio::piped())
        .stderr(broken_pipe())
        .spawn()
        .expect("spawn");
    let addr = listening_addr(&mut child).await;
    for _ in 0..3 {
        healthy(&addr).await;
    }
    assert!(child.try_wait().expect("status").is_none(), "still running");
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = within("exit", child.wait()).await.expect("wait");
    assert_eq!(status.code(), Some(0), "a clean exit, not a panic");
}

#[tokio::test]
async fn boolean_flags_work_bare_and_with_a_value() {
    for (args, allowed) in [
        (
            &["--allow-client-publish", "--history-size", "10"][..],
            true,
        ),
        (&["--allow-client-publish", "true"], true),
        (&["--allow-client-publish=false"], false),
        (&["--allow-client-publish", "false"], false),
    ] {
        let h = Herald::start(args).await;
        let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
        ws.send(json!({"op": "publish", "channel": "a", "data": 1, "id": 1}))
            .await;
        let v = ws.next().await;
        let expected = if allowed { "published" } else { "error" };
        assert_eq!(v["type"], expected, "{args:?}: {v}");
    }
    let out = run(&["--allow-client-publish", "maybe"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn an_invalid_log_filter_exits_2_with_a_message() {
    let out = run(&["--listen", "127.0.0.1:0", "--log-level", "nonsense==="]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing announced");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-level") && err.contains("log filter"),
        "{err}"
    );
}

#[tokio::test]
async fn listen_accepts_host_names() {
    let mut child = herald()
        .args(["--listen", "localhost:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let addr = listening_addr(&mut child).await;
    let port = addr
        .strip_prefix("127.0.0.1:")
        .unwrap_or_else(|| panic!("localhost binds 127.0.0.1: {addr}"));
    healthy(&format!("localhost:{port}")).await;
}

#[tokio::test]
async fn an_unusable_redis_url_is_refused_before_anything_is_announced() {
    for (url, says) in [
        ("redis://:hunter2@127.0.0.1:notaport", "invalid Redis URL"),
        ("redis+cluster://", "lists no hosts"),
        ("redis+sentinel://127.0.0.1:26390", "names the primary"),
    ] {
        let out = run(&["--listen", "127.0.0.1:0", "--redis-url", url]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(out.stdout.is_empty(), "{url}: nothing announced");
        assert!(
            err.contains("redis_url") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
    }
}

#[tokio::test]
async fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let mut child = herald()
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Asserts on every line up to and including the serving line.
    let addr = serving_addr(&mut child).await;
    healthy(&addr).await;
}
