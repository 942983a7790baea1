//! Verifying a subscriber token: signature (by `jsonwebtoken`, with the algorithm bound to the
//! key), `exp`/`nbf`/`iat` with leeway, `aud`/`iss` when configured, then Herald's claims.

use std::{collections::HashSet, time::Duration};

use herald_core::auth::{Claims, TimeError};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde_json::value::RawValue;

use super::keys::{KeySet, VerifyingKey};

/// Why a token was refused. Messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// What the verifier checks besides the signature.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub audience: Vec<String>,
    pub issuer: Vec<String>,
    pub leeway: Duration,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: KeySet,
    /// One validation per key (its algorithms differ), in `keys` order.
    validations: Vec<Validation>,
    leeway: u64,
}

fn validation(key: &VerifyingKey, expect: &Expectations) -> Validation {
    let mut v = Validation::new(key.algorithms[0]);
    v.algorithms = key.algorithms.clone();
    v.leeway = expect.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required: HashSet<String> = HashSet::from(["exp".to_owned()]);
    if expect.audience.is_empty() {
        // Not configured: a token's `aud` is not checked (the crate would otherwise refuse
        // every token that has one).
        v.validate_aud = false;
    } else {
        v.set_audience(&expect.audience);
        required.insert("aud".into());
    }
    if !expect.issuer.is_empty() {
        v.set_issuer(&expect.issuer);
        required.insert("iss".into());
    }
    v.required_spec_claims = required;
    v
}

fn describe(kind: &ErrorKind) -> TokenError {
    let why = match kind {
        ErrorKind::ExpiredSignature => return TokenError::Expired,
        ErrorKind::ImmatureSignature => "not valid yet (nbf)",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            "its algorithm does not fit the configured key"
        }
        ErrorKind::InvalidAudience => "wrong audience (aud)",
        ErrorKind::InvalidIssuer => "wrong issuer (iss)",
        ErrorKind::MissingRequiredClaim(c) => {
            return TokenError::Invalid(format!("the `{c}` claim is missing"));
        }
        ErrorKind::InvalidClaimFormat(c) => {
            return TokenError::Invalid(format!("the `{c}` claim is malformed"));
        }
        _ => "malformed",
    };
    TokenError::Invalid(why.to_owned())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(keys: KeySet, expect: &Expectations) -> Self {
        let validations = match &keys {
            KeySet::Single(k) => vec![validation(k, expect)],
            KeySet::Jwks(ks) => ks.iter().map(|k| validation(k, expect)).collect(),
        };
        Self {
            keys,
            validations,
            leeway: expect.leeway.as_secs(),
        }
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| describe(e.kind()))?;
        // `jku`, `x5u` and any other header field naming where keys live are ignored: keys come
        // from the configuration only.
        let key = self
            .keys
            .select(header.kid.as_deref())
            .map_err(|why| TokenError::Invalid(why.to_owned()))?;
        let index = match &self.keys {
            KeySet::Single(_) => 0,
            KeySet::Jwks(ks) => ks.iter().position(|k| std::ptr::eq(k, key)).unwrap_or(0),
        };
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, &key.key, &self.validations[index])
            .map_err(|e| describe(e.kind()))?;
        let claims = Claims::parse(data.claims.get().as_bytes())
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        // `iat` in the future is not checked by the crate; the rest again, in one place.
        claims
            .check_time(now_secs(), self.leeway)
            .map_err(|e| match e {
                TimeError::Expired => TokenError::Expired,
                TimeError::NotYetValid => TokenError::Invalid("not valid yet (nbf or iat)".into()),
            })?;
        Ok(claims)
    }

    pub fn leeway(&self) -> u64 {
        self.leeway
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::keys::KeySource, config::Secret};
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(expect: Expectations) -> Verifier {
        let keys = KeySource::Secret(Secret(SECRET.to_owned()))
            .load()
            .expect("keys");
        Verifier::new(keys, &expect)
    }

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    fn in_secs(d: i64) -> i64 {
        now_secs() as i64 + d
    }

    #[test]
    fn accepts_valid_tokens_of_every_hmac_algorithm() {
        let v = verifier(Expectations::default());
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = token(
                serde_json::json!({"sub":"a","exp":in_secs(60),"channels":"news.*","aud":"x"}),
                alg,
                SECRET.as_bytes(),
            );
            let c = v.verify(&t).expect("valid");
            assert_eq!(c.sub.as_deref(), Some("a"));
        }
    }

    #[test]
    fn refuses_expired_future_forged_and_malformed_tokens() {
        let v = verifier(Expectations {
            leeway: Duration::from_secs(5),
            ..Expectations::default()
        });
        let hs = |claims| token(claims, Algorithm::HS256, SECRET.as_bytes());
        assert_eq!(
            v.verify(&hs(serde_json::json!({"exp": in_secs(-10)}))),
            Err(TokenError::Expired)
        );
        assert!(
            v.verify(&hs(serde_json::json!({"exp": in_secs(-3)})))
                .is_ok(),
            "within the leeway"
        );
        let early = v.verify(&hs(
            serde_json::json!({"exp": in_secs(60), "nbf": in_secs(30)}),
        ));
        assert!(matches!(early, Err(TokenError::Invalid(m)) if m.contains("not valid yet")));
        let issued_later = v.verify(&hs(
            serde_json::json!({"exp": in_secs(60), "iat": in_secs(30)}),
        ));
        assert!(matches!(issued_later, Err(TokenError::Invalid(m)) if m.contains("not valid yet")));
        let no_exp = v.verify(&hs(serde_json::json!({"sub": "a"})));
        assert!(matches!(no_exp, Err(TokenError::Invalid(m)) if m.contains("exp")));
        let forged = token(
            serde_json::json!({"exp": in_secs(60)}),
            Algorithm::HS256,
            &[b'x'; 32],
        );
        assert_eq!(
            v.verify(&forged),
            Err(TokenError::Invalid("bad signature".into()))
        );
        for garbage in ["", "a.b", "a.b.c", "not a token", "eyJhbGciOiJIUzI1NiJ9..."] {
            assert!(
                matches!(v.verify(garbage), Err(TokenError::Invalid(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(&format!(r#"{{"exp":{},"channels":"*"}}"#, in_secs(60)));
        let v = verifier(Expectations::default());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let t = format!("{}.{payload}.", b64(header));
            assert!(
                matches!(v.verify(&t), Err(TokenError::Invalid(_))),
                "{header}"
            );
        }
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = verifier(Expectations {
            audience: vec!["herald".into()],
            issuer: vec!["auth.example".into()],
            ..Expectations::default()
        });
        let hs = |claims| token(claims, Algorithm::HS256, SECRET.as_bytes());
        let exp = in_secs(60);
        assert!(
            v.verify(&hs(
                serde_json::json!({"exp":exp,"aud":"herald","iss":"auth.example"})
            ))
            .is_ok()
        );
        assert!(
            v.verify(&hs(
                serde_json::json!({"exp":exp,"aud":["x","herald"],"iss":"auth.example"})
            ))
            .is_ok()
        );
        for (claims, why) in [
            (
                serde_json::json!({"exp":exp,"aud":"other","iss":"auth.example"}),
                "audience",
            ),
            (serde_json::json!({"exp":exp,"iss":"auth.example"}), "aud"),
            (
                serde_json::json!({"exp":exp,"aud":"herald","iss":"evil"}),
                "issuer",
            ),
            (serde_json::json!({"exp":exp,"aud":"herald"}), "iss"),
        ] {
            let err = v.verify(&hs(claims.clone())).expect_err("refused");
            assert!(err.to_string().contains(why), "{claims}: {err}");
        }
    }
}
