//! A directory larger than one `LIST` run (1,000 index members) is read in pages against a real
//! Redis (`KVSTORE_REDIS_URL`), and still as one state: while a writer keeps changing the
//! first and the last key of the directory together in one transaction (they fall in the
//! first and the last page), every `list` and `list_at` shows the two equal, and every key
//! once (`list_at` at a revision no pair is newer than).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kvstore_core::{Store, Txn};
use kvstore_redis::RedisStore;
use kvstore_testutils::{backend_url, ok, scratch_dir};

/// Keys in the directory: four pages and a half.
const KEYS: usize = 4_500;
/// Listings taken while the writer runs.
const LISTINGS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_list_is_one_state_while_the_directory_changes() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let store = Arc::new(ok(RedisStore::open_url(&url).await, "open"));
    let dir = scratch_dir("paged_list");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("{dir}/k{i:05}")).collect();
    for batch in keys.chunks(250) {
        let txn = batch.iter().fold(Txn::new(), |txn, key| txn.put(key, "0"));
        ok(store.txn(&txn).await, "filling the directory");
    }
    let (first, last) = (keys[0].clone(), keys[KEYS - 1].clone());
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        let (first, last) = (first.clone(), last.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let value = n.to_string();
                let txn = Txn::new().put(&first, value.clone()).put(&last, value);
                ok(store.txn(&txn).await, "the writer's txn");
                written.store(n, Ordering::Release);
            }
        }
    });
    let mut moved = 0;
    for listing in 0..LISTINGS {
        let before = written.load(Ordering::Acquire);
        // Every other listing is a `list_at`, whose paged read starts from its first page.
        let pairs = if listing % 2 == 0 {
            ok(store.list(&dir, None).await, "list")
        } else {
            let (pairs, revision) = ok(store.list_at(&dir, None).await, "list_at");
            assert!(
                pairs.iter().all(|p| p.last_index <= revision),
                "newer than {revision}"
            );
            pairs
        };
        let after = written.load(Ordering::Acquire);
        moved += u64::from(after > before);
        assert_eq!(pairs.len(), KEYS, "every key once");
        assert!(
            pairs.windows(2).all(|w| w[0].key < w[1].key),
            "keys in order, none twice"
        );
        let (a, z) = (&pairs[0], &pairs[KEYS - 1]);
        assert_eq!(
            (a.key.as_str(), z.key.as_str()),
            (first.as_str(), last.as_str())
        );
        assert_eq!(
            (a.value.as_ref(), a.last_index),
            (z.value.as_ref(), z.last_index),
            "the first and the last key were written together: one state shows them equal"
        );
    }
    stop.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer stops")
        .expect("the writer");
    // The check means something only if writes landed while lists were read.
    assert!(
        moved > 0,
        "the writer wrote during none of the {LISTINGS} listings"
    );
    ok(store.delete_tree(&dir).await, "cleanup");
    let _ = store.close().await;
}
