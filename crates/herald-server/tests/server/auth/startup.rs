//! What an operator sees at start: refusals of unsafe settings with a clear message, the one
//! warning of an open server, and `herald token`.

use std::process::Command;

use serde_json::json;

use super::{SECRET, TempDir};
use crate::support::{Herald, Launch, clients::Sse};

/// Runs the binary to completion: (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_JWT_SECRET")
        .envs(env.iter().copied())
        .output()
        .expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unsafe_settings_are_refused_at_start_with_a_clear_message() {
    let dir = TempDir::new("startup");
    let short = dir.file("short", "only-31-bytes-of-secret-xxxxxxx\n");
    let user = dir.file("user.toml", "[namespaces.user]\nuser_channels = true\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--jwt-secret", "too-short"], "at least 32"),
        (
            vec!["--jwt-secret-file", short.to_str().expect("utf8")],
            "at least 32",
        ),
        (
            vec!["--jwt-secret", SECRET, "--jwks-file", "x.json"],
            "only one",
        ),
        (
            vec!["--jwt-public-key-file", "/nonexistent/key.pem"],
            "/nonexistent/key.pem",
        ),
        (
            vec!["--config", user.to_str().expect("utf8")],
            "needs a subscriber key",
        ),
        (
            vec!["--jwt-cookie", "bad;name", "--jwt-secret", SECRET],
            "jwt_cookie",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, stderr) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should say {needle:?}: {stderr}"
        );
        assert!(
            !stderr.contains("too-short"),
            "the secret is not echoed: {stderr}"
        );
    }
}

#[tokio::test]
async fn an_open_server_says_so_in_one_warning_and_a_secured_one_does_not() {
    let warning = "every channel is public";
    let start = |args: &'static [&'static str]| {
        Herald::launch(Launch {
            args,
            capture_log: true,
            ..Launch::default()
        })
    };
    let open = start(&["--log-level", "info"]).await;
    let secured = start(&["--log-level", "info", "--jwt-secret", SECRET]).await;
    // One line lists every door left open; a secured node still has others (no api_keys...).
    open.wait_log(warning).await;
    secured.wait_log("this node is open").await;
    let open_text = open.log();
    let lines: Vec<&str> = open_text.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(lines.len(), 1, "{open_text}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    let secured_text = secured.log();
    assert!(!secured_text.contains(warning), "{secured_text}");
}

#[tokio::test]
async fn herald_token_mints_a_token_the_server_accepts() {
    let dir = TempDir::new("mint");
    let secret = dir.file("secret", &format!("{SECRET}\n"));
    let secret = secret.to_str().expect("utf8");
    let (code, token, stderr) = run(
        &[
            "token",
            "--sub",
            "alice",
            "--channels",
            "news.*",
            "--ttl",
            "1h",
            "--jwt-secret-file",
            secret,
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let token = token.trim();
    let node = Herald::start(&["--jwt-secret-file", secret]).await;
    let mut sse = Sse::connect(
        &node.url(&format!("/v1/sse?channel=news.a&token={token}")),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    node.publish("news.a", json!("minted")).await;
    assert_eq!(sse.next_message().await.json(), "minted");
    let refused = Sse::connect(
        &node.url(&format!("/v1/sse?channel=newsletter&token={token}")),
        None,
    )
    .await;
    assert_eq!(refused.status, 403);

    let (code, _, stderr) = run(&["token", "--sub", "alice"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no jwt_secret"), "{stderr}");
    let (code, _, stderr) = run(
        &["token", "--channels", "ne*ws", "--jwt-secret-file", secret],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--channels"), "{stderr}");
    let (code, help, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        help.contains("herald token"),
        "--help mentions the subcommand"
    );
    let (code, help, _) = run(&["--help"], &[("HERALD_JWT_SECRET", SECRET)]);
    assert_eq!(code, 0);
    assert!(
        !help.contains(SECRET),
        "--help never shows a secret from the environment"
    );
}
