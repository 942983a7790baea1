//! Public keys and JWKS: the algorithm is bound to the key type, whatever the token's header
//! says; keys come from files, never from a URL in the token (`jku`, `x5u`).

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::json;

use super::{TempDir, alg_none, claims, keys, sign, sse_refused};
use crate::support::{Herald, clients::Sse};

/// Status of an SSE subscribe to `news.a` with `token`.
async fn status(node: &Herald, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    let sse = Sse::try_connect_with(
        &node.url("/v1/sse?channel=news.a"),
        None,
        &[("authorization", &bearer)],
    )
    .await
    .expect("request");
    sse.status
}

#[tokio::test]
async fn an_rsa_public_key_verifies_rs_and_ps_tokens_and_refuses_algorithm_confusion() {
    let k = &keys().rsa;
    let node = Herald::start(&[
        "--jwt-public-key-file",
        k.public_path.to_str().expect("utf8"),
    ])
    .await;
    let c = claims(Some("a"), &["news.*"], 60);
    let private = EncodingKey::from_rsa_pem(k.private_pem.as_bytes()).expect("rsa key");
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
        assert_eq!(
            status(&node, &sign(&Header::new(alg), &c, &private)).await,
            200,
            "{alg:?}"
        );
    }
    // The classic confusion: HS256 "signed" with the public key as the HMAC secret.
    let confused = sign(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(k.public_pem.as_bytes()),
    );
    let bearer = format!("Bearer {confused}");
    let url = node.url("/v1/sse?channel=news.a");
    assert_eq!(
        sse_refused(&url, None, &[("authorization", &bearer)]).await,
        (401, "unauthorized".into())
    );
    let other =
        EncodingKey::from_rsa_pem(keys().rsa_other.private_pem.as_bytes()).expect("rsa key");
    assert_eq!(
        status(&node, &sign(&Header::new(Algorithm::RS256), &c, &other)).await,
        401,
        "another key's signature"
    );
    assert_eq!(status(&node, &alg_none(&c)).await, 401, "alg none");
    let ec = EncodingKey::from_ec_pem(keys().ec.private_pem.as_bytes()).expect("ec key");
    assert_eq!(
        status(&node, &sign(&Header::new(Algorithm::ES256), &c, &ec)).await,
        401,
        "an EC token for an RSA key"
    );
}

#[tokio::test]
async fn ec_and_ed25519_public_keys_verify_their_own_algorithm_only() {
    let c = claims(None, &["news.*"], 60);
    let ec = &keys().ec;
    let node = Herald::start(&[
        "--jwt-public-key-file",
        ec.public_path.to_str().expect("utf8"),
    ])
    .await;
    let ec_key = EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).expect("ec key");
    assert_eq!(
        status(&node, &sign(&Header::new(Algorithm::ES256), &c, &ec_key)).await,
        200
    );
    let confused = sign(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(ec.public_pem.as_bytes()),
    );
    assert_eq!(status(&node, &confused).await, 401);

    let ed = &keys().ed;
    let node = Herald::start(&[
        "--jwt-public-key-file",
        ed.public_path.to_str().expect("utf8"),
    ])
    .await;
    let ed_key = EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).expect("ed key");
    assert_eq!(
        status(&node, &sign(&Header::new(Algorithm::EdDSA), &c, &ed_key)).await,
        200
    );
    let confused = sign(
        &Header::new(Algorithm::HS512),
        &c,
        &EncodingKey::from_secret(ed.public_pem.as_bytes()),
    );
    assert_eq!(status(&node, &confused).await, 401);
}

#[tokio::test]
async fn a_jwks_picks_the_key_by_kid_and_never_follows_jku_or_x5u() {
    let rsa = EncodingKey::from_rsa_pem(keys().rsa.private_pem.as_bytes()).expect("rsa key");
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("jwk");
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let ec = EncodingKey::from_ec_pem(keys().ec.private_pem.as_bytes()).expect("ec key");
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).expect("jwk");
    ec_jwk.common.key_id = Some("ec-1".into());
    let dir = TempDir::new("jwks");
    let path = dir.file("jwks.json", &json!({"keys": [rsa_jwk, ec_jwk]}).to_string());
    let node = Herald::start(&["--jwks-file", path.to_str().expect("utf8")]).await;
    let c = claims(None, &["news.*"], 60);
    let with = |alg, kid: Option<&str>| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        h
    };
    assert_eq!(
        status(
            &node,
            &sign(&with(Algorithm::RS256, Some("rsa-1")), &c, &rsa)
        )
        .await,
        200
    );
    assert_eq!(
        status(&node, &sign(&with(Algorithm::ES256, Some("ec-1")), &c, &ec)).await,
        200
    );
    assert_eq!(
        status(
            &node,
            &sign(&with(Algorithm::RS256, Some("nope")), &c, &rsa)
        )
        .await,
        401,
        "unknown kid"
    );
    assert_eq!(
        status(&node, &sign(&with(Algorithm::RS256, None), &c, &rsa)).await,
        401,
        "no kid, several keys"
    );
    assert_eq!(
        status(
            &node,
            &sign(&with(Algorithm::ES256, Some("rsa-1")), &c, &ec)
        )
        .await,
        401,
        "kid of another key type"
    );
    // An attacker's key announced through `jku`/`x5u` (and kid): never fetched, never used.
    let attacker =
        EncodingKey::from_rsa_pem(keys().rsa_other.private_pem.as_bytes()).expect("rsa key");
    let mut evil = with(Algorithm::RS256, Some("rsa-1"));
    evil.jku = Some("http://127.0.0.1:9/attacker-jwks.json".into());
    evil.x5u = Some("http://127.0.0.1:9/attacker.pem".into());
    assert_eq!(
        status(&node, &sign(&evil, &c, &attacker)).await,
        401,
        "jku/x5u are not followed"
    );
    // The same headers on a token signed with the configured key change nothing.
    assert_eq!(
        status(&node, &sign(&evil, &c, &rsa)).await,
        200,
        "jku/x5u are ignored"
    );
}
