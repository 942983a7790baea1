//! The start-up warning about what this node leaves open: one `warn` line listing every door
//! an operator has not closed, so a node exposed by mistake says so in its first log lines.

use crate::config::Config;

/// What is open to anyone who can reach the node, in the words of the warning.
pub fn open_doors(config: &Config) -> Vec<&'static str> {
    let mut open = Vec::new();
    if matches!(config.key_source(), Ok(None)) {
        open.push(
            "every channel is public: anyone may subscribe to any channel and read its history (no jwt_secret, jwt_secret_file, jwt_public_key_file or jwks_file)",
        );
    }
    if config.api_keys.is_empty() {
        open.push("anyone may publish (no api_keys)");
    }
    if config.allowed_origins.is_any() {
        open.push("any web page may open WebSockets and read over CORS (no allowed_origins)");
    }
    if config.max_connections_per_ip == 0 && config.connection_rate_per_ip <= 0.0 {
        open.push(
            "no per-address connection limits (max_connections_per_ip, connection_rate_per_ip)",
        );
    }
    open
}

/// Logs the warning, if anything is open.
pub fn warn_if_open(config: &Config) {
    let open = open_doors(config);
    if !open.is_empty() {
        tracing::warn!(
            "this node is open: {}; see docs/security.md",
            open.join("; ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_start_is_open_and_says_so() {
        let open = open_doors(&Config::default());
        assert_eq!(open.len(), 4, "{open:?}");
        let closed = Config {
            api_keys: crate::config::ApiKeys(vec![]),
            allowed_origins: crate::http::cors::AllowedOrigins::parse_list("https://a.example.com")
                .expect("valid"),
            max_connections_per_ip: 100,
            jwt_secret: crate::config::Secret("s".repeat(32)),
            ..Config::default()
        };
        assert_eq!(open_doors(&closed), ["anyone may publish (no api_keys)"]);
    }
}
