//! The `herald` binary: parse configuration, set up logging, bind, and run until a signal.

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

fn main() -> std::process::ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("herald: cannot listen on {}: {e}", config.listen);
                return std::process::ExitCode::from(2);
            }
        };
        match listener.local_addr() {
            // Machine-readable: tests and scripts started with --listen 127.0.0.1:0 read the port here.
            Ok(addr) => println!("herald listening on http://{addr}"),
            Err(e) => tracing::warn!(error = %e, "cannot read the bound address"),
        }
        match herald_server::run(listener, config, herald_server::shutdown::signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herald: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
