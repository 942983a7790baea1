//! `herald-loadtest`: load and correctness scenarios against any Herald deployment.
//!
//! Each run prints a human summary on stderr and one JSON line on stdout, and exits non-zero
//! when the scenario failed (e.g. a lossless fan-out lost a message), so it can gate scripts.

mod baseline;
mod client;
mod limits;
mod net;
mod payload;
mod publisher;
mod redis_info;
mod report;
mod scenario;
mod stats;
mod subscriber;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Load and correctness scenarios against a Herald deployment",
    long_about = "Load and correctness scenarios against a Herald deployment.\n\n\
        Prints a human summary on stderr and one JSON line on stdout. Exit status: 0 ok, \
        1 the scenario failed (loss, duplicates, failed connections...), 2 bad usage or setup.\n\n\
        One process holds at most as many connections as its open-files limit (raised to the \
        hard limit at start); spread bigger runs over several processes and --source-ip \
        addresses."
)]
struct Cli {
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// C channels x S subscribers, paced publisher, loss/duplicate/order audit and latency.
    Fanout(scenario::fanout::Args),
    /// Hold N idle subscribers and measure server RSS per connection.
    Idle(scenario::idle::Args),
    /// Maximum acknowledged publishes per second.
    Publish(scenario::publish::Args),
    /// Drop every subscriber at once and resume each on a different node while publishing.
    ResumeStorm(scenario::resume_storm::Args),
    /// New subscriptions per second (connect, subscribe, hang up) and server CPU per subscribe.
    SubscribeRate(scenario::subscribe_rate::Args),
    /// Rooms: members registered per second and node CPU per enter and exit.
    Presence(scenario::presence::Args),
    /// Serve as the raw fan-out baseline (no broker, no history) for side-by-side benchmarks.
    Baseline(baseline::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = limits::raise_nofile();
    if let Some(n) = nofile.filter(|n| *n < 4096) {
        eprintln!("warning: open-files limit is {n}; large runs will fail to connect");
    }
    if let Command::Baseline(args) = cli.command {
        // Its own runtimes, one per thread (see the module).
        return match baseline::run(args, cli.threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Fanout(a) => scenario::fanout::run(a).await,
            Command::Idle(a) => scenario::idle::run(a).await,
            Command::Publish(a) => scenario::publish::run(a).await,
            Command::ResumeStorm(a) => scenario::resume_storm::run(a).await,
            Command::SubscribeRate(a) => scenario::subscribe_rate::run(a).await,
            Command::Presence(a) => scenario::presence::run(a).await,
            Command::Baseline(_) => unreachable!("served above"),
        }
    });
    // Do not wait for connection tasks still parked on sockets.
    rt.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
