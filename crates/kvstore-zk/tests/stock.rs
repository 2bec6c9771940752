//! Against a ZooKeeper started with its default settings (`KVSTORE_ZK_STOCK_URL`; ci/test.sh
//! starts one): TTL nodes are off, so `capabilities()` says TTLs do not work and a TTL write
//! fails with `CallNotSupported` naming the server setting, before anything is written. Plain
//! reads, writes and locks work.

mod common;

use std::time::Duration;

use kvstore_core::{Error, Store, WriteOptions};
use kvstore_testutils::{backend_url, cleanup, lock_ttl, ok, scratch_dir};
use kvstore_zk::ZkStore;

#[tokio::test]
async fn a_stock_server_reports_ttls_as_unavailable() {
    let Some(url) = backend_url("KVSTORE_ZK_STOCK_URL") else {
        return;
    };
    let store = ok(ZkStore::open_url(&url).await, "connect");
    let caps = store.capabilities();
    assert!(!caps.ttl && !caps.keep_alive, "{caps:?}");
    assert!(caps.watch && caps.watch_tree && caps.lock, "{caps:?}");

    let dir = scratch_dir("stock");
    let key = format!("{dir}/session");
    for opts in [
        WriteOptions::default().with_ttl(Duration::from_secs(5)),
        WriteOptions::default()
            .with_ttl(Duration::from_secs(5))
            .with_keep_alive(true),
    ] {
        match store.put(&key, b"v", Some(&opts)).await {
            Err(err @ Error::CallNotSupported { .. }) => {
                assert!(
                    err.to_string()
                        .contains("zookeeper.extendedTypesEnabled=true"),
                    "{err}"
                );
                assert!(!err.is_transient());
            }
            other => panic!("a TTL write must fail with CallNotSupported, got {other:?}"),
        }
    }
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "a refused write must change nothing"
    );

    let pair = ok(store.put(&key, b"plain", None).await, "put");
    assert_eq!(ok(store.get(&key, None).await, "get"), pair);
    let mut lock = ok(
        store
            .new_lock(
                &format!("{dir}/lock"),
                Some(&lock_ttl(Duration::from_secs(4))),
            )
            .await,
        "new_lock",
    );
    let _lost = ok(
        tokio::time::timeout(Duration::from_secs(10), lock.lock())
            .await
            .expect("lock within 10 s"),
        "lock",
    );
    assert!(lock.fencing_token().is_some());
    ok(lock.unlock().await, "unlock");
    cleanup(&store, &dir).await;
    ok(store.close().await, "close");
}

/// The whole conformance suite on the stock server: each case whose capability is off (TTLs)
/// asserts that its call is refused, and the rest pass as on a configured server.
mod suite {
    kvstore_testutils::conformance_tests!(optional: super::common::opener("KVSTORE_ZK_STOCK_URL"));
}
