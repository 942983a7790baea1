//! The URL forms that pick standalone, Sentinel or Cluster mode, and how a URL is shown without
//! its password.
//!
//! `redis://host:port[/db]` is a standalone server, `redis+sentinel://s1:p1,s2:p2/NAME` asks
//! Sentinels for the primary named NAME, `redis+cluster://h1:p1,h2:p2` lists Cluster seed nodes
//! (any reachable node is enough; the client discovers the rest). A `rediss` scheme
//! (`rediss://`, `rediss+sentinel://`, `rediss+cluster://`) speaks TLS to every server.

use crate::BrokerError;

/// `url` with the password of its user info replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last '@' before the path: passwords may contain '@' or '/'
    // only percent-encoded, but be defensive and never print anything after the first ':'.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{shown}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The deployment shape named by a URL, before credentials and TLS files are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// A `redis://` or `rediss://` URL, passed to the client unchanged.
    Standalone(String),
    /// Sentinels (one URL each, without credentials), the primary's name, and the URL settings
    /// for the data nodes (`redis[s]://[user:pass@]sentinel.invalid:1[/db][?query]`; Sentinel supplies
    /// the address).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        node: String,
    },
    /// One `redis://` or `rediss://` URL per seed node.
    Cluster(Vec<String>),
}

/// A `<scheme>://` prefix and what it means.
const SCHEMES: &[(&str, Mode, bool)] = &[
    ("redis://", Mode::Standalone, false),
    ("rediss://", Mode::Standalone, true),
    ("redis+sentinel://", Mode::Sentinel, false),
    ("rediss+sentinel://", Mode::Sentinel, true),
    ("redis+cluster://", Mode::Cluster, false),
    ("rediss+cluster://", Mode::Cluster, true),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standalone,
    Sentinel,
    Cluster,
}

/// The default Sentinel port when a Sentinel address has none.
const SENTINEL_PORT: u16 = 26379;

impl Topology {
    pub(crate) fn parse(url: &str) -> Result<Self, BrokerError> {
        let bad = |why: &str| {
            BrokerError::Internal(format!("invalid Redis URL {}: {why}", redact_url(url)))
        };
        let Some(&(prefix, mode, tls)) = SCHEMES.iter().find(|(p, _, _)| url.starts_with(p)) else {
            return Err(bad(
                "expected redis://host:port, rediss://host:port, redis+sentinel://h1:p1,h2:p2/NAME \
                 or redis+cluster://h1:p1,h2:p2",
            ));
        };
        let scheme = if tls { "rediss://" } else { "redis://" };
        let rest = &url[prefix.len()..];
        if mode == Mode::Standalone {
            check_url(url)?;
            return Ok(Self::Standalone(url.to_owned()));
        }
        // Credentials apply to every node; a path or query (e.g. `?protocol=`) likewise.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (userinfo, hosts) = match rest[..authority_end].rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..authority_end]),
            None => (None, &rest[..authority_end]),
        };
        let suffix = &rest[authority_end..];
        let hosts: Vec<&str> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err(bad("lists no hosts"));
        }
        let with_user = |host: &str, suffix: &str| match userinfo {
            Some(u) => format!("{scheme}{u}@{host}{suffix}"),
            None => format!("{scheme}{host}{suffix}"),
        };
        match mode {
            Mode::Cluster => {
                let nodes: Vec<String> = hosts.iter().map(|h| with_user(h, suffix)).collect();
                for n in &nodes {
                    check_url(n)?;
                }
                Ok(Self::Cluster(nodes))
            }
            _ => {
                let (path, query) = match suffix.find('?') {
                    Some(i) => suffix.split_at(i),
                    None => (suffix, ""),
                };
                let mut segments = path.trim_start_matches('/').split('/');
                let master = segments.next().unwrap_or_default();
                if master.is_empty() {
                    return Err(bad(
                        "a Sentinel URL names the primary: redis+sentinel://h1:p1,h2:p2/NAME",
                    ));
                }
                let db = segments.next().filter(|d| !d.is_empty());
                if segments.next().is_some() {
                    return Err(bad("expected /NAME or /NAME/DB after the Sentinel hosts"));
                }
                let sentinels: Vec<String> = hosts
                    .iter()
                    .map(|h| {
                        if h.rsplit_once(':')
                            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                        {
                            format!("{scheme}{h}")
                        } else {
                            format!("{scheme}{h}:{SENTINEL_PORT}")
                        }
                    })
                    .collect();
                for s in &sentinels {
                    check_url(s)?;
                }
                let node = with_user(
                    "sentinel.invalid:1",
                    &format!("{}{query}", db.map(|d| format!("/{d}")).unwrap_or_default()),
                );
                check_url(&node)?;
                Ok(Self::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    node,
                })
            }
        }
    }

    /// Whether the URL asks for TLS.
    pub(crate) fn tls(&self) -> bool {
        let first = match self {
            Self::Standalone(u) => u.as_str(),
            Self::Sentinel { node, .. } => node.as_str(),
            Self::Cluster(nodes) => nodes.first().map_or("", String::as_str),
        };
        first.starts_with("rediss://")
    }
}

/// Checks `url` exactly as [`super::RedisBroker::connect`] will parse it, so that a server can
/// refuse a bad URL at configuration time, before it announces anything.
pub fn validate_url(url: &str) -> Result<(), BrokerError> {
    Topology::parse(url).map(drop)
}

fn check_url(url: &str) -> Result<(), BrokerError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| BrokerError::Internal(format!("invalid Redis URL {}: {e}", redact_url(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(redact_url("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://u@h"), "redis://u@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("redis+sentinel://a:b@s1,s2/m"),
            "redis+sentinel://a:***@s1,s2/m"
        );
    }

    #[test]
    fn standalone_urls_pass_through() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:7000/2").ok(),
            Some(Topology::Standalone("redis://127.0.0.1:7000/2".into()))
        );
        let tls = Topology::parse("rediss://h:6380").expect("tls url");
        assert!(tls.tls());
        assert!(!Topology::parse("redis://h").expect("url").tls());
    }

    #[test]
    fn cluster_urls_expand_to_one_url_per_node() {
        assert_eq!(
            Topology::parse("redis+cluster://:pw@a:1,b:2/?protocol=resp2").ok(),
            Some(Topology::Cluster(vec![
                "redis://:pw@a:1/?protocol=resp2".into(),
                "redis://:pw@b:2/?protocol=resp2".into()
            ]))
        );
        assert_eq!(
            Topology::parse("rediss+cluster://a:1, b:2").ok(),
            Some(Topology::Cluster(vec![
                "rediss://a:1".into(),
                "rediss://b:2".into()
            ]))
        );
    }

    #[test]
    fn sentinel_urls_name_the_primary() {
        assert_eq!(
            Topology::parse("redis+sentinel://u:p%40w@s1:5000,s2/mymaster/3").ok(),
            Some(Topology::Sentinel {
                sentinels: vec!["redis://s1:5000".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                node: "redis://u:p%40w@sentinel.invalid:1/3".into(),
            })
        );
        let tls = Topology::parse("rediss+sentinel://s1:1/m").expect("url");
        assert!(tls.tls());
        for bad in [
            "redis+sentinel://s1:1",
            "redis+sentinel://s1:1/",
            "redis+sentinel://s1:1/m/0/x",
            "redis+sentinel:///m",
        ] {
            assert!(Topology::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_urls_are_rejected_without_their_password() {
        for url in ["", "http://x", "redis+cluster://", "redis+cluster://,"] {
            assert!(Topology::parse(url).is_err(), "{url}");
        }
        let err = Topology::parse("redis+cluster://u:hunter2@a:notaport")
            .expect_err("bad port")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn errors_never_show_credentials() {
        let err = validate_url("redis://:secret@host:notaport").expect_err("bad port");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("***@host:notaport"), "{err}");
        let err = validate_url("redis+cluster://user:pw@a:1,b:x").expect_err("bad port");
        assert!(!err.to_string().contains("pw"), "{err}");
        assert_eq!(redact_url("redis://h:1/0?x=@"), "redis://h:1/0?x=@");
    }
}
