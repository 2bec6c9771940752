//! Requests per call against a real etcd (`KVSTORE_ETCD_URL`), counted by the server
//! (`grpc_server_started_total` of unary calls on its `/metrics` page, served on the client
//! port by default; source: etcd docs, "Monitoring etcd"): an uncontended lock and its unlock
//! are three requests — the lease grant, one transaction that queues and takes, the revoke.
//! One test in this file, so no other test's requests are counted.

use std::str::FromStr;

use kvstore_core::{LockOptions, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{backend_url, ok, scratch_dir};

/// Lock and unlock rounds.
const ROUNDS: u64 = 50;

/// Unary gRPC calls the server has started, by method.
async fn unary_calls(http: &reqwest::Client, metrics: &str) -> Vec<(String, u64)> {
    let text = http
        .get(metrics)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("etcd's /metrics")
        .text()
        .await
        .expect("the metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{") && l.contains("grpc_type=\"unary\"")
        })
        .filter_map(|l| {
            let method = l.split("grpc_method=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((method.to_owned(), count))
        })
        .collect()
}

fn total(calls: &[(String, u64)]) -> u64 {
    calls.iter().map(|(_, n)| n).sum()
}

#[tokio::test]
async fn an_uncontended_lock_and_unlock_are_three_requests() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let config = EtcdConfig::from_str(&url).expect("the URL");
    let metrics = format!("{}/metrics", config.endpoints[0]);
    let http = reqwest::Client::new();
    let store = ok(EtcdStore::open(config).await, "open");
    let key = format!("{}/lock", scratch_dir("requests"));
    // A TTL long enough that no renewal falls inside the rounds.
    let opts = LockOptions::default().with_ttl(std::time::Duration::from_secs(60));
    let mut locker = ok(store.new_lock(&key, Some(&opts)).await, "new_lock");
    // One round first, so that a connection's first calls are not counted.
    ok(locker.lock().await, "lock");
    ok(locker.unlock().await, "unlock");
    let before = unary_calls(&http, &metrics).await;
    let mut tokens = Vec::new();
    for _ in 0..ROUNDS {
        ok(locker.lock().await, "lock");
        tokens.push(locker.fencing_token().expect("a held lock's token"));
        ok(locker.unlock().await, "unlock");
    }
    let after = unary_calls(&http, &metrics).await;
    let by_method: Vec<(String, u64)> = after
        .iter()
        .map(|(method, n)| {
            let was = before
                .iter()
                .find(|(m, _)| m == method)
                .map_or(0, |(_, n)| *n);
            (method.clone(), n - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let requests = total(&after) - total(&before);
    // Five per round before (grant, waiter put, range, taking txn, revoke).
    assert_eq!(
        requests,
        3 * ROUNDS,
        "{requests} requests for {ROUNDS} locks and unlocks: {by_method:?}"
    );
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "each holder's fencing token is greater: {tokens:?}"
    );
    let _ = store.close().await;
}
