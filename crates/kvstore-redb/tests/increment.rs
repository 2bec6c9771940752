//! `Store::increment` on redb and in memory: read, add and write in one write transaction —
//! exact, a new `last_index`, and a value that is not a decimal `i64` (or a sum that
//! overflows) left alone (`None`) for the caller's compare-and-swap.

use kvstore_core::Store;
use kvstore_redb::{RedbConfig, RedbStore};
use kvstore_testutils::ok;

async fn check(store: &RedbStore) {
    let key = "counters/n";
    assert_eq!(ok(store.increment(key, 5).await, "from absent"), Some(5));
    let first = ok(store.get(key, None).await, "get");
    assert_eq!(first.value_str(), Some("5"));
    assert_eq!(ok(store.increment(key, -7).await, "add -7"), Some(-2));
    let second = ok(store.get(key, None).await, "get");
    assert!(second.last_index > first.last_index, "a new last_index");
    let max = ok(
        store.put(key, i64::MAX.to_string().as_bytes(), None).await,
        "put max",
    );
    assert_eq!(ok(store.increment(key, 1).await, "overflow"), None);
    assert_eq!(
        ok(store.get(key, None).await, "get"),
        max,
        "nothing written"
    );
    let text = ok(store.put(key, b"seven", None).await, "put text");
    assert_eq!(ok(store.increment(key, 1).await, "text"), None);
    assert_eq!(
        ok(store.get(key, None).await, "get"),
        text,
        "nothing written"
    );
}

#[tokio::test]
async fn increment_in_one_transaction_on_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RedbConfig::file(dir.path().join("increment.redb"));
    let store = ok(RedbStore::open(config).await, "open");
    check(&store).await;
}

#[tokio::test]
async fn increment_in_one_transaction_in_memory() {
    let store = ok(RedbStore::open(RedbConfig::memory()).await, "open");
    check(&store).await;
}
