//! The `herald` binary: parse configuration, set up logging, bind, start the broker, and run
//! until a signal.
//!
//! Nothing here may panic because an output went away: `herald ... | head -1` reads the bound
//! address and closes stdout, and a log collector may die; the server keeps serving either way.

use std::io::{IsTerminal, Write};

use clap::Parser;
use herald_server::{Cli, Config, config::LogFormat};
use tracing_subscriber::EnvFilter;

// The system allocator is the default: docs/benchmarks.md ("Allocator") has the measurement.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc wins if both are enabled (`--all-features`), so every feature set builds.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A line on stderr. Unlike `eprintln!`, a closed or broken stderr is ignored, not a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> std::process::ExitCode {
    // `herald token ...`: a subcommand with its own arguments (the server's flags stay flat).
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return herald_server::auth::mint::main(std::env::args_os().skip(1));
    }
    let config = match Config::from_cli(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            say!("herald: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The filter was validated with the configuration.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every line is scrubbed of tokens (`?token=`, Bearer values, JWTs) on its way out.
        .with_writer(herald_server::auth::redact::Redacting)
        // Colour codes only for a person at a terminal, never into a file or a collector.
        .with_ansi(std::io::stderr().is_terminal())
        // tracing-subscriber reports a failed log write with `eprintln!`, which panics when
        // stderr is the thing that failed: a log line that cannot be written is dropped.
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }
    // Every connection is a file: use the whole hard limit (max_connections derives from it).
    herald_server::limits::fds::raise_open_file_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                say!("herald: cannot listen on {}: {e}", config.listen);
                return std::process::ExitCode::from(2);
            }
        };
        // Before announcing anything: keys and a broker that cannot start are reported instead
        // of a "listening" line followed by an exit. (The keys were checked with the
        // configuration; this fails only if a key file changed in between.)
        let auth = match herald_server::auth::Auth::from_config(&config) {
            Ok(a) => a,
            Err(e) => {
                say!("herald: cannot load the subscriber keys: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let tls = match herald_server::tls::Tls::from_config(&config) {
            Ok(tls) => tls,
            Err(e) => {
                say!("herald: cannot use the TLS certificate: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let broker = match herald_server::build_broker(&config).await {
            Ok(b) => b,
            Err(e) => {
                say!("herald: cannot start the broker: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            // Machine-readable: tests and scripts started with --listen 127.0.0.1:0 read the port
            // here. The reader may have gone (`| head -1`): the server keeps serving.
            Ok(addr) => {
                let mut out = std::io::stdout().lock();
                let scheme = if tls.is_some() { "https" } else { "http" };
                let _ = writeln!(out, "herald listening on {scheme}://{addr}");
                let _ = out.flush();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the bound address"),
        }
        let listener = herald_server::Listener { tcp: listener, tls };
        herald_server::run(
            listener,
            config,
            broker,
            auth,
            herald_server::shutdown::signal(),
        )
        .await;
        std::process::ExitCode::SUCCESS
    })
}
