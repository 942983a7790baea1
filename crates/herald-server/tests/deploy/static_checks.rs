//! What can be checked without a Docker engine: docker-compose.yml parses and wires the services
//! together, every mounted host path exists, the Dockerfile is multi-stage, non-root and
//! health-checked, and the Grafana and Prometheus files are well formed.

use std::process::Command;

use serde_yaml::Value;

use crate::support::{repo_file, repo_root};

fn compose() -> Value {
    serde_yaml::from_str(&repo_file("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .expect("yaml")
                        .trim()
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_has_every_service_with_healthchecks_ports_and_existing_mounts() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    for name in ["redis", "herald", "nginx", "prometheus", "grafana"] {
        let svc = &doc["services"][name];
        assert!(svc.is_mapping(), "service {name} exists");
        assert!(
            svc["build"].is_mapping() || svc["image"].is_string(),
            "{name} has an image or a build"
        );
    }
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        // Every bind-mounted host path exists in the repository.
        for vol in strings(&svc["volumes"]) {
            let host = vol.split(':').next().expect("host part");
            if host.starts_with('.') || host.starts_with('/') {
                let path = repo_root().join(host);
                assert!(
                    path.exists(),
                    "{name} mounts {host}, which is not in the repo"
                );
            } else {
                assert!(
                    doc["volumes"].get(host).is_some(),
                    "{name} uses volume {host}, which is not declared"
                );
            }
        }
        // Health checks everywhere, so `depends_on: service_healthy` and `docker ps` mean something.
        let test = strings(&svc["healthcheck"]["test"]);
        assert!(
            test.first().is_some_and(|t| t == "CMD" || t == "CMD-SHELL"),
            "{name} has a healthcheck: {test:?}"
        );
        for dep in svc["depends_on"]
            .as_mapping()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_else(|| svc["depends_on"].as_sequence().cloned().unwrap_or_default())
        {
            let dep = dep.as_str().expect("dependency name");
            assert!(
                services.contains_key(dep),
                "{name} depends on unknown {dep}"
            );
        }
    }

    // Published ports: nginx 8080, prometheus 9090, grafana 3000; herald none (so it can scale).
    let ports = |name: &str| strings(&doc["services"][name]["ports"]);
    assert!(
        ports("nginx").contains(&"8080:8080".to_owned()),
        "{:?}",
        ports("nginx")
    );
    assert!(ports("prometheus").contains(&"9090:9090".to_owned()));
    assert!(ports("grafana").contains(&"3000:3000".to_owned()));
    let herald = &doc["services"]["herald"];
    assert!(
        herald["ports"].is_null() && herald["container_name"].is_null(),
        "herald publishes no host port and has no fixed name: `--scale herald=N` must work"
    );

    // herald: three replicas from deploy/Dockerfile on Redis, with a raised fd limit.
    assert_eq!(herald["deploy"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        herald["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    let context = herald["build"]["context"].as_str().expect("build context");
    assert!(repo_root().join(context).join("deploy/Dockerfile").exists());
    assert_eq!(
        herald["environment"]["HERALD_REDIS_URL"].as_str(),
        Some("redis://redis:6379")
    );
    assert_eq!(
        herald["depends_on"]["redis"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(herald["ulimits"]["nofile"]["soft"].as_u64().unwrap_or(0) >= 65536);
    let drain_grace = herald["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let grace: u64 = drain_grace.trim_end_matches('s').parse().expect("seconds");
    assert!(
        grace > 12,
        "stop_grace_period covers the 10s drain window plus 2s"
    );

    // redis: AOF on.
    let redis_cmd = strings(&doc["services"]["redis"]["command"]).join(" ");
    assert!(redis_cmd.contains("--appendonly yes"), "{redis_cmd}");

    // The mounts land where the configs expect them.
    let mounts = |name: &str| strings(&doc["services"][name]["volumes"]).join(" ");
    assert!(mounts("nginx").contains("./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf"));
    // HTTPS: the certificate directory nginx.conf reads, made by the entrypoint script if empty.
    assert!(ports("nginx").contains(&"8443:8443".to_owned()));
    assert!(mounts("nginx").contains(
        "./deploy/nginx/selfsigned-cert.sh:/docker-entrypoint.d/40-herald-selfsigned-cert.sh"
    ));
    assert!(mounts("nginx").contains("nginx-certs:/etc/nginx/certs"));
    assert!(
        mounts("prometheus")
            .contains("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml")
    );
    assert!(mounts("grafana").contains("./deploy/grafana/provisioning:/etc/grafana/provisioning"));
    assert!(mounts("grafana").contains("./deploy/grafana/dashboards:/var/lib/grafana/dashboards"));

    // Grafana: anonymous read access.
    let env = &doc["services"]["grafana"]["environment"];
    assert_eq!(env["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("true"));
    assert_eq!(env["GF_AUTH_ANONYMOUS_ORG_ROLE"].as_str(), Some("Viewer"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_health_checked() {
    let text = repo_file("deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS builder"));
    assert!(
        froms
            .last()
            .expect("runtime")
            .contains("debian:bookworm-slim")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release -p herald-server")),
        "builds the herald binary"
    );
    assert!(lines.iter().any(|l| l.starts_with("COPY --from=builder")));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "non-root: {user}"
    );
    let health = lines
        .iter()
        .position(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    assert!(
        lines[health..]
            .iter()
            .take(3)
            .any(|l| l.contains("/healthz")),
        "the health check hits /healthz"
    );
    // The health check's tool is installed in the runtime stage.
    let runtime = text.rsplit_once("\nFROM ").expect("runtime stage").1;
    assert!(runtime.contains("install -y --no-install-recommends ca-certificates curl"));
    assert!(text.contains("HERALD_LISTEN=0.0.0.0:8080"));
    assert!(lines.contains(&"EXPOSE 8080"));
    assert!(
        repo_root().join("deploy/Dockerfile.dockerignore").exists(),
        "the build context leaves target/ out"
    );
}

#[test]
fn grafana_provisioning_points_at_the_dashboard_and_prometheus() {
    let ds: Value = serde_yaml::from_str(&repo_file(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource yaml");
    let source = &ds["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));
    let uid = source["uid"].as_str().expect("uid");

    let prov: Value = serde_yaml::from_str(&repo_file(
        "deploy/grafana/provisioning/dashboards/herald.yml",
    ))
    .expect("dashboard provider yaml");
    assert_eq!(
        prov["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "where docker-compose.yml mounts deploy/grafana/dashboards"
    );

    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/dashboards/herald.json"))
            .expect("dashboard JSON");
    assert_eq!(dash["uid"], "herald");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "unique panel ids"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"].as_str(), Some(uid), "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
    }
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo_root().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("run promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nginx_accepts_the_config_with_only_the_upstream_substituted() {
    let dir = crate::support::procs::TempDir::new("nginx-t");
    let tls = crate::support::procs::NginxTls::selfsigned(&dir, 18443);
    let conf = crate::support::procs::nginx_conf(18080, 15353, 18081, &tls);
    let path = dir.path("nginx.conf");
    std::fs::write(&path, conf).expect("write");
    let out = Command::new(crate::support::procs::nginx_bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&dir.0)
        .arg("-g")
        .arg(format!("pid {};", dir.path("nginx.pid").display()))
        .output()
        .expect("run nginx (apt-get install nginx)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The unsubstituted file is the compose one: Docker's DNS, the `herald` service, port 8080.
    let original = repo_file("deploy/nginx/nginx.conf");
    for line in [
        "listen 8080;",
        "resolver 127.0.0.11 valid=5s",
        "set $herald_upstream herald:8080;",
        "proxy_pass http://$herald_upstream;",
        "listen 8443 ssl http2;",
        "ssl_certificate /etc/nginx/certs/tls.crt;",
        "ssl_certificate_key /etc/nginx/certs/tls.key;",
    ] {
        assert!(original.contains(line), "nginx.conf has {line:?}");
    }
    assert!(
        !original.contains("ip_hash")
            && !original.contains("sticky")
            && !original.contains("hash ")
    );
}

/// The body of the nginx `location <spec> { ... }` block (locations here hold no nested blocks).
fn location<'a>(conf: &'a str, spec: &str) -> &'a str {
    let start = conf
        .find(&format!("location {spec} {{"))
        .unwrap_or_else(|| panic!("nginx.conf has `location {spec}`"));
    let body = &conf[start..];
    &body[..body.find('}').expect("block end")]
}

#[test]
fn nginx_streams_unbuffered_upgrades_websockets_and_retries_only_what_is_safe() {
    let conf = repo_file("deploy/nginx/nginx.conf");
    let directives: Vec<&str> = conf
        .lines()
        .map(|l| l.split('#').next().expect("text").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let has = |d: &str| directives.contains(&d);
    // WebSocket upgrade headers for every proxied request; no location overrides them (a
    // location with its own proxy_set_header would drop every inherited one).
    assert!(has("proxy_http_version 1.1;"));
    assert!(has("proxy_set_header Upgrade $http_upgrade;"));
    assert!(has("proxy_set_header Connection $connection_upgrade;"));
    assert_eq!(conf.matches("proxy_set_header Upgrade").count(), 1);
    // SSE: unbuffered, uncached, long reads, a draining node's 503 retried elsewhere.
    let sse = location(&conf, "= /v1/sse");
    for d in [
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_read_timeout 1h;",
        "proxy_next_upstream error timeout http_502 http_503;",
    ] {
        assert!(sse.contains(d), "SSE location lacks {d}");
    }
    let ws = location(&conf, "= /v1/ws");
    assert!(ws.contains("proxy_read_timeout 1h;"));
    assert!(
        ws.contains("http_503"),
        "a draining node's 503 is retried elsewhere"
    );
    // Publishing: never re-sent once a node got it (no non_idempotent, no retry on 503).
    let publish = location(&conf, "~ ^/v1/(publish|broadcast)$");
    assert!(publish.contains("proxy_next_upstream error timeout;"));
    assert!(!directives.iter().any(|d| d.contains("non_idempotent")));
    // Metrics are not public.
    assert!(location(&conf, "= /metrics").contains("return 404"));
    // Every proxy_pass goes through the re-resolved variable: no static upstream.
    for line in directives.iter().filter(|l| l.starts_with("proxy_pass")) {
        assert_eq!(*line, "proxy_pass http://$herald_upstream;");
    }
    assert!(!directives.iter().any(|d| d.starts_with("upstream ")));
}
