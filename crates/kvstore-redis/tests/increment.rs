//! `Store::increment` on Redis (`KVSTORE_REDIS_URL`): one script adds exactly, beyond the 2^53
//! that Lua's numbers hold, gives the pair a new `last_index`, and shows in `watch_events`;
//! a value the script does not take is left alone (`None`) for the caller's compare-and-swap.

use std::sync::Arc;

use kvstore_core::{Counter, Error, Store, WatchEvent};
use kvstore_redis::RedisStore;
use kvstore_testutils::{backend_url, cleanup, next_within, ok, scratch_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increment_is_one_exact_logged_step() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(ok(RedisStore::open_url(&url).await, "connect"));
    let dir = scratch_dir("redis_increment");
    let key = format!("{dir}/n");
    let mut events = ok(store.watch_events(&dir, None).await, "watch_events");
    ok(next_within(&mut events, "the Snapshot").await, "item");
    assert_eq!(ok(store.increment(&key, 5).await, "increment"), Some(5));
    let pair = ok(store.get(&key, None).await, "get");
    assert_eq!(pair.value_str(), Some("5"));
    match ok(next_within(&mut events, "the change").await, "item") {
        WatchEvent::Changes { events, .. } => {
            assert_eq!(events.len(), 1);
            assert_eq!(
                (events[0].key.as_str(), events[0].last_index),
                (key.as_str(), pair.last_index)
            );
        }
        other => panic!("expected the increment's event, got {other:?}"),
    }
    // Past 2^53: exact.
    let big = (1i64 << 60) + 1;
    ok(
        store.put(&key, big.to_string().as_bytes(), None).await,
        "put big",
    );
    assert_eq!(
        ok(store.increment(&key, 2).await, "increment"),
        Some(big + 2)
    );
    // An overflow or a value not in canonical form: nothing written, the caller decides.
    let max = ok(
        store.put(&key, i64::MAX.to_string().as_bytes(), None).await,
        "put max",
    );
    assert_eq!(ok(store.increment(&key, 1).await, "overflow"), None);
    assert_eq!(ok(store.get(&key, None).await, "get"), max);
    ok(store.put(&key, b"007", None).await, "put 007");
    assert_eq!(ok(store.increment(&key, 1).await, "007"), None);
    // `Counter` falls back to compare-and-swap there, and refuses what is not a number.
    let counter = Counter::new(store.clone(), &key);
    assert_eq!(ok(counter.add(1).await, "add"), 8);
    ok(store.put(&key, b"eight", None).await, "put text");
    assert!(matches!(
        counter.add(1).await,
        Err(Error::InvalidValue { .. })
    ));
    drop(events);
    cleanup(&*store, &dir).await;
}
