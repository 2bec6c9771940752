//! `watch_events` against a real ZooKeeper (`KVSTORE_ZK_URL`): a stream holds one persistent
//! recursive watch on the server, and dropping it removes that watch (`mntr`'s
//! `zk_watch_count`); `list_at` leaves no watch behind.

use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::{backend_url, eventually, next_within, ok, scratch_dir};
use kvstore_zk::ZkStore;

mod common;

/// The server's count of watches (`mntr`'s `zk_watch_count`).
async fn server_watches(url: &str) -> u64 {
    common::mntr(url, "zk_watch_count").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_removes_its_server_watch() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let store = ok(ZkStore::open_url(&url).await, "connect");
    let dir = scratch_dir("zk_drop");
    ok(store.put(&format!("{dir}/a"), b"1", None).await, "put");
    let before = server_watches(&url).await;
    ok(store.list_at(&dir, None).await, "list_at");
    let bound = Duration::from_secs(10);
    let gone = || async { server_watches(&url).await <= before };
    assert!(eventually(bound, gone).await, "list_at left a watch behind");
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    ok(next_within(&mut stream, "the Snapshot").await, "item");
    let held = eventually(bound, || async { server_watches(&url).await > before });
    assert!(held.await, "the stream's watch never showed on the server");
    drop(stream);
    assert!(
        eventually(bound, gone).await,
        "the watch outlived its stream"
    );
    ok(store.delete_tree(&dir).await, "cleanup");
    ok(store.close().await, "close");
}
