//! `[namespaces.NAME]` tables: per-namespace access rules and history retention.
//!
//! ```toml
//! [namespaces.default]          # channels without a `:`
//! anonymous_read = true
//!
//! [namespaces.chat]             # chat:room1, chat:lobby, ...
//! client_publish = "token"      # "no" | "token" | "anonymous"
//! history_size = 200
//! history_ttl = "10m"
//!
//! [namespaces.user]             # user:42 is readable only by a token with sub = "42"
//! user_channels = true
//!
//! [namespaces.room]             # rooms: who is here, who joins and leaves
//! presence = true
//! join_leave = true
//! leave_grace = "5s"            # default: the global leave_grace
//! join_leave_max_members = 500  # default: the global join_leave_max_members
//! ```
//!
//! Unset fields (and namespaces with no table) take the global defaults: `history_size`,
//! `history_ttl`, no anonymous read, no user channels, no presence, and the `client_publish`
//! that `allow_client_publish` implies. Tables are TOML only (no flag or environment form).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use herald_broker::{Retention, RoomPolicy, RoomsConfig};
use herald_core::auth::ClientPublish;
use serde::Deserialize;

use super::{Config, file_text, parse_duration};

/// The settings of one namespace, as written (`None`: not set, the global default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceSettings {
    pub anonymous_read: Option<bool>,
    pub client_publish: Option<ClientPublish>,
    pub history_size: Option<usize>,
    pub history_ttl: Option<Duration>,
    pub user_channels: Option<bool>,
    /// Rooms: who is subscribed is listed (presence).
    pub presence: Option<bool>,
    /// Rooms: `herald.join` / `herald.leave` messages (needs presence).
    pub join_leave: Option<bool>,
    pub leave_grace: Option<Duration>,
    pub join_leave_max_members: Option<usize>,
}

/// Every `[namespaces.NAME]` table, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces(pub BTreeMap<String, NamespaceSettings>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    anonymous_read: Option<bool>,
    client_publish: Option<String>,
    history_size: Option<toml::Value>,
    history_ttl: Option<toml::Value>,
    user_channels: Option<bool>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    leave_grace: Option<toml::Value>,
    join_leave_max_members: Option<toml::Value>,
}

/// A namespace name: what may stand before the `:` of a channel name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= herald_core::channel::MAX_CHANNEL_LEN
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'/' | b'=' | b'+')
        })
}

impl Namespaces {
    /// Reads the `namespaces` table of a config file.
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        let toml::Value::Table(table) = value else {
            return Err("expected [namespaces.NAME] tables".into());
        };
        let mut out = BTreeMap::new();
        for (name, v) in table {
            if !valid_name(&name) {
                return Err(format!(
                    "namespace {name:?}: names use A-Z a-z 0-9 _ - . @ / = + (no `:`)"
                ));
            }
            let raw: RawSettings = v
                .try_into()
                .map_err(|e: toml::de::Error| format!("[namespaces.{name}]: {}", e.message()))?;
            let client_publish = match raw.client_publish.as_deref() {
                None => None,
                Some(s) => Some(ClientPublish::parse(s).ok_or_else(|| {
                    format!(
                        "[namespaces.{name}] client_publish = {s:?}: use \"no\", \"token\" or \"anonymous\""
                    )
                })?),
            };
            let history_size = match raw.history_size {
                None => None,
                Some(v) => Some(file_text(v).trim().parse::<usize>().map_err(|_| {
                    format!("[namespaces.{name}] history_size must be a non-negative integer")
                })?),
            };
            let history_ttl = match raw.history_ttl {
                None => None,
                Some(v) => {
                    let ttl = parse_duration(&file_text(v))
                        .map_err(|e| format!("[namespaces.{name}] history_ttl: {e}"))?;
                    if ttl.is_zero() {
                        return Err(format!(
                            "[namespaces.{name}] history_ttl must be greater than 0"
                        ));
                    }
                    Some(ttl)
                }
            };
            let leave_grace = match raw.leave_grace {
                None => None,
                Some(v) => Some(
                    parse_duration(&file_text(v))
                        .map_err(|e| format!("[namespaces.{name}] leave_grace: {e}"))?,
                ),
            };
            let join_leave_max_members = match raw.join_leave_max_members {
                None => None,
                Some(v) => Some(file_text(v).trim().parse::<usize>().map_err(|_| {
                    format!(
                        "[namespaces.{name}] join_leave_max_members must be a non-negative integer"
                    )
                })?),
            };
            if raw.join_leave == Some(true) && raw.presence != Some(true) {
                return Err(format!(
                    "[namespaces.{name}] join_leave = true needs presence = true (join and leave are computed from presence)"
                ));
            }
            out.insert(
                name,
                NamespaceSettings {
                    anonymous_read: raw.anonymous_read,
                    client_publish,
                    history_size,
                    history_ttl,
                    user_channels: raw.user_channels,
                    presence: raw.presence,
                    join_leave: raw.join_leave,
                    leave_grace,
                    join_leave_max_members,
                },
            );
        }
        Ok(Self(out))
    }

    pub fn get(&self, namespace: &str) -> Option<&NamespaceSettings> {
        self.0.get(namespace)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &NamespaceSettings)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Config {
    /// The retention of the namespaces that set `history_size` or `history_ttl` (the other
    /// setting falls back to the global one). Every other channel keeps the global
    /// `history_size` messages for `history_ttl`: the brokers' default.
    pub fn retention_by_namespace(&self) -> HashMap<String, Retention> {
        self.namespaces
            .iter()
            .filter(|(_, s)| s.history_size.is_some() || s.history_ttl.is_some())
            .map(|(name, s)| {
                let r = Retention {
                    size: s.history_size.unwrap_or(self.history_size),
                    ttl: s.history_ttl.unwrap_or(self.history_ttl),
                };
                (name.to_owned(), r)
            })
            .collect()
    }

    /// The rooms of the namespaces with `presence = true`, with their join/leave policy (unset
    /// fields take the global `leave_grace` and `join_leave_max_members`), and the presence TTL.
    pub fn rooms_config(&self) -> RoomsConfig {
        let by_namespace = self
            .namespaces
            .iter()
            .filter(|(_, s)| s.presence == Some(true))
            .map(|(name, s)| {
                let policy = RoomPolicy {
                    join_leave: s.join_leave == Some(true),
                    grace: s.leave_grace.unwrap_or(self.leave_grace),
                    max_members: s
                        .join_leave_max_members
                        .unwrap_or(self.join_leave_max_members),
                };
                (name.to_owned(), policy)
            })
            .collect();
        RoomsConfig {
            by_namespace,
            ttl: self.presence_ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Namespaces, String> {
        let table: toml::Table = toml::from_str(text).expect("toml");
        Namespaces::from_toml(table.get("namespaces").cloned().expect("namespaces"))
    }

    #[test]
    fn reads_every_setting() {
        let ns = parse(
            "[namespaces.default]\nanonymous_read = true\n\
             [namespaces.chat]\nclient_publish = \"token\"\nhistory_size = 5\nhistory_ttl = \"10m\"\n\
             [namespaces.user]\nuser_channels = true\nhistory_ttl = 30\n",
        )
        .expect("valid");
        assert_eq!(ns.get("default").and_then(|s| s.anonymous_read), Some(true));
        let chat = ns.get("chat").expect("chat");
        assert_eq!(chat.client_publish, Some(ClientPublish::Token));
        assert_eq!(chat.history_size, Some(5));
        assert_eq!(chat.history_ttl, Some(Duration::from_secs(600)));
        assert_eq!(chat.anonymous_read, None);
        let user = ns.get("user").expect("user");
        assert_eq!(user.user_channels, Some(true));
        assert_eq!(user.history_ttl, Some(Duration::from_secs(30)));
        assert!(ns.get("other").is_none());
    }

    #[test]
    fn retention_follows_the_namespace() {
        let config = Config {
            namespaces: parse("[namespaces.chat]\nhistory_size = 5\n[namespaces.news]\nhistory_ttl = \"1m\"\n[namespaces.x]\nanonymous_read = true\n")
                .expect("valid"),
            ..Config::default()
        };
        let default = Retention {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        let table = config.retention_by_namespace();
        let of = |c: &str| {
            Retention::of(
                &herald_core::ChannelName::parse(c).expect("name"),
                default,
                &table,
            )
        };
        assert_eq!(
            of("chat:1"),
            Retention {
                size: 5,
                ttl: config.history_ttl
            }
        );
        assert_eq!(
            of("news:a"),
            Retention {
                size: config.history_size,
                ttl: Duration::from_secs(60)
            }
        );
        assert_eq!(of("news"), default, "default namespace");
        assert_eq!(of("x:1"), default, "x sets no retention");
        assert_eq!(
            table.len(),
            2,
            "only namespaces that set retention: {table:?}"
        );
        assert!(Config::default().retention_by_namespace().is_empty());
    }

    #[test]
    fn rooms_follow_the_namespace_and_the_global_defaults() {
        let config = Config {
            namespaces: parse(
                "[namespaces.chat]\npresence = true\njoin_leave = true\nleave_grace = \"250ms\"\n\
                 [namespaces.lobby]\npresence = true\njoin_leave_max_members = 7\n\
                 [namespaces.news]\nanonymous_read = true\n",
            )
            .expect("valid"),
            ..Config::default()
        };
        let rooms = config.rooms_config();
        let of = |c: &str| rooms.policy(&herald_core::ChannelName::parse(c).expect("name"));
        assert_eq!(
            of("chat:1"),
            Some(RoomPolicy {
                join_leave: true,
                grace: Duration::from_millis(250),
                max_members: config.join_leave_max_members,
            })
        );
        assert_eq!(
            of("lobby:a"),
            Some(RoomPolicy {
                join_leave: false,
                grace: config.leave_grace,
                max_members: 7,
            })
        );
        assert_eq!(of("news:x"), None);
        assert_eq!(of("plain"), None);
        assert_eq!(rooms.ttl, config.presence_ttl);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            (
                "[namespaces.chat]\nclient_publish = \"yes\"\n",
                "client_publish",
            ),
            ("[namespaces.chat]\nanonymous = true\n", "[namespaces.chat]"),
            ("[namespaces.chat]\nhistory_size = -1\n", "history_size"),
            ("[namespaces.chat]\nhistory_ttl = \"0s\"\n", "history_ttl"),
            ("[namespaces.\"a:b\"]\nanonymous_read = true\n", "a:b"),
            ("[namespaces]\nchat = 1\n", "[namespaces.chat]"),
            ("[namespaces.chat]\njoin_leave = true\n", "needs presence"),
            (
                "[namespaces.chat]\npresence = true\nleave_grace = \"soon\"\n",
                "leave_grace",
            ),
            (
                "[namespaces.chat]\njoin_leave_max_members = -3\n",
                "join_leave_max_members",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }
}
