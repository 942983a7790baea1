//! Publisher API keys in the configuration: the simple list (`--api-keys k1,k2`,
//! `HERALD_API_KEYS`, `api_keys = ["k1"]`) and named, scoped keys in the TOML file:
//!
//! ```toml
//! [[api_keys]]
//! name = "billing"                  # shown in metrics and logs, never the key itself
//! key_file = "/run/secrets/billing" # or key_env = "BILLING_KEY", or key = "..." (discouraged)
//! channels = ["orders.*"]           # optional: default every channel
//! rate = "20/s"                     # optional token bucket: sustained rate ...
//! burst = 40                        # ... and burst (default: twice the rate, at least 1)
//! ```
//!
//! Keys are read once at start. Only names ever reach a log line, an error body or a metric.

use std::fmt;

use herald_core::ChannelPattern;
use serde::Deserialize;

/// The label of keys given as a plain list: they publish everywhere, without a rate limit.
pub const UNNAMED: &str = "unnamed";

/// A secret (a publisher key, the subscriber-token HMAC secret). `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A sustained rate (per second) and a burst: a token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRate {
    pub per_second: f64,
    pub burst: u32,
}

/// One publisher key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub name: String,
    pub secret: Secret,
    /// Channels the key may publish to (`[*]` when the configuration names none).
    pub channels: Vec<ChannelPattern>,
    pub rate: Option<KeyRate>,
}

/// Every publisher key. Empty: publishing needs no key.
#[derive(Clone, Default, PartialEq)]
pub struct ApiKeys(pub Vec<ApiKey>);

impl fmt::Debug for ApiKeys {
    /// Names and scopes only: the configuration's debug form may be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|k| {
                let scope: Vec<String> = k.channels.iter().map(|p| p.to_string()).collect();
                format!("{} [{}]", k.name, scope.join(" "))
            })
            .collect();
        write!(
            f,
            "ApiKeys({} keys, secrets redacted: {})",
            names.len(),
            names.join(", ")
        )
    }
}

impl std::ops::Deref for ApiKeys {
    type Target = [ApiKey];
    fn deref(&self) -> &[ApiKey] {
        &self.0
    }
}

fn unnamed(secret: &str) -> ApiKey {
    ApiKey {
        name: UNNAMED.to_owned(),
        secret: Secret(secret.to_owned()),
        channels: vec![ChannelPattern::Any],
        rate: None,
    }
}

/// The flag and environment form: comma-separated keys (whitespace around them ignored).
pub fn parse_list(s: &str) -> Result<ApiKeys, String> {
    let keys = ApiKeys(
        s.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(unnamed)
            .collect(),
    );
    check(&keys)?;
    Ok(keys)
}

/// One `[[api_keys]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    name: String,
    key: Option<String>,
    key_file: Option<std::path::PathBuf>,
    key_env: Option<String>,
    channels: Option<Vec<String>>,
    rate: Option<toml::Value>,
    burst: Option<u32>,
}

/// The file form: `api_keys = ["k1", "k2"]`, `[[api_keys]]` tables, or both kinds in one array.
pub fn from_toml(value: toml::Value) -> Result<ApiKeys, String> {
    let toml::Value::Array(items) = value else {
        return Err("expected a list of keys or [[api_keys]] tables".to_owned());
    };
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        match item {
            toml::Value::String(s) => keys.push(unnamed(s.trim())),
            table @ toml::Value::Table(_) => {
                let table: Table = table.try_into().map_err(|e| e.to_string())?;
                keys.push(from_table(table)?);
            }
            other => return Err(format!("unexpected {} in api_keys", other.type_str())),
        }
    }
    let keys = ApiKeys(keys);
    check(&keys)?;
    Ok(keys)
}

fn from_table(t: Table) -> Result<ApiKey, String> {
    let name = t.name;
    let label_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(label_ok) {
        return Err(format!(
            "api key name {name:?}: 1-64 characters of A-Z a-z 0-9 _ - . (it is a metric label)"
        ));
    }
    if name == UNNAMED {
        return Err(format!(
            "api key name {UNNAMED:?} is reserved for keys given as a list"
        ));
    }
    let secret = match (t.key, t.key_file, t.key_env) {
        (Some(key), None, None) => key,
        (None, Some(path), None) => std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "api key {name:?}: cannot read key_file {}: {e}",
                path.display()
            )
        })?,
        (None, None, Some(var)) => std::env::var(&var)
            .map_err(|_| format!("api key {name:?}: environment variable {var} is not set"))?,
        _ => {
            return Err(format!(
                "api key {name:?}: give exactly one of key_file, key_env or key"
            ));
        }
    };
    // A trailing newline (`echo KEY > file`) is not part of the key.
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(format!("api key {name:?}: the key is empty"));
    }
    let channels = match t.channels {
        None => vec![ChannelPattern::Any],
        Some(list) if list.is_empty() => {
            return Err(format!(
                "api key {name:?}: `channels` is empty (leave it out to allow every channel)"
            ));
        }
        Some(list) => list
            .iter()
            .map(|p| ChannelPattern::parse(p).map_err(|e| format!("api key {name:?}: {e}")))
            .collect::<Result<_, _>>()?,
    };
    let rate = match (t.rate, t.burst) {
        (None, None) => None,
        (None, Some(_)) => return Err(format!("api key {name:?}: `burst` needs a `rate`")),
        (Some(rate), burst) => {
            let text = match rate {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            let per_second =
                super::parse_rate(&text).map_err(|e| format!("api key {name:?}: rate: {e}"))?;
            if per_second <= 0.0 {
                return Err(format!("api key {name:?}: rate must be greater than 0"));
            }
            let burst = burst.unwrap_or_else(|| (per_second * 2.0).ceil().max(1.0) as u32);
            if burst == 0 {
                return Err(format!("api key {name:?}: burst must be at least 1"));
            }
            Some(KeyRate { per_second, burst })
        }
    };
    Ok(ApiKey {
        name,
        secret: Secret(secret.to_owned()),
        channels,
        rate,
    })
}

/// Names are unique (they tell keys apart in metrics) and so are secrets (a presented key must
/// identify one key, or its scope and rate would be ambiguous).
fn check(keys: &ApiKeys) -> Result<(), String> {
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            if a.name == b.name && a.name != UNNAMED {
                return Err(format!("two api keys are named {:?}", a.name));
            }
            if a.secret == b.secret {
                return Err(format!(
                    "api keys {:?} and {:?} have the same key",
                    a.name, b.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ApiKeys, String> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        from_toml(table.get("api_keys").cloned().expect("api_keys"))
    }

    #[test]
    fn named_scoped_keys_from_inline_env_and_file() {
        let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("billing");
        std::fs::write(&file, "k-from-file\n").expect("write");
        // `key_env` reads PATH: setting a variable is unsafe in edition 2024, PATH is always set.
        let keys = parse(&format!(
            r#"
            [[api_keys]]
            name = "billing"
            key_file = "{}"
            channels = ["orders.*", "invoices"]
            rate = "10/s"

            [[api_keys]]
            name = "ops"
            key_env = "PATH"

            [[api_keys]]
            name = "inline"
            key = "k-inline"
            rate = 0.5
            burst = 3
            "#,
            file.display()
        ))
        .expect("valid");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].secret.as_bytes(), b"k-from-file");
        assert_eq!(keys[0].channels.len(), 2);
        assert!(keys[0].channels[0].matches("orders.1"));
        assert_eq!(
            keys[0].rate,
            Some(KeyRate {
                per_second: 10.0,
                burst: 20
            })
        );
        assert_eq!(keys[1].channels, [ChannelPattern::Any]);
        assert_eq!(
            keys[2].rate,
            Some(KeyRate {
                per_second: 0.5,
                burst: 3
            })
        );
        let debug = format!("{keys:?}");
        assert!(
            !debug.contains("k-from-file") && !debug.contains("k-inline"),
            "{debug}"
        );
        assert!(debug.contains("billing [orders.* invoices]"), "{debug}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_name_and_never_the_key() {
        for (text, needle) in [
            ("[[api_keys]]\nname = \"a\"\n", "exactly one"),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nkey_env = \"PATH\"\n",
                "exactly one",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey_env = \"HERALD_NO_SUCH_VAR\"\n",
                "not set",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey_file = \"/nonexistent/k\"\n",
                "cannot read",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nchannels = []\n",
                "empty",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nchannels = [\"news*\"]\n",
                "separator",
            ),
            (
                "[[api_keys]]\nname = \"a b\"\nkey = \"x\"\n",
                "metric label",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nburst = 2\n",
                "needs a `rate`",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nrate = \"fast\"\n",
                "rate",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\nsecret = 1\n",
                "unknown field",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"x\"\n[[api_keys]]\nname = \"a\"\nkey = \"y\"\n",
                "named",
            ),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"same\"\n[[api_keys]]\nname = \"b\"\nkey = \"same\"\n",
                "same key",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains("\"same\""), "a key leaked into {err}");
        }
    }

    #[test]
    fn plain_lists_are_unnamed_keys_for_every_channel() {
        let keys = parse_list("k1, k2,,").expect("valid");
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.name == UNNAMED && k.rate.is_none()));
        assert!(keys[0].channels[0].matches("anything"));
        assert!(parse_list("k1,k1").is_err());
        let mixed = parse("api_keys = [\"k0\", { name = \"n\", key = \"k1\" }]\n").expect("valid");
        assert_eq!(mixed.len(), 2);
    }
}
