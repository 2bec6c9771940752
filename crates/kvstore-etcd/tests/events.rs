//! `watch_events` on etcd's own history, against a real etcd (`KVSTORE_ETCD_URL`): a resume
//! from a revision etcd still holds gives exactly the missed events; after a compaction past
//! that revision it gives a `Snapshot`; dropping a stream cancels its watcher on the server.

use std::str::FromStr;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use futures::StreamExt;
use kvstore_core::{EventKind, Store, WatchEvent, WatchOptions};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{backend_url, cleanup, eventually, next_within, ok, scratch_dir};

/// The compaction case compacts the server's whole history: the cases run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn raw(url: &str) -> Client {
    let config = EtcdConfig::from_str(url).unwrap();
    Client::connect(&config.endpoints, None)
        .await
        .expect("raw etcd client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_gives_exactly_the_missed_events() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(EtcdStore::open_url(&url).await, "connect");
    let dir = scratch_dir("etcd_resume");
    let x = ok(store.put(&format!("{dir}/x"), b"1", None).await, "put x");
    let (_, revision) = ok(store.list_at(&dir, None).await, "list_at");
    let y = ok(store.put(&format!("{dir}/y"), b"2", None).await, "put y");
    ok(store.delete(&x.key).await, "delete x");
    let opts = WatchOptions::default().with_since(revision);
    let mut stream = ok(store.watch_events(&dir, Some(&opts)).await, "watch_events");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match ok(next_within(&mut stream, "the missed events").await, "item") {
            WatchEvent::Changes { events, .. } => {
                seen.extend(events.into_iter().map(|e| (e.kind, e.key, e.last_index)));
            }
            other => panic!("etcd resumes from its history, not with {other:?}"),
        }
    }
    assert_eq!(seen[0], (EventKind::Put, y.key.clone(), y.last_index));
    assert_eq!(
        (seen[1].0, seen[1].1.as_str()),
        (EventKind::Delete, x.key.as_str())
    );
    assert!(
        seen[1].2 > y.last_index,
        "the delete's revision follows the put's"
    );
    drop(stream);
    cleanup(&store, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_a_compaction_starts_with_a_snapshot() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(EtcdStore::open_url(&url).await, "connect");
    let dir = scratch_dir("etcd_compacted");
    ok(store.put(&format!("{dir}/x"), b"1", None).await, "put x");
    let (_, revision) = ok(store.list_at(&dir, None).await, "list_at");
    ok(store.put(&format!("{dir}/y"), b"2", None).await, "put y");
    let z = ok(store.put(&format!("{dir}/z"), b"3", None).await, "put z");
    let mut client = raw(&url).await;
    client
        .compact(
            i64::try_from(z.last_index).unwrap(),
            Some(CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    let opts = WatchOptions::default().with_since(revision);
    let mut stream = ok(store.watch_events(&dir, Some(&opts)).await, "watch_events");
    match ok(next_within(&mut stream, "the first item").await, "item") {
        WatchEvent::Snapshot { pairs, revision } => {
            let (listed, _) = ok(store.list_at(&dir, None).await, "list_at");
            assert_eq!(pairs, listed, "the Snapshot is the directory");
            assert!(revision >= z.last_index);
        }
        other => panic!("a compacted revision resumes with a Snapshot, not {other:?}"),
    }
    // The stream goes on after the Snapshot.
    let w = ok(store.put(&format!("{dir}/w"), b"4", None).await, "put w");
    match ok(next_within(&mut stream, "the next put").await, "item") {
        WatchEvent::Changes { events, .. } => {
            assert_eq!(
                (events[0].key.as_str(), events[0].last_index),
                (w.key.as_str(), w.last_index)
            );
        }
        other => panic!("a put after the Snapshot is a Changes item, not {other:?}"),
    }
    drop(stream);
    cleanup(&store, &dir).await;
}

/// The server's count of watchers (`/metrics`, `etcd_debugging_mvcc_watcher_total`).
async fn server_watchers(url: &str) -> u64 {
    let host = url
        .trim_start_matches("etcd://")
        .split([',', '/'])
        .next()
        .expect("a host");
    let text = reqwest::get(format!("http://{host}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the watcher gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_its_server_watcher() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(EtcdStore::open_url(&url).await, "connect");
    let dir = scratch_dir("etcd_drop");
    let before = server_watchers(&url).await;
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    ok(next_within(&mut stream, "the Snapshot").await, "item");
    // The watch from the Snapshot's revision opens when the stream is polled for more.
    let polled = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(polled.is_err(), "nothing changed: {polled:?}");
    let opened = eventually(Duration::from_secs(10), || async {
        server_watchers(&url).await > before
    });
    assert!(
        opened.await,
        "the stream's watcher never showed on the server"
    );
    drop(stream);
    let freed = eventually(Duration::from_secs(10), || async {
        server_watchers(&url).await <= before
    });
    assert!(freed.await, "the watcher outlived its stream on the server");
    ok(store.close().await, "close");
}
