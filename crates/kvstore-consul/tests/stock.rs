//! Against a Consul agent with its default settings (`KVSTORE_CONSUL_STOCK_URL`; ci/test.sh
//! starts one): `session_ttl_min` is 10 s, so a shorter TTL or lock TTL fails with a permanent
//! `InvalidConfig` naming the setting and the minimum, before anything is written, and
//! `capabilities().min_ttl` reports the minimum from then on.

use std::time::Duration;

use kvstore_consul::ConsulStore;
use kvstore_core::{Error, Store, WriteOptions};
use kvstore_testutils::{backend_url, cleanup, error_chain, lock_ttl, ok, scratch_dir};

fn assert_below_minimum(what: &str, err: Option<Error>) {
    match err {
        Some(err @ Error::InvalidConfig { .. }) => {
            let text = error_chain(&err);
            assert!(
                text.contains("session_ttl_min") && text.contains("10s"),
                "{what}: {text}"
            );
            assert!(!err.is_transient(), "{what}: a refusal retrying cannot fix");
        }
        other => panic!("{what} must fail with InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn a_ttl_below_the_agents_minimum_is_a_permanent_invalid_config() {
    let Some(url) = backend_url("KVSTORE_CONSUL_STOCK_URL") else {
        return;
    };
    let store = ok(ConsulStore::open_url(&url).await, "connect");
    let dir = scratch_dir("stock");
    let key = format!("{dir}/session");
    let short = WriteOptions::default().with_ttl(Duration::from_secs(2));
    assert_below_minimum(
        "put with a 2 s TTL",
        store.put(&key, b"v", Some(&short)).await.err(),
    );
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "a refused write must change nothing"
    );
    assert_eq!(store.capabilities().min_ttl, Duration::from_secs(10));
    let mut lock = ok(
        store
            .new_lock(
                &format!("{dir}/lock"),
                Some(&lock_ttl(Duration::from_secs(3))),
            )
            .await,
        "new_lock",
    );
    let locked = tokio::time::timeout(Duration::from_secs(10), lock.lock())
        .await
        .expect("lock() answers within 10 s");
    assert_below_minimum("lock() with a 3 s TTL", locked.err());
    assert!(lock.fencing_token().is_none());

    let long = WriteOptions::default().with_ttl(Duration::from_secs(10));
    ok(
        store.put(&key, b"v", Some(&long)).await,
        "put with a 10 s TTL",
    );
    cleanup(&store, &dir).await;
    ok(store.close().await, "close");
}
