//! The subscriber-auth part of the configuration: the secret's type and the checks made at
//! start (one key source, a long enough HMAC secret, key files that load, namespace settings
//! that need a key).

use super::{Config, ConfigError, Secret};
use crate::auth::keys::KeySource;

/// Shortest HMAC secret accepted: 256 bits, the output size of HS256.
pub const MIN_SECRET_BYTES: usize = 32;

pub(super) fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// A cookie name is an RFC 6265 token.
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl Config {
    /// Where subscriber keys come from, or `None` when none is configured (open server).
    pub fn key_source(&self) -> Result<Option<KeySource>, ConfigError> {
        let set: Vec<&'static str> = [
            ("jwt_secret", !self.jwt_secret.0.is_empty()),
            ("jwt_secret_file", !self.jwt_secret_file.is_empty()),
            ("jwt_public_key_file", !self.jwt_public_key_file.is_empty()),
            ("jwks_file", !self.jwks_file.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, is_set)| is_set.then_some(name))
        .collect();
        let source = match set.as_slice() {
            [] => return Ok(None),
            ["jwt_secret"] => KeySource::Secret(self.jwt_secret.clone()),
            ["jwt_secret_file"] => KeySource::SecretFile(self.jwt_secret_file.clone().into()),
            ["jwt_public_key_file"] => {
                KeySource::PublicKeyFile(self.jwt_public_key_file.clone().into())
            }
            ["jwks_file"] => KeySource::JwksFile(self.jwks_file.clone().into()),
            several => {
                return Err(ConfigError::Invalid {
                    option: "jwt_secret",
                    reason: format!(
                        "set only one subscriber key source, not {}",
                        several.join(" and ")
                    ),
                });
            }
        };
        Ok(Some(source))
    }

    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: String| Err(ConfigError::Invalid { option, reason });
        let source = self.key_source()?;
        if let Some(source) = &source
            && let Err(e) = source.load()
        {
            return invalid(source.option(), e.to_string());
        }
        if !valid_cookie_name(&self.jwt_cookie) {
            return invalid(
                "jwt_cookie",
                format!("{:?} is not a valid cookie name", self.jwt_cookie),
            );
        }
        if self.auth_timeout.is_zero() {
            return invalid("auth_timeout", "must be greater than 0".into());
        }
        if source.is_none() {
            for (name, ns) in self.namespaces.iter() {
                if ns.user_channels == Some(true) {
                    return invalid(
                        "namespaces",
                        format!(
                            "[namespaces.{name}] user_channels needs a subscriber key (jwt_secret, jwt_secret_file, jwt_public_key_file or jwks_file)"
                        ),
                    );
                }
                if ns.presence == Some(true) {
                    return invalid(
                        "namespaces",
                        format!(
                            "[namespaces.{name}] presence needs a subscriber key (jwt_secret, jwt_secret_file, jwt_public_key_file or jwks_file): room members are the users of tokens"
                        ),
                    );
                }
                if ns.client_publish == Some(herald_core::auth::ClientPublish::Token) {
                    return invalid(
                        "namespaces",
                        format!(
                            "[namespaces.{name}] client_publish = \"token\" needs a subscriber key (jwt_secret, jwt_secret_file, jwt_public_key_file or jwks_file)"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
            .expect("parses");
        Config::from_cli(cli)
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let secret = "a-secret-that-is-long-enough-0123456789";
        let c = config(&["--jwt-secret", secret]).expect("valid");
        assert!(!format!("{c:?}").contains(secret));
        assert_eq!(format!("{:?}", c.jwt_secret), "<redacted>");
        assert!(matches!(c.key_source(), Ok(Some(KeySource::Secret(_)))));
        assert!(matches!(config(&[]).expect("valid").key_source(), Ok(None)));
    }

    #[test]
    fn unsafe_auth_settings_name_their_option() {
        let refused = |args: &[&str]| match config(args) {
            Err(ConfigError::Invalid { option, .. }) => option,
            other => panic!("{args:?} accepted: {other:?}"),
        };
        assert_eq!(refused(&["--jwt-secret", "short"]), "jwt_secret");
        assert_eq!(
            refused(&["--jwt-secret", &"s".repeat(32), "--jwks-file", "x"]),
            "jwt_secret"
        );
        assert_eq!(
            refused(&["--jwt-public-key-file", "/nonexistent.pem"]),
            "jwt_public_key_file"
        );
        assert_eq!(refused(&["--jwt-cookie", "a b"]), "jwt_cookie");
        assert_eq!(refused(&["--auth-timeout", "0s"]), "auth_timeout");
        assert!(config(&["--jwt-secret", &"s".repeat(32)]).is_ok());
    }
}
