//! `watch_events` on the Redis change log, against a real Redis (`KVSTORE_REDIS_URL`): a
//! resume gives exactly the missed events, expiries included; a resume from before the log's
//! bound starts with a `Snapshot` while the log stays within its bounds (bytes and entries),
//! and one from its floor gets exactly the changes after it; a server that lost its
//! data ends the stream with an error; dropping a stream unsubscribes its pattern.

use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{EventKind, Store, Txn, WatchEvent, WatchOptions, WriteOptions};
use kvstore_redis::RedisStore;
use kvstore_testutils::{backend_url, cleanup, eventually, next_within, ok, scratch_dir};

/// The server's URL with a store prefix (and, for `db`, a database of its own).
fn url_with(base: &str, db: Option<u32>, prefix: &str) -> String {
    let mut url = url::Url::parse(base).expect("KVSTORE_REDIS_URL parses");
    if let Some(db) = db {
        url.set_path(&format!("/{db}"));
    }
    url.query_pairs_mut().append_pair("prefix", prefix);
    url.to_string()
}

/// The tests subscribe patterns, which one of them counts: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("raw client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// A store under a prefix of its own, so its log is trimmed and no other test's: the prefix
/// and the store.
async fn own_log(base: &str, name: &str) -> (String, RedisStore) {
    let prefix = scratch_dir(name);
    let url = url_with(base, None, &prefix);
    (prefix, ok(RedisStore::open_url(&url).await, "connect"))
}

/// Deletes what [`own_log`]'s store wrote under `d` and its bookkeeping keys.
async fn drop_own_log(
    store: &RedisStore,
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) {
    ok(store.delete_tree("d").await, "cleanup");
    let internal =
        ["rev", "index", "log", "logmeta", "ttl"].map(|n| format!("{prefix}/\u{1}kvstore/{n}"));
    let _: () = redis::cmd("DEL")
        .arg(&internal)
        .query_async(conn)
        .await
        .expect("DEL the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_gives_exactly_the_missed_events_expiries_included() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(RedisStore::open_url(&url).await, "connect");
    let dir = scratch_dir("redis_resume");
    let x = ok(store.put(&format!("{dir}/x"), b"1", None).await, "put x");
    let (_, revision) = ok(store.list_at(&dir, None).await, "list_at");
    let ttl = WriteOptions::default().with_ttl(Duration::from_millis(200));
    let t = ok(
        store.put(&format!("{dir}/t"), b"t", Some(&ttl)).await,
        "put t",
    );
    let y = ok(store.put(&format!("{dir}/y"), b"2", None).await, "put y");
    ok(store.delete(&x.key).await, "delete x");
    // Redis drops t by itself, unseen by any kvstore script: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ok(store.exists(&t.key, None).await, "exists t") {
        assert!(tokio::time::Instant::now() < deadline, "t never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opts = WatchOptions::default().with_since(revision);
    let mut stream = ok(store.watch_events(&dir, Some(&opts)).await, "watch_events");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match ok(next_within(&mut stream, "the missed events").await, "item") {
            WatchEvent::Changes { events, .. } => {
                seen.extend(events.into_iter().map(|e| (e.kind, e.key, e.last_index)));
            }
            other => panic!("the log holds every change after {revision}, not {other:?}"),
        }
    }
    assert_eq!(seen[0], (EventKind::Put, t.key.clone(), t.last_index));
    assert_eq!(seen[1], (EventKind::Put, y.key.clone(), y.last_index));
    assert_eq!((&seen[2].0, &seen[2].1), (&EventKind::Delete, &x.key));
    assert_eq!(
        (&seen[3].0, &seen[3].1),
        (&EventKind::Delete, &t.key),
        "the expiry is logged when the log is read"
    );
    assert!(seen[2].2 > y.last_index && seen[3].2 > seen[2].2);
    drop(stream);
    cleanup(&store, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_logs_bound_starts_with_a_snapshot() {
    let Some(base) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (prefix, store) = own_log(&base, "redis_log_bound").await;
    ok(store.put("d/first", b"1", None).await, "put first");
    let (_, revision) = ok(store.list_at("d", None).await, "list_at");
    // 40 values of 1 MiB: more than the log's 32 MiB.
    let value = vec![7u8; 1 << 20];
    for i in 0..40 {
        ok(
            store.put(&format!("d/big{i}"), &value, None).await,
            "put big",
        );
    }
    let mut conn = raw(&base).await;
    let meta = format!("{prefix}/\u{1}kvstore/logmeta");
    let bytes: u64 = redis::cmd("HGET")
        .arg(&meta)
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .expect("HGET bytes");
    assert!(
        bytes <= 32 << 20,
        "the log holds {bytes} bytes, above its bound"
    );
    let opts = WatchOptions::default().with_since(revision);
    let mut stream = ok(store.watch_events("d", Some(&opts)).await, "watch_events");
    match ok(next_within(&mut stream, "the first item").await, "item") {
        WatchEvent::Snapshot { pairs, revision: r } => {
            assert_eq!(pairs.len(), 41, "every pair, as of {r}");
            assert!(r > revision);
        }
        other => panic!("the log moved past {revision}: a Snapshot first, not {other:?}"),
    }
    drop(stream);
    drop_own_log(&store, &mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_at_most_its_entries_and_resumes_exactly_from_its_floor() {
    let Some(base) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (prefix, store) = own_log(&base, "redis_log_entries").await;
    let max_ops = store.capabilities().max_txn_ops;
    let keys: Vec<String> = (0..max_ops).map(|i| format!("d/k{i}")).collect();
    // Past the log's bound of 100,000 entries: each transaction logs one entry per put.
    let mut logged = 0;
    while logged < 102_000 {
        let txn = keys.iter().fold(Txn::new(), |txn, k| txn.put(k, "v"));
        ok(store.txn(&txn).await, "txn");
        logged += keys.len();
    }
    let mut conn = raw(&base).await;
    let log = format!("{prefix}/\u{1}kvstore/log");
    let meta = format!("{prefix}/\u{1}kvstore/logmeta");
    let len: u64 = redis::cmd("XLEN")
        .arg(&log)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(
        (90_000..=100_000).contains(&len),
        "the log holds {len} entries: at most its bound, trimmed by a step"
    );
    let (floor, bytes): (u64, u64) = redis::cmd("HMGET")
        .arg(&meta)
        .arg("floor")
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&log)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let first_revision: u64 = first[0].0.split('-').next().unwrap().parse().unwrap();
    assert!(
        floor + 1 >= first_revision && floor <= first_revision,
        "floor {floor}: every change after it is in the log, which starts at {}",
        first[0].0
    );
    // The size of every entry's fields but the kind, summed on the server (one reply).
    let counted: u64 = redis::Script::new(
        "local n = 0 for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do \
         n = n + #e[2][2] if e[2][4] then n = n + #e[2][4] end end return n",
    )
    .key(&log)
    .invoke_async(&mut conn)
    .await
    .expect("the log's size");
    assert_eq!(bytes, counted, "the recorded size is the log's");

    // From the floor: the changes after it, exactly; from before it: a Snapshot.
    let opts = WatchOptions::default().with_since(floor);
    let mut stream = ok(store.watch_events("d", Some(&opts)).await, "watch_events");
    match ok(next_within(&mut stream, "the first item").await, "item") {
        WatchEvent::Changes { events, .. } => {
            assert!(events.iter().all(|e| e.last_index > floor), "{floor}");
        }
        other => panic!("every change after the floor {floor} is logged, not {other:?}"),
    }
    drop(stream);
    let opts = WatchOptions::default().with_since(floor - 1);
    let mut stream = ok(store.watch_events("d", Some(&opts)).await, "watch_events");
    assert!(
        matches!(
            ok(next_within(&mut stream, "the first item").await, "item"),
            WatchEvent::Snapshot { .. }
        ),
        "a change at the floor is gone: a Snapshot first"
    );
    drop(stream);
    drop_own_log(&store, &mut conn, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_data_ends_the_stream() {
    let Some(base) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // Database 9 of the test server is this test's alone: it is flushed.
    let url = url_with(&base, Some(9), "lost");
    let store = ok(RedisStore::open_url(&url).await, "connect");
    for i in 0..5 {
        ok(store.put(&format!("d/k{i}"), b"v", None).await, "put");
    }
    let mut stream = ok(store.watch_events("d", None).await, "watch_events");
    let first = ok(next_within(&mut stream, "the Snapshot").await, "item");
    assert!(matches!(first, WatchEvent::Snapshot { .. }));
    let mut conn = raw(&url_with(&base, Some(9), "lost")).await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .expect("FLUSHDB");
    ok(
        store.put("d/after", b"v", None).await,
        "put after the flush",
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    let ended = match ended.expect("the stream ends within 10 s") {
        Some(Err(err)) => err,
        Some(Ok(item)) => panic!("items from another log are not comparable: {item:?}"),
        None => panic!("the stream ended without an error"),
    };
    assert!(!ended.is_transient(), "{ended:?}");
    drop(stream);
    ok(store.delete_tree("d").await, "cleanup");
}

/// The server's count of pattern subscriptions (`PUBSUB NUMPAT`).
async fn patterns(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(conn)
        .await
        .expect("PUBSUB NUMPAT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_unsubscribes_its_pattern() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(RedisStore::open_url(&url).await, "connect");
    let mut conn = raw(&url).await;
    let dir = scratch_dir("redis_drop");
    let before = patterns(&mut conn).await;
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    ok(next_within(&mut stream, "the Snapshot").await, "item");
    assert_eq!(
        patterns(&mut conn).await,
        before + 1,
        "the stream's pattern"
    );
    drop(stream);
    let freed = eventually(Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move { patterns(&mut conn).await <= before }
    });
    assert!(freed.await, "the pattern outlived its stream");
    ok(store.close().await, "close");
}
