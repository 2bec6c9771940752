//! A store that finds its primary through Redis Sentinel follows a failover: the primary is
//! killed (SIGKILL), the Sentinels promote the replica, and the same store reads what it wrote
//! before (confirmed by the replica with `wait_replicas=1`), writes again once the old primary
//! is back as a replica, and its watch goes on with the new value. Runs on the `redis-sentinel`
//! cluster of ci/servers.sh, in a test binary of its own so no other case sees the failover.

use std::str::FromStr;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{
    cluster_leader, controlled_backend_url, next_within, ok, retry_transient, scratch_dir,
    server_control,
};

/// Failure detection (1 s), the Sentinels' vote and promotion, and the store's next check.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

#[tokio::test]
async fn store_follows_the_primary_across_a_failover() {
    let Some(url) = controlled_backend_url("KVSTORE_REDIS_SENTINEL_URL") else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = RedisConfig::from_str(&format!("{url}{sep}wait_replicas=1")).expect("valid URL");
    let store = ok(RedisStore::open(config).await, "connect");
    let key = format!("{}/k", scratch_dir("sentinel-failover"));
    ok(
        store.put(&key, b"before", None).await,
        "put before the failover",
    );
    let mut watch = ok(store.watch(&key, None).await, "watch");
    let first = ok(next_within(&mut watch, "first event").await, "first event");
    assert_eq!(first.map(|p| p.value.to_vec()), Some(b"before".to_vec()));

    let old = cluster_leader("redis-sentinel").await;
    server_control(&old, "kill").await;
    // Reads succeed as soon as the store moved to the promoted replica, and find the write the
    // replica confirmed.
    let read = retry_transient(FAILOVER_BOUND, "get after the failover", || {
        store.get(&key, None)
    })
    .await;
    assert_eq!(read.value.as_ref(), b"before");
    let new = cluster_leader("redis-sentinel").await;
    assert_ne!(new, old, "the Sentinels promoted the replica");
    // Writes need a replica to confirm them: the old primary, back as the new one's replica.
    server_control(&old, "start").await;
    retry_transient(FAILOVER_BOUND, "put after the failover", || {
        store.put(&key, b"after", None)
    })
    .await;
    let mut seen = Vec::new();
    while seen.last().map(Vec::as_slice) != Some(b"after".as_slice()) {
        let event = ok(
            next_within(&mut watch, "event after the failover").await,
            "watch",
        );
        seen.push(event.map(|p| p.value.to_vec()).unwrap_or_default());
    }
    assert!(
        seen.iter()
            .all(|v| v.as_slice() == b"before" || v.as_slice() == b"after"),
        "the watch saw only the two values written: {seen:?}"
    );
    ok(store.delete(&key).await, "delete");
    drop(watch);
    ok(store.close().await, "close");
}
