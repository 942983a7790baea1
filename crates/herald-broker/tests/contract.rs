//! The Broker contract (herald-testkit's `contract` suite) against every broker configuration:
//! the embedded memory broker, Redis standalone, a 3-master Redis Cluster, and a Sentinel-managed
//! primary with replicas; Sentinel and Cluster (a replica per master) also with the replicated
//! publish durability.

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_broker::{Broker, Durability, MemoryBroker, MemoryConfig, RedisBroker, RedisConfig};
use herald_testkit::{ClusterOptions, RedisCluster, RedisSentinel, RedisServer, contract};

fn redis_config(url: String, history_size: usize) -> RedisConfig {
    RedisConfig {
        url,
        history_size,
        history_ttl: Duration::from_secs(60),
        ..RedisConfig::default()
    }
}

async fn redis_node(config: RedisConfig) -> Arc<dyn Broker> {
    let broker: Arc<dyn Broker> = RedisBroker::connect(config).await.expect("connect");
    broker.ready().await.expect("ready");
    broker
}

#[tokio::test]
async fn memory() {
    // One node per history size, shared: the memory broker is a single node.
    let nodes = parking_lot::Mutex::new(HashMap::<usize, Arc<MemoryBroker>>::new());
    let factory = |history_size: usize| {
        let broker = nodes
            .lock()
            .entry(history_size)
            .or_insert_with(|| {
                MemoryBroker::new(MemoryConfig {
                    history_size,
                    ..MemoryConfig::default()
                })
            })
            .clone();
        async move { broker as Arc<dyn Broker> }
    };
    contract::run("memory", &factory).await;
}

#[tokio::test]
async fn redis_standalone() {
    let redis = RedisServer::start();
    let url = redis.url();
    let factory = |history_size| redis_node(redis_config(url.clone(), history_size));
    contract::run("redis standalone", &factory).await;
}

#[tokio::test]
async fn redis_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let factory = |history_size| redis_node(redis_config(url.clone(), history_size));
    contract::run("redis cluster", &factory).await;
}

#[tokio::test]
async fn redis_cluster_with_replicated_durability() {
    let cluster = RedisCluster::start_with(ClusterOptions {
        replicas: 1,
        ..ClusterOptions::default()
    });
    let url = cluster.url();
    let factory = |history_size| {
        redis_node(RedisConfig {
            durability: Durability::Replicated,
            // Healthy replicas: a generous bound so that a loaded machine cannot fail a step.
            wait_timeout: Duration::from_secs(10),
            ..redis_config(url.clone(), history_size)
        })
    };
    contract::run("redis cluster, replicated", &factory).await;
}

#[tokio::test]
async fn redis_sentinel() {
    let sentinel = RedisSentinel::start(1);
    let url = sentinel.url();
    let factory = |history_size| redis_node(redis_config(url.clone(), history_size));
    contract::run("redis sentinel", &factory).await;
}

#[tokio::test]
async fn redis_sentinel_with_replicated_durability() {
    let sentinel = RedisSentinel::start(1);
    let url = sentinel.url();
    let factory = |history_size| {
        redis_node(RedisConfig {
            durability: Durability::Replicated,
            // Healthy replicas: a generous bound so that a loaded machine cannot fail a step.
            wait_timeout: Duration::from_secs(10),
            ..redis_config(url.clone(), history_size)
        })
    };
    contract::run("redis sentinel, replicated", &factory).await;
}
