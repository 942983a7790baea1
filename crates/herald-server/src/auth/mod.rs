//! Subscriber authentication and authorization: who a client is (a verified JWT, or nobody)
//! and what it may read and publish (its claims under its channel's namespace rules).
//!
//! With no subscriber key configured Herald is open, as in the quick start: every channel is
//! readable and tokens are ignored (one warning says so at start). With a key, reading is deny
//! by default: a channel is readable with a token that grants it, or when its namespace allows
//! anonymous reads. Every read path (SSE, WebSocket subscribe and resume, history) asks
//! [`Auth::check_read`], channel by channel.
//!
//! The pure part (patterns, claims, the decision) lives in `herald_core::auth`.

pub mod credentials;
pub mod keys;
pub mod mint;
pub mod redact;
mod verify;

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_core::{
    ChannelName, ErrorCode,
    auth::{Claims, ClientPublish, Decision, Rules, can_publish, can_read, namespace_of},
};
use hyper::{Response, header};

pub use self::{
    keys::KeyError,
    verify::{Expectations, TokenError, Verifier},
};
use crate::{
    config::Config,
    http::{Body, error},
};

/// A verified subscriber: its token's claims, shared by everything the connection does.
pub type Identity = Arc<Claims>;

/// Why a request or op was refused: `unauthorized` / `token_expired` (401) or `forbidden` (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The HTTP error response; a 401 carries `WWW-Authenticate: Bearer`.
    pub fn response(&self) -> Response<Body> {
        let mut resp = error(self.code, &self.message);
        if resp.status() == hyper::StatusCode::UNAUTHORIZED {
            let value = match self.code {
                ErrorCode::TokenExpired => {
                    r#"Bearer realm="herald", error="invalid_token", error_description="the token has expired""#
                }
                _ => r#"Bearer realm="herald""#,
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(value),
            );
        }
        resp
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => Refusal::new(
                ErrorCode::TokenExpired,
                "the token has expired; get a new one and reconnect",
            ),
            TokenError::Invalid(why) => {
                Refusal::new(ErrorCode::Unauthorized, format!("invalid token: {why}"))
            }
        }
    }
}

/// The node's subscriber-auth state, built once at start.
pub struct Auth {
    verifier: Option<Verifier>,
    /// Rules of the namespaces that have a `[namespaces.NAME]` table.
    namespaces: HashMap<Box<str>, Rules>,
    /// Rules of every other namespace.
    fallback: Rules,
    cookie: String,
    leeway: Duration,
}

impl Auth {
    /// Loads the keys and resolves the namespace rules. Fails only on what `Config` validation
    /// already checked, unless a key file changed in between.
    pub fn from_config(config: &Config) -> Result<Self, KeyError> {
        // Never fail open: a key source the configuration cannot name is an error, not "none".
        let source = config
            .key_source()
            .map_err(|e| KeyError::Config(e.to_string()))?;
        let verifier = match source {
            Some(source) => {
                let list = |s: &str| -> Vec<String> {
                    s.split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                };
                let expect = Expectations {
                    audience: list(&config.jwt_audience),
                    issuer: list(&config.jwt_issuer),
                    leeway: config.jwt_leeway,
                };
                Some(Verifier::new(source.load()?, &expect))
            }
            None => None,
        };
        // `allow_client_publish` predates namespaces: it sets the default, which a namespace's
        // own `client_publish` overrides. With a key configured "allowed" means "with a token".
        let default_publish = match (config.allow_client_publish, verifier.is_some()) {
            (false, _) => ClientPublish::No,
            (true, true) => ClientPublish::Token,
            (true, false) => ClientPublish::Anonymous,
        };
        let fallback = Rules {
            client_publish: default_publish,
            ..Rules::default()
        };
        let namespaces = config
            .namespaces
            .iter()
            .map(|(name, s)| {
                let rules = Rules {
                    anonymous_read: s.anonymous_read.unwrap_or(false),
                    client_publish: s.client_publish.unwrap_or(default_publish),
                    user_channels: s.user_channels.unwrap_or(false),
                };
                (Box::from(name), rules)
            })
            .collect();
        Ok(Self {
            verifier,
            namespaces,
            fallback,
            cookie: config.jwt_cookie.clone(),
            leeway: config.jwt_leeway,
        })
    }

    /// True when a subscriber key is configured (reading is deny-by-default).
    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The cookie a token may come in.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The rules of `channel`'s namespace.
    pub fn rules(&self, channel: &str) -> &Rules {
        self.namespaces
            .get(namespace_of(channel))
            .unwrap_or(&self.fallback)
    }

    /// Verifies a token (the WebSocket `auth` and `refresh` ops).
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        match &self.verifier {
            Some(v) => Ok(Arc::new(v.verify(token)?)),
            None => Err(Refusal::new(
                ErrorCode::BadRequest,
                "this server has no subscriber key configured: tokens are not used",
            )),
        }
    }

    /// Who presents `token` (found by [`credentials::find_token`]): `None` when no token was
    /// presented or auth is off; a presented token that is not valid is refused.
    pub fn identify(&self, token: Option<&str>) -> Result<Option<Identity>, Refusal> {
        match (&self.verifier, token) {
            (Some(v), Some(t)) => Ok(Some(Arc::new(v.verify(t)?))),
            _ => Ok(None),
        }
    }

    fn decide(&self, decision: Decision, what: &str, channel: &ChannelName) -> Result<(), Refusal> {
        match decision {
            Decision::Allow => Ok(()),
            Decision::Unauthorized => Err(Refusal::new(
                ErrorCode::Unauthorized,
                format!("{what} {channel} needs a token"),
            )),
            Decision::Forbidden => Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("{what} {channel} is not allowed"),
            )),
        }
    }

    /// May `who` read `channel` (subscribe, resume, history)?
    pub fn check_read(&self, who: Option<&Claims>, channel: &ChannelName) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let decision = can_read(self.rules(channel.as_str()), who, channel.as_str());
        self.decide(decision, "reading", channel)
    }

    /// May `who` publish to `channel` from a client connection?
    pub fn check_publish(
        &self,
        who: Option<&Claims>,
        channel: &ChannelName,
    ) -> Result<(), Refusal> {
        let decision = can_publish(self.rules(channel.as_str()), who, channel.as_str());
        self.decide(decision, "publishing to", channel)
    }

    /// When `who`'s token stops being valid (`exp` plus the leeway), as a timer deadline.
    pub fn expires_at(&self, who: &Claims) -> tokio::time::Instant {
        let valid_until = who.valid_until(self.leeway.as_secs());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(valid_until).saturating_sub(now);
        // Far-future tokens: a timer a year out is as good as never (and cannot overflow).
        tokio::time::Instant::now() + left.min(Duration::from_secs(365 * 86_400))
    }
}
