//! `presence`: what rooms cost. N WebSocket connections, each a different user (an HS256 token
//! minted per user from `--jwt-secret-file`), enter `-c` channels of one namespace (`K` at a
//! time) and stay; then all of them close at once. Each phase ends when the nodes have handed
//! every enter (exit) to their broker (`herald_presence_total` in `/metrics`: no Redis traffic of
//! its own) and, with `--redis-url`, when Redis has been quiet for 200 ms. Reported per phase:
//! connections per second, node CPU per connection (utime+stime of each `--pid`), and with
//! `--redis-url` Redis commands, script calls and Redis CPU per connection; at the end presence
//! must count nobody (`presence_stats`, read after the counters).
//!
//! Run it against a namespace without presence too (`--no-presence`): the difference is what
//! presence adds to a connection's subscribe and hang-up (scripts/bench/presence-cost.sh).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::task::JoinSet;

use super::{Common, Ctx, subscribe_rate::cpu_seconds};
use crate::{
    client::{Conn, End, Resume, Transport, http::HttpConn},
    redis_info, report,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections (one user each).
    #[arg(long, short = 'n', default_value_t = 2000)]
    pub connections: usize,
    /// Connections opening at once.
    #[arg(long, short = 'k', default_value_t = 32)]
    pub concurrency: usize,
    /// Rooms the connections are spread over.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub channels: usize,
    /// Namespace of the rooms (channels are `<namespace>:<prefix>-<i>`).
    #[arg(long, default_value = "room")]
    pub namespace: String,
    /// The namespace has no presence: do not wait for presence counts (a baseline run).
    #[arg(long)]
    pub no_presence: bool,
    /// File with the node's HMAC secret (`jwt_secret_file`): a token is minted per user.
    #[arg(long)]
    pub jwt_secret_file: std::path::PathBuf,
    /// Server process id to measure CPU of (repeat for several nodes on this machine).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// The Redis the nodes use (`redis://host:port`): report what each phase cost it.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Give up waiting for a phase to settle after this long.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    pub settle: Duration,
}

#[derive(Debug, Serialize)]
struct Phase {
    /// From the first connect (or the first close) until every node had handed the enters (or
    /// exits) to its broker.
    seconds: f64,
    per_s: f64,
    server_cpu_us_per_connection: Option<f64>,
    redis_commands_per_connection: Option<f64>,
    redis_scripts_per_connection: Option<f64>,
    redis_cpu_us_per_connection: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    urls: Vec<String>,
    namespace: String,
    presence: bool,
    connections: usize,
    channels: usize,
    concurrency: usize,
    failed: BTreeMap<String, u64>,
    enter: Phase,
    exit: Phase,
}

fn token(secret: &[u8], user: &str) -> Result<String, String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": user, "exp": exp, "channels": ["*"],
        "info": {"name": user}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot sign a token: {e}"))
}

/// Connects user `i` and waits for `subscribed`; the connection then drains what it receives
/// (join messages of the others) in its own task until aborted.
async fn enter(ctx: &Ctx, args: &Args, secret: &[u8], i: usize) -> Result<Conn, End> {
    let target = &ctx.targets[i % ctx.targets.len()];
    let channel = format!("{}:{}-{}", args.namespace, ctx.prefix, i % args.channels);
    let token = token(secret, &format!("{}-u{i}", ctx.prefix)).map_err(End::Protocol)?;
    let mut conn = Conn::open(
        Transport::Ws,
        &ctx.dialer,
        (target, i % ctx.targets.len()),
        &channel,
        &Resume::default(),
        Some(&token),
        None,
    )
    .await?;
    conn.await_subscribed().await?;
    Ok(conn)
}

/// Connections presence counts in every room, summed (asked of the first node: presence is
/// the same from every node).
async fn counted(ctx: &Ctx, args: &Args) -> Result<u64, String> {
    let target = &ctx.targets[0];
    let mut http = HttpConn::new(target, ctx.common.api_key.as_deref());
    let mut total = 0;
    for c in 0..args.channels {
        let path = format!(
            "/v1/channels/{}:{}-{c}/presence_stats",
            args.namespace, ctx.prefix
        );
        let (status, body) = http
            .get(&ctx.dialer, target, &path)
            .await
            .map_err(|e| format!("presence_stats: {e}"))?;
        if status != 200 {
            return Err(format!(
                "presence_stats: {status} {}",
                String::from_utf8_lossy(body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("presence_stats: {e}"))?;
        total += v["clients"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// `herald_presence_total{op=...}` summed over every node (both outcomes).
async fn handed(ctx: &Ctx, op: &str) -> Result<u64, String> {
    let needle = format!("herald_presence_total{{op=\"{op}\"");
    let mut total = 0;
    for target in ctx.targets.iter() {
        let mut http = HttpConn::new(target, None);
        let (status, body) = http
            .get(&ctx.dialer, target, "/metrics")
            .await
            .map_err(|e| format!("/metrics: {e}"))?;
        if status != 200 {
            return Err(format!("/metrics: {status}"));
        }
        total += String::from_utf8_lossy(body)
            .lines()
            .filter(|l| l.starts_with(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// Waits until the nodes have handed `want` more `op`s to their broker than `before`.
async fn wait_handed(ctx: &Ctx, args: &Args, op: &str, want: u64) -> Result<(), String> {
    if args.no_presence {
        return Ok(());
    }
    let deadline = Instant::now() + args.settle;
    loop {
        let n = handed(ctx, op).await?;
        if n >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the nodes handed {n} {op}s to their broker, not {want}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn redis_counters(args: &Args) -> Result<Option<redis_info::Counters>, String> {
    match &args.redis_url {
        None => Ok(None),
        Some(url) => redis_info::quiescent(url, Duration::from_millis(200), args.settle)
            .await
            .map(Some),
    }
}

fn cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

fn phase(
    elapsed: Duration,
    n: usize,
    cpu: Option<f64>,
    redis: Option<(redis_info::Counters, redis_info::Counters)>,
) -> Phase {
    let seconds = elapsed.as_secs_f64().max(1e-6);
    let per = |v: f64| (n > 0).then(|| report::round3(v / n as f64));
    Phase {
        seconds: report::round3(seconds),
        per_s: report::round3(n as f64 / seconds),
        server_cpu_us_per_connection: cpu.and_then(|c| per(c * 1e6)),
        redis_commands_per_connection: redis
            .and_then(|(a, b)| per((b.commands - a.commands) as f64)),
        redis_scripts_per_connection: redis.and_then(|(a, b)| per((b.scripts - a.scripts) as f64)),
        redis_cpu_us_per_connection: redis.and_then(|(a, b)| per((b.cpu_s - a.cpu_s) * 1e6)),
    }
}

pub async fn run(args: Args) -> Result<bool, String> {
    if args.connections == 0 || args.concurrency == 0 || args.channels == 0 {
        return Err("--connections, --concurrency and --channels must be at least 1".into());
    }
    let secret = std::fs::read_to_string(&args.jwt_secret_file)
        .map_err(|e| format!("{}: {e}", args.jwt_secret_file.display()))?;
    let secret: Arc<[u8]> = Arc::from(secret.trim_end_matches(['\n', '\r']).as_bytes());
    for &pid in &args.pids {
        if cpu_seconds(pid).is_none() {
            return Err(format!("cannot read /proc/{pid}/stat"));
        }
    }
    let ctx = Arc::new(Ctx::new(args.common.clone()).await?);
    let args = Arc::new(args);
    eprintln!(
        "presence: {} users into {} rooms of `{}` ({} at once), presence: {}",
        args.connections, args.channels, args.namespace, args.concurrency, !args.no_presence
    );

    // Enter: K workers open connections; each open connection drains in a task of its own.
    let enters_before = if args.no_presence {
        0
    } else {
        handed(&ctx, "enter").await?
    };
    let exits_before = if args.no_presence {
        0
    } else {
        handed(&ctx, "exit").await?
    };
    let redis_before = redis_counters(&args).await?;
    let cpu_before = cpu(&args.pids);
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (ctx, args, secret, next) = (ctx.clone(), args.clone(), secret.clone(), next.clone());
        workers.spawn(async move {
            let mut held = Vec::new();
            let mut failed: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= args.connections {
                    return (held, failed);
                }
                match enter(&ctx, &args, &secret, i).await {
                    Ok(mut conn) => held.push(tokio::spawn(async move {
                        while conn.next_batch(&mut |_| {}).await.is_ok() {}
                    })),
                    Err(e) => *failed.entry(e.kind()).or_default() += 1,
                }
            }
        });
    }
    let mut conns = Vec::new();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(done) = workers.join_next().await {
        let (held, f) = done.map_err(|e| format!("worker: {e}"))?;
        conns.extend(held);
        for (k, v) in f {
            *failed.entry(k).or_default() += v;
        }
    }
    let entered = conns.len();
    wait_handed(&ctx, &args, "enter", enters_before + entered as u64).await?;
    let enter_elapsed = start.elapsed();
    let cpu_entered = cpu(&args.pids);
    let redis_entered = redis_counters(&args).await?;

    // Exit: every connection at once.
    let start = Instant::now();
    for c in &conns {
        c.abort();
    }
    for c in conns {
        let _ = c.await;
    }
    wait_handed(&ctx, &args, "exit", exits_before + entered as u64).await?;
    let exit_elapsed = start.elapsed();
    let cpu_after = cpu(&args.pids);
    let redis_after = redis_counters(&args).await?;
    if !args.no_presence {
        let left = counted(&ctx, &args).await?;
        if left != 0 {
            failed.insert(format!("presence still counts {left}"), 1);
        }
    }

    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let report = Report {
        scenario: "presence",
        ok: failed.is_empty(),
        urls: ctx.common.urls.clone(),
        namespace: args.namespace.clone(),
        presence: !args.no_presence,
        connections: args.connections,
        channels: args.channels,
        concurrency: args.concurrency,
        failed,
        enter: phase(
            enter_elapsed,
            entered,
            diff(cpu_before, cpu_entered),
            redis_before.zip(redis_entered),
        ),
        exit: phase(
            exit_elapsed,
            entered,
            diff(cpu_entered, cpu_after),
            redis_entered.zip(redis_after),
        ),
    };
    let mut human = String::from("--- presence ---\n");
    for (name, p) in [("enter", &report.enter), ("exit", &report.exit)] {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |c| format!("{c:.1}"));
        human.push_str(&format!(
            "{name}: {entered} in {:.2}s = {:.0}/s; per connection: node CPU {} us, redis {} commands in {} scripts, redis CPU {} us\n",
            p.seconds,
            p.per_s,
            show(p.server_cpu_us_per_connection),
            show(p.redis_commands_per_connection),
            show(p.redis_scripts_per_connection),
            show(p.redis_cpu_us_per_connection),
        ));
    }
    for (k, v) in &report.failed {
        human.push_str(&format!("  failed: {v} x {k}\n"));
    }
    human.push_str(&format!(
        "result: {}\n",
        if report.ok { "OK" } else { "FAIL" }
    ));
    report::emit(&human, &report);
    Ok(report.ok)
}
