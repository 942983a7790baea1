//! Who may read and publish what: the decision from a namespace's rules and a token's claims.
//!
//! A channel's namespace is the part of its name before the first `:` (`chat:room1` is in
//! `chat`); a name without `:` is in [`DEFAULT_NAMESPACE`]. Each namespace has [`Rules`]; the
//! server looks them up and asks [`can_read`] / [`can_publish`]. Both are pure so the whole
//! policy is unit tested here, without a server.

use super::claims::Claims;

/// The namespace of channel names without a `:`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace of `channel`.
pub fn namespace_of(channel: &str) -> &str {
    match channel.split_once(':') {
        Some((ns, _)) => ns,
        None => DEFAULT_NAMESPACE,
    }
}

/// Who may publish from a client connection (the WebSocket `publish` op).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPublish {
    /// Nobody: only publishers with an API key, over HTTP.
    No,
    /// Holders of a token whose `publish` claim matches the channel.
    Token,
    /// Every client, with or without a token.
    Anonymous,
}

impl ClientPublish {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "no" => Some(Self::No),
            "token" => Some(Self::Token),
            "anonymous" => Some(Self::Anonymous),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Token => "token",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The access rules of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Channels of the namespace are readable without a token.
    pub anonymous_read: bool,
    pub client_publish: ClientPublish,
    /// `NAME:ID` is readable only with a token whose `sub` is `ID`, whatever else the token
    /// grants and whatever `anonymous_read` says.
    pub user_channels: bool,
}

impl Default for Rules {
    /// Deny by default: nothing anonymous, no client publish, no user channels.
    fn default() -> Self {
        Self {
            anonymous_read: false,
            client_publish: ClientPublish::No,
            user_channels: false,
        }
    }
}

/// The answer to "may this client do that?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Not without a token: the client presented none (HTTP 401).
    Unauthorized,
    /// The client's token does not allow it (HTTP 403), or nobody may.
    Forbidden,
}

fn refuse(claims: Option<&Claims>) -> Decision {
    match claims {
        None => Decision::Unauthorized,
        Some(_) => Decision::Forbidden,
    }
}

/// The user id of a user channel (`NAME:ID`), when the namespace has user channels.
fn user_id<'a>(rules: &Rules, channel: &'a str) -> Option<&'a str> {
    if !rules.user_channels {
        return None;
    }
    channel.split_once(':').map(|(_, id)| id)
}

/// May the holder of `claims` (or an anonymous client, `None`) read `channel`?
pub fn can_read(rules: &Rules, claims: Option<&Claims>, channel: &str) -> Decision {
    if let Some(id) = user_id(rules, channel) {
        return match claims {
            Some(c) if c.sub.as_deref() == Some(id) => Decision::Allow,
            other => refuse(other),
        };
    }
    if rules.anonymous_read || claims.is_some_and(|c| c.channels.matches(channel)) {
        return Decision::Allow;
    }
    refuse(claims)
}

/// May the holder of `claims` (or an anonymous client) publish to `channel` from a client
/// connection?
pub fn can_publish(rules: &Rules, claims: Option<&Claims>, channel: &str) -> Decision {
    match rules.client_publish {
        ClientPublish::No => Decision::Forbidden,
        ClientPublish::Anonymous => Decision::Allow,
        ClientPublish::Token if claims.is_some_and(|c| c.publish.matches(channel)) => {
            Decision::Allow
        }
        ClientPublish::Token => refuse(claims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        Claims::parse(json.as_bytes()).expect("valid claims")
    }

    #[test]
    fn namespaces_are_the_part_before_the_first_colon() {
        assert_eq!(namespace_of("chat:room1"), "chat");
        assert_eq!(namespace_of("chat:room:1"), "chat");
        assert_eq!(namespace_of("news"), DEFAULT_NAMESPACE);
        assert_eq!(namespace_of(":x"), "");
    }

    #[test]
    fn reading_is_denied_by_default_and_granted_by_patterns() {
        let rules = Rules::default();
        let news = claims(r#"{"exp":1,"channels":["news.*"]}"#);
        assert_eq!(can_read(&rules, Some(&news), "news.sport"), Decision::Allow);
        for denied in ["newsletter", "news", "user:1"] {
            assert_eq!(
                can_read(&rules, Some(&news), denied),
                Decision::Forbidden,
                "{denied}"
            );
        }
        assert_eq!(can_read(&rules, None, "news.sport"), Decision::Unauthorized);
        let open = Rules {
            anonymous_read: true,
            ..Rules::default()
        };
        assert_eq!(can_read(&open, None, "news.sport"), Decision::Allow);
        assert_eq!(can_read(&open, Some(&news), "other"), Decision::Allow);
    }

    #[test]
    fn user_channels_belong_to_their_user_only() {
        let rules = Rules {
            user_channels: true,
            anonymous_read: true,
            ..Rules::default()
        };
        let u42 = claims(r#"{"exp":1,"sub":"42"}"#);
        let u7_everything = claims(r#"{"exp":1,"sub":"7","channels":"*"}"#);
        let nobody = claims(r#"{"exp":1,"channels":"*"}"#);
        assert_eq!(can_read(&rules, Some(&u42), "user:42"), Decision::Allow);
        assert_eq!(
            can_read(&rules, Some(&u42), "user:420"),
            Decision::Forbidden
        );
        assert_eq!(
            can_read(&rules, Some(&u7_everything), "user:42"),
            Decision::Forbidden
        );
        assert_eq!(
            can_read(&rules, Some(&nobody), "user:42"),
            Decision::Forbidden
        );
        assert_eq!(can_read(&rules, None, "user:42"), Decision::Unauthorized);
        // A user channel namespace without an id part is anybody's by the other rules.
        assert_eq!(can_read(&rules, None, "user"), Decision::Allow);
    }

    #[test]
    fn client_publish_modes() {
        let chat = claims(r#"{"exp":1,"publish":["chat:*"]}"#);
        let reader = claims(r#"{"exp":1,"channels":["chat:*"]}"#);
        let mode = |client_publish| Rules {
            client_publish,
            ..Rules::default()
        };
        assert_eq!(
            can_publish(&mode(ClientPublish::No), Some(&chat), "chat:1"),
            Decision::Forbidden
        );
        assert_eq!(
            can_publish(&mode(ClientPublish::Anonymous), None, "chat:1"),
            Decision::Allow
        );
        let token = mode(ClientPublish::Token);
        assert_eq!(can_publish(&token, Some(&chat), "chat:1"), Decision::Allow);
        assert_eq!(
            can_publish(&token, Some(&reader), "chat:1"),
            Decision::Forbidden
        );
        assert_eq!(can_publish(&token, None, "chat:1"), Decision::Unauthorized);
        for s in ["no", "token", "anonymous"] {
            assert_eq!(ClientPublish::parse(s).map(ClientPublish::as_str), Some(s));
        }
        assert_eq!(ClientPublish::parse("yes"), None);
    }
}
