//! Against a Redis started with its default settings (`KVSTORE_REDIS_STOCK_URL`; ci/test.sh
//! starts one): keyspace notifications are off, so `capabilities()` says watches, per-key
//! events and locks do not work, and they fail with a permanent `InvalidConfig` naming the
//! setting. Plain reads and writes, and `list_at`, work.

mod common;

use kvstore_core::{Error, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{backend_url, cleanup, ok, scratch_dir};
use std::str::FromStr;

#[tokio::test]
async fn a_stock_server_reports_watches_and_locks_as_unavailable() {
    let Some(url) = backend_url("KVSTORE_REDIS_STOCK_URL") else {
        return;
    };
    let config = RedisConfig::from_str(&url).unwrap();
    let store = ok(RedisStore::open(config).await, "connect");
    let caps = store.capabilities();
    assert!(
        !caps.watch && !caps.watch_tree && !caps.lock && !caps.events,
        "capabilities must agree with the server: {caps:?}"
    );
    assert!(caps.ttl && caps.keep_alive, "{caps:?}");

    let dir = scratch_dir("stock");
    let key = format!("{dir}/k");
    let pair = ok(store.put(&key, b"v", None).await, "put");
    assert_eq!(ok(store.get(&key, None).await, "get"), pair);

    for (what, err) in [
        ("watch", store.watch(&key, None).await.err()),
        ("watch_tree", store.watch_tree(&dir, None).await.err()),
        ("new_lock", store.new_lock(&key, None).await.err()),
        ("watch_events", store.watch_events(&dir, None).await.err()),
    ] {
        match err {
            Some(err @ Error::InvalidConfig { .. }) => {
                let text = kvstore_testutils::error_chain(&err);
                assert!(text.contains("notify-keyspace-events"), "{what}: {text}");
                assert!(!err.is_transient(), "{what}: a refusal retrying cannot fix");
            }
            other => panic!("{what} must fail with InvalidConfig, got {other:?}"),
        }
    }
    // `list_at` needs no notifications.
    let (pairs, revision) = ok(store.list_at(&dir, None).await, "list_at");
    assert_eq!(pairs, vec![pair.clone()]);
    assert!(revision >= pair.last_index);
    cleanup(&store, &dir).await;
    ok(store.close().await, "close");
}

/// The whole conformance suite on the stock server: each case whose capability is off asserts
/// that its call is refused (the documented `InvalidConfig`), and the rest pass as on a
/// configured server.
mod suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_REDIS_STOCK_URL"));
}
