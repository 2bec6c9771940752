//! All watches of a store share one gRPC watch stream, and dropping a watch cancels it on the
//! server — read from the server's own gauges (`/metrics`: `etcd_debugging_mvcc_watch_stream_total`,
//! `etcd_debugging_mvcc_watcher_total`). Its own test binary: the gauges are server-wide.

use std::time::Duration;

use kvstore_core::Store;
use kvstore_etcd::EtcdStore;
use kvstore_testutils::{
    EVENT_TIMEOUT, backend_url, cleanup, eventually, next_within, ok, scratch_dir,
};

/// Watches opened at once.
const WATCHES: usize = 200;

async fn gauge(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("the metrics endpoint answers")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} is in /metrics")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_share_one_stream_and_dropping_them_frees_the_server() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let base = format!("http://{}", url.trim_start_matches("etcd://"));
    let store = ok(EtcdStore::open_url(&url).await, "connect");
    let dir = scratch_dir("watch-streams");
    let (streams_before, watchers_before) = (
        gauge(&base, "etcd_debugging_mvcc_watch_stream_total").await,
        gauge(&base, "etcd_debugging_mvcc_watcher_total").await,
    );
    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let mut watch = ok(store.watch(&format!("{dir}/k{i}"), None).await, "watch");
        assert_eq!(
            ok(next_within(&mut watch, "initial").await, "initial"),
            None
        );
        watches.push(watch);
    }
    let mut tree = ok(store.watch_tree(&dir, None).await, "watch_tree");
    let _ = next_within(&mut tree, "initial tree").await;
    assert_eq!(
        gauge(&base, "etcd_debugging_mvcc_watch_stream_total").await,
        streams_before + 1,
        "{} watches ride one stream",
        WATCHES + 1
    );
    assert_eq!(
        gauge(&base, "etcd_debugging_mvcc_watcher_total").await,
        watchers_before + WATCHES as u64 + 1
    );
    // Every watch still sees its own key's write.
    for i in [0, WATCHES / 2, WATCHES - 1] {
        ok(store.put(&format!("{dir}/k{i}"), b"v", None).await, "put");
        let seen = ok(next_within(&mut watches[i], "the write").await, "the write");
        assert_eq!(seen.map(|p| p.value.to_vec()), Some(b"v".to_vec()));
    }
    drop(watches);
    drop(tree);
    assert!(
        eventually(EVENT_TIMEOUT, || async {
            gauge(&base, "etcd_debugging_mvcc_watcher_total").await == watchers_before
        })
        .await,
        "dropped watches are cancelled on the server"
    );
    cleanup(&store, &dir).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), store.close()).await;
}
