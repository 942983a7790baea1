//! `publish`: the highest acknowledged publish rate through K keep-alive connections, each
//! with one request in flight (or `/v1/broadcast` with N channels per request).

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Common, Ctx, parse_duration};
use crate::{
    publisher,
    report::{self, Publishing},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Channels to publish to, round-robin.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub channels: usize,
    /// Payload (published `data`) size in bytes.
    #[arg(long, short = 'p', default_value_t = 100)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests in flight (one keep-alive connection each, spread over the URLs).
    #[arg(long, short = 'k', default_value_t = 64)]
    pub inflight: usize,
    /// Use `/v1/broadcast` with this many channels per request.
    #[arg(long)]
    pub broadcast: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    ok: bool,
    urls: Vec<String>,
    channels: usize,
    payload: usize,
    duration_s: f64,
    inflight: usize,
    broadcast: Option<usize>,
    requests_per_s: f64,
    publish: Publishing,
}

pub async fn run(args: Args) -> Result<bool, String> {
    if args.channels == 0 {
        return Err("--channels must be at least 1".into());
    }
    if args.broadcast == Some(0) {
        return Err("--broadcast must be at least 1".into());
    }
    if args.broadcast.is_some() && args.common.flavor == crate::net::Flavor::Nchan {
        return Err("--broadcast is Herald's /v1/broadcast; nchan has no equivalent".into());
    }
    let ctx = Ctx::new(args.common.clone()).await?;
    let channels = ctx.channel_names(args.channels);
    eprintln!(
        "publish: {} in flight over {} node(s) for {:?}{}",
        args.inflight,
        ctx.targets.len(),
        args.duration,
        args.broadcast
            .map(|n| format!(", broadcast to {n} channels per request"))
            .unwrap_or_default()
    );
    let plan = publisher::Plan {
        channels,
        rate: None,
        duration: args.duration,
        payload_size: args.payload,
        inflight: args.inflight,
        broadcast: args.broadcast,
        api_key: ctx.common.api_key.clone(),
        retries: ctx.common.retries,
        idempotency_prefix: ctx.prefix.clone(),
    };
    let outcome = publisher::run(
        plan,
        ctx.dialer.clone(),
        ctx.targets.clone(),
        CancellationToken::new(),
    )
    .await;
    let publish = Publishing::from_outcome(&outcome, None);
    let ok = publish.acked > 0 && publish.failed == 0;
    let report = Report {
        scenario: "publish",
        ok,
        urls: ctx.common.urls.clone(),
        channels: args.channels,
        payload: args.payload,
        duration_s: args.duration.as_secs_f64(),
        inflight: args.inflight,
        broadcast: args.broadcast,
        requests_per_s: report::round3(
            outcome.acked as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        ),
        publish,
    };
    let mut human = String::from("--- publish ---\n");
    report.publish.human(&mut human);
    human.push_str(&format!(
        "result: {} ({:.0} acked requests/s)\n",
        if ok { "OK" } else { "FAIL" },
        report.requests_per_s
    ));
    report::emit(&human, &report);
    Ok(ok)
}
