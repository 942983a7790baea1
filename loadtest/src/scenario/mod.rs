//! The scenarios, and what they share: node URLs, source addresses, credentials, and the
//! subscriber fleet.

pub mod fanout;
pub mod idle;
pub mod presence;
pub mod publish;
pub mod resume_storm;
pub mod subscribe_rate;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, Semaphore, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    client::Transport,
    net::{Dialer, Flavor, Target},
    payload,
    stats::{LatencySink, RateBuckets},
    subscriber::{self, Fleet, Progress, SubResult},
};

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Node base URL; repeat for several nodes (clients are spread round-robin).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// Local address to bind client sockets to; repeat (127.0.0.2, 127.0.0.3, ...) to get
    /// past the ~28k ephemeral ports per source address.
    #[arg(long = "source-ip")]
    pub source_ips: Vec<IpAddr>,
    /// Publisher API key, sent as `authorization: Bearer KEY`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Subscriber token (JWT), sent as `authorization: Bearer TOKEN` on SSE/WebSocket requests.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the subscriber token from this file instead (keeps it out of process listings).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Prefix of the channel names this run uses (default: `lt-` + random, so runs never see
    /// each other's history).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Retry a publish answered 503 or failed by IO this many times, on the next node, with
    /// the same idempotency key (keys are sent only when this is above 0).
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Server protocol: `herald`, or `nchan` (nginx + nchan, for side-by-side benchmarks:
    /// `/pub?id=` and `/sub/CHANNEL`; the payload `seq` stands in for offsets).
    #[arg(long = "target", value_enum, default_value = "herald")]
    pub flavor: Flavor,
    /// Timeout of one TCP connect (and of its TLS handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// CA certificates (PEM) to trust for `https://` targets (a self-signed certificate itself
    /// will do).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With `--transport sse-h2`: SSE streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub h2_streams: usize,
}

/// Resolved common options.
#[derive(Debug)]
pub struct Ctx {
    pub common: Common,
    pub targets: Arc<Vec<Target>>,
    pub dialer: Arc<Dialer>,
    pub tls: Option<crate::net::Tls>,
    pub prefix: String,
}

impl Ctx {
    pub async fn new(mut common: Common) -> Result<Self, String> {
        if let Some(path) = common.token_file.take() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            common.token = Some(text.trim().to_owned());
        }
        if common.urls.is_empty() {
            return Err("at least one --url is needed".into());
        }
        let mut targets = Vec::new();
        for u in &common.urls {
            let mut t = Target::resolve(u).await?;
            t.flavor = common.flavor;
            targets.push(t);
        }
        let tls = common
            .tls_ca
            .as_deref()
            .map(crate::net::Tls::from_ca_file)
            .transpose()?;
        let prefix = match &common.channel_prefix {
            Some(p) => {
                if p.is_empty()
                    || !p.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b'+')
                    })
                {
                    return Err(format!(
                        "--channel-prefix {p:?}: use A-Z a-z 0-9 _ - . : @ / = +"
                    ));
                }
                p.clone()
            }
            None => format!("lt-{:08x}", rand::random::<u32>()),
        };
        Ok(Self {
            dialer: Arc::new(Dialer::new(
                common.source_ips.clone(),
                common.connect_timeout,
                tls.clone(),
            )),
            tls,
            targets: Arc::new(targets),
            prefix,
            common,
        })
    }

    pub fn channel_names(&self, n: usize) -> Arc<Vec<Arc<str>>> {
        Arc::new(
            (0..n)
                .map(|i| Arc::from(format!("{}-{i}", self.prefix)))
                .collect(),
        )
    }
}

/// A running set of subscribers.
#[derive(Debug)]
pub struct Running {
    pub fleet: Arc<Fleet>,
    pub tasks: Vec<JoinHandle<SubResult>>,
    pub storm: watch::Sender<u64>,
    pub total: usize,
}

/// Starts `per_channel` subscribers on each channel. Subscriber j of channel c starts on node
/// (j + c) mod nodes, so every channel is spread over every node.
pub fn spawn_fleet(
    ctx: &Ctx,
    transport: Transport,
    channels: &Arc<Vec<Arc<str>>>,
    per_channel: usize,
    rate_seconds: usize,
) -> Running {
    let total = channels.len() * per_channel;
    let (storm, storm_rx) = watch::channel(0u64);
    let fleet = Arc::new(Fleet {
        dialer: Dialer::new(
            ctx.common.source_ips.clone(),
            ctx.common.connect_timeout,
            ctx.tls.clone(),
        ),
        h2: (transport == Transport::SseH2)
            .then(|| crate::client::h2sse::H2Pool::new(ctx.common.h2_streams)),
        targets: ctx.targets.to_vec(),
        token: ctx.common.token.clone(),
        transport,
        latency: LatencySink::new(64),
        rates: RateBuckets::new(payload::now_micros(), rate_seconds),
        cancel: CancellationToken::new(),
        connect_gate: Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1))),
        settled: AtomicUsize::new(0),
        subscribed: AtomicUsize::new(0),
        settled_notify: Notify::new(),
        storm: storm_rx,
        progress: (0..total).map(|_| Progress::default()).collect(),
    });
    let nodes = fleet.targets.len();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (c, j) = (i % channels.len(), i / channels.len());
        let first_target = (j + c) % nodes;
        tasks.push(tokio::spawn(subscriber::run(
            fleet.clone(),
            i,
            first_target,
            c,
            channels[c].clone(),
        )));
    }
    Running {
        fleet,
        tasks,
        storm,
        total,
    }
}

impl Running {
    /// Waits until every subscriber is subscribed or has failed, or `timeout`. Returns how
    /// many are subscribed.
    pub async fn wait_settled(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last_log = Instant::now();
        loop {
            let settled = self.fleet.settled.load(Ordering::Acquire);
            let subscribed = self.fleet.subscribed.load(Ordering::Relaxed);
            if settled >= self.total {
                return subscribed;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "warning: only {subscribed}/{} subscribed after {timeout:?}; going on",
                    self.total
                );
                return subscribed;
            }
            if last_log.elapsed() >= Duration::from_secs(2) {
                eprintln!(
                    "subscribing: {subscribed}/{} ({settled} settled)",
                    self.total
                );
                last_log = Instant::now();
            }
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                self.fleet.settled_notify.notified(),
            )
            .await;
        }
    }

    /// Stops every subscriber and collects the results.
    pub async fn finish(self) -> (Arc<Fleet>, Vec<SubResult>) {
        self.fleet.cancel.cancel();
        let mut results = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            match t.await {
                Ok(r) => results.push(r),
                Err(_) => results.push(SubResult {
                    fail: Some("subscriber task panicked".into()),
                    ..SubResult::default()
                }),
            }
        }
        (self.fleet, results)
    }
}

/// Prints deliveries per second to stderr every few seconds while a run publishes, so a long
/// run shows it is alive; stops when the returned guard is dropped.
pub fn progress_ticker(fleet: Arc<Fleet>) -> tokio_util::sync::DropGuard {
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                // Half a second off the second boundaries, when subscribers have flushed the
                // previous second's counts.
                () = tokio::time::sleep_until((started + Duration::from_millis(5500 + 5000 * ticks)).into()) => {}
            }
            // Subscribers flush their counts when their second changes, so the last complete
            // second can still read a little low: a liveness sign; the report is exact.
            let last = fleet.rates.last_complete(payload::now_micros());
            eprintln!(
                "  t={:.0}s deliveries/s {}",
                started.elapsed().as_secs_f64(),
                last.map_or("-".to_owned(), |n| n.to_string())
            );
            ticks += 1;
        }
    });
    guard
}

/// Parses `500ms`, `10s`, `2m`, `1h` or bare seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 10s, 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
