//! The Redis ACL rules Herald documents (docs/operations.md, "TLS and ACL"), so that every test
//! logging in as a restricted user checks exactly what the docs promise is enough.

/// What user `herald` may do on a standalone server or behind Sentinel.
pub const HERALD_RULES: &[&str] = &[
    "~herald:*",
    "&herald:*",
    "-@all",
    "+@read",
    "+@write",
    "+@pubsub",
    "+@scripting",
    "+@connection",
    "+time",
    "+role",
    "+wait",
];

/// What a Cluster adds: the slot map (the client's discovery and the self-probe's plan) and
/// the node id (with replicated durability, where a write ran).
pub const CLUSTER_RULES: &[&str] = &["+cluster|slots", "+cluster|myid"];

/// `redis-server` arguments creating user `name` with `password` and `rules`.
pub fn user_args(name: &str, password: &str, rules: &[&[&str]]) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        name.to_owned(),
        "on".to_owned(),
        format!(">{password}"),
    ];
    args.extend(rules.iter().flat_map(|r| r.iter()).map(|r| r.to_string()));
    args
}
