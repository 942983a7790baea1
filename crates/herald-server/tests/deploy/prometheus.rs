//! Debian's prometheus with deploy/prometheus/prometheus.yml (targets substituted) scrapes real
//! herald nodes, and every dashboard query is valid PromQL against it.

use serde_json::Value;

use crate::{
    dashboard::dashboard_exprs,
    support::{Herald, poll, procs::Prometheus},
};

#[tokio::test]
async fn prometheus_with_the_deploy_config_sees_every_node_up() {
    let nodes = [Herald::start(&[]).await, Herald::start(&[]).await];
    let targets: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.addr())).collect();
    let prom = Prometheus::start(&targets).await;
    let http = reqwest::Client::new();

    let want: Vec<String> = nodes.iter().map(Herald::addr).collect();
    let url = prom.url("/api/v1/targets?state=active");
    poll("every herald target up in prometheus", || async {
        let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
        let active = v["data"]["activeTargets"].as_array()?;
        let up: Vec<String> = active
            .iter()
            .filter(|t| t["labels"]["job"] == "herald" && t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        want.iter().all(|w| up.contains(w)).then_some(())
    })
    .await;

    // The samples are in, under the names the dashboard uses (`up` by instance; a node metric).
    let query = |q: &str| {
        let http = http.clone();
        let url = prom.url("/api/v1/query");
        let q = q.to_owned();
        async move {
            let v: Value = http
                .get(&url)
                .query(&[("query", q.as_str())])
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("JSON");
            assert_eq!(v["status"], "success", "{q}: {v}");
            v["data"]["result"].as_array().cloned().unwrap_or_default()
        }
    };
    assert_eq!(query(r#"up{job="herald"} == 1"#).await.len(), 2);
    poll("herald_subscriptions scraped from both nodes", || async {
        (query(r#"herald_subscriptions{job="herald"}"#).await.len() == 2).then_some(())
    })
    .await;

    // Every dashboard query parses and evaluates (Grafana's variables filled in as Grafana would).
    for expr in dashboard_exprs() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        query(&q).await;
    }
}
