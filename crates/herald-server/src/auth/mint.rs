//! `herald token`: mints a development subscriber token from the configured HMAC secret.
//!
//! ```sh
//! HERALD_JWT_SECRET_FILE=secret herald token --sub alice --channels 'news.*' --ttl 1h
//! ```
//!
//! It reads the same configuration as the server (`--config`, `HERALD_*`), so the token fits the
//! node it is meant for (`aud`/`iss` included when configured). Production tokens come from the
//! application's own backend (docs/security.md shows PyJWT); this is for trying things out.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use herald_core::auth::{Claims, PatternSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::config::{Cli, Config, parse_duration};

/// Mint a development subscriber token (HS256/384/512) from the configured jwt_secret or
/// jwt_secret_file, and print it on stdout.
#[derive(Debug, Parser)]
#[command(name = "herald token", bin_name = "herald token")]
struct Args {
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: Option<String>,
    /// Channels the token may read: names and patterns like `news.*` or `*` (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Channels the token may publish to over WebSocket (same patterns).
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// JSON attached as the `info` claim.
    #[arg(long)]
    info: Option<String>,
    /// Lifetime: the token's `exp` is now + ttl (e.g. 30s, 15m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// The server's TOML config file (for jwt_secret_file, jwt_audience, jwt_issuer).
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// File holding the HMAC secret (overrides the config).
    #[arg(long, env = "HERALD_JWT_SECRET_FILE", hide_env_values = true)]
    jwt_secret_file: Option<String>,
}

/// Runs the subcommand; `args` starts with the subcommand's name (`token`).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::from(2)
        }
    }
}

fn first(list: &str) -> Option<String> {
    list.split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

fn mint(args: Args) -> Result<String, String> {
    let mut server_args: Vec<OsString> = vec!["herald".into()];
    if let Some(c) = &args.config {
        server_args.extend(["--config".into(), c.clone().into_os_string()]);
    }
    if let Some(f) = &args.jwt_secret_file {
        server_args.extend(["--jwt-secret-file".into(), f.into()]);
    }
    let cli = Cli::try_parse_from(server_args).map_err(|e| e.to_string())?;
    let config = Config::from_cli(cli).map_err(|e| e.to_string())?;
    let source = config
        .key_source()
        .map_err(|e| e.to_string())?
        .ok_or("no jwt_secret or jwt_secret_file configured (set HERALD_JWT_SECRET_FILE or pass --jwt-secret-file)")?;
    let secret = source
        .hmac_secret()
        .map_err(|e| e.to_string())?
        .ok_or("herald token signs with an HMAC secret; the server is configured with a public key, so sign tokens with the matching private key (docs/security.md)")?;
    let alg = match args.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(format!("--alg {other}: use HS256, HS384 or HS512")),
    };
    for (name, list) in [("--channels", &args.channels), ("--publish", &args.publish)] {
        PatternSet::parse(list.iter().map(String::as_str)).map_err(|e| format!("{name}: {e}"))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "iat": now,
        "exp": now + args.ttl.as_secs(),
        "channels": args.channels,
    });
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.as_str().into();
    }
    if !args.publish.is_empty() {
        claims["publish"] = args.publish.clone().into();
    }
    if let Some(info) = &args.info {
        claims["info"] =
            serde_json::from_str(info).map_err(|e| format!("--info is not JSON: {e}"))?;
    }
    if let Some(aud) = first(&config.jwt_audience) {
        claims["aud"] = aud.into();
    }
    if let Some(iss) = first(&config.jwt_issuer) {
        claims["iss"] = iss.into();
    }
    // The same checks the server applies, so a minted token is one the server accepts.
    Claims::parse(claims.to_string().as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .map_err(|e| format!("cannot sign: {e}"))
}
