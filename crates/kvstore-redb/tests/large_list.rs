//! A directory larger than what `list` reads in place (1,024 entries) is listed whole, sorted,
//! from the blocking pool.

use kvstore_core::Store;
use kvstore_redb::RedbStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_over_the_in_place_limit_lists_whole() {
    let store = RedbStore::open(kvstore_redb::RedbConfig::memory())
        .await
        .unwrap();
    let keys: Vec<String> = (0..1500).map(|i| format!("big/k{i:05}")).collect();
    for key in &keys {
        store.put(key, key.as_bytes(), None).await.unwrap();
    }
    store
        .put("big0", b"next to the directory", None)
        .await
        .unwrap();
    let listed = store.list("big", None).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(listed, keys.iter().map(String::as_str).collect::<Vec<_>>());
    // A leaf key lists as empty (read in place).
    assert_eq!(store.list("big/k00000", None).await.unwrap().len(), 0);
    store.close().await.unwrap();
}
