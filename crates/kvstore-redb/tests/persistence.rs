//! What only a file store has to prove: state survives a reopen, and a held file is refused.

use std::time::{Duration, Instant};

use kvstore_core::{Error, LockOptions, Store, WriteOptions};
use kvstore_redb::{RedbConfig, RedbStore};

async fn reopen(path: &std::path::Path) -> RedbStore {
    RedbStore::open(RedbConfig::file(path)).await.expect("open")
}

#[tokio::test]
async fn last_index_and_cas_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    let store = reopen(&path).await;
    let before = store.put("k", b"v1", None).await.unwrap();
    let stale = store.put("other", b"x", None).await.unwrap();
    store.put("other", b"y", None).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = reopen(&path).await;
    let after = store.get("k", None).await.unwrap();
    assert_eq!(after, before, "value and last_index persist");
    // A CAS with a pair read before the restart still compares correctly.
    store
        .atomic_put("k", b"v2", Some(&before), None)
        .await
        .unwrap();
    assert!(matches!(
        store.atomic_put("other", b"z", Some(&stale), None).await,
        Err(Error::KeyModified { .. })
    ));
    // The revision counter persisted: new writes never reuse old indexes.
    let next = store.put("new", b"n", None).await.unwrap();
    assert!(
        next.last_index > before.last_index + 2,
        "revision must continue after reopen"
    );
}

#[tokio::test]
async fn ttl_deadlines_persist_and_expire_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.redb");
    let store = reopen(&path).await;
    store
        .put(
            "short",
            b"s",
            Some(&WriteOptions::default().with_ttl(Duration::from_millis(600))),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = reopen(&path).await;
    assert!(
        store.exists("short", None).await.unwrap(),
        "not yet expired"
    );
    let gone = kvstore_testutils::eventually(Duration::from_secs(3), || async {
        !store.exists("short", None).await.unwrap()
    })
    .await;
    assert!(gone, "a TTL written before the reopen must still expire");
}

#[tokio::test]
async fn a_lock_held_when_the_process_stopped_expires_with_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.redb");
    let opts = LockOptions::default().with_ttl(Duration::from_millis(800));
    // Like a crash: the holder's runtime stops with the lock held, so neither renewal nor
    // release (a dropped `Locker` releases) ever runs; the persisted lock row stays until its
    // TTL runs out.
    let first = {
        let (path, opts) = (path.clone(), opts.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let (store, held) = rt.block_on(async {
                let store = reopen(&path).await;
                let mut held = store.new_lock("job", Some(&opts)).await.unwrap();
                held.lock().await.unwrap();
                (store, held)
            });
            let first = held.fencing_token().unwrap();
            drop(rt);
            drop(held);
            drop(store);
            first
        })
        .join()
        .unwrap()
    };

    let store = reopen(&path).await;
    let mut next = store.new_lock("job", Some(&opts)).await.unwrap();
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), next.lock())
        .await
        .expect("lock after TTL")
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "the old hold must be honoured until its TTL"
    );
    assert!(
        next.fencing_token().unwrap() > first,
        "fencing tokens persist across a restart"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Environment variable that makes this test binary, re-run, hold a redb file open.
const HOLD_FILE_VAR: &str = "KVSTORE_TEST_HOLD_REDB";

#[tokio::test]
async fn a_file_held_by_another_process_fails_with_not_reachable_within_the_timeout() {
    use tokio::io::AsyncBufReadExt;

    if let Ok(path) = std::env::var(HOLD_FILE_VAR) {
        let _owner = reopen(std::path::Path::new(&path)).await;
        println!("holding");
        std::future::pending::<()>().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.redb");
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_file_held_by_another_process_fails_with_not_reachable_within_the_timeout",
            "--nocapture",
        ])
        .env(HOLD_FILE_VAR, &path)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "holding" {
                return;
            }
        }
        panic!("the child exited before holding the file");
    })
    .await
    .expect("the child holds the file");
    let start = Instant::now();
    let result =
        RedbStore::open(RedbConfig::file(&path).with_open_timeout(Duration::from_millis(400)))
            .await;
    let took = start.elapsed();
    let _ = child.start_kill();
    match result {
        Err(Error::NotReachable {
            backend: "redb", ..
        }) => {}
        other => panic!("expected NotReachable, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300),
        "must retry until the timeout, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "must give up near the timeout, took {took:?}"
    );
}

#[tokio::test]
async fn a_second_open_in_one_process_shares_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    let first = reopen(&path).await;
    // Another spelling of the same path.
    let second = reopen(&dir.path().join(".").join("shared.redb")).await;
    first.put("k", b"v1", None).await.unwrap();
    assert_eq!(&second.get("k", None).await.unwrap().value[..], b"v1");
    let mut watch = second.watch("k", None).await.unwrap();
    use futures::StreamExt;
    watch.next().await.unwrap().unwrap();
    first.put("k", b"v2", None).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the other handle's watch sees the write")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&seen.value[..], b"v2");
    // Closing one handle leaves the other working.
    first.close().await.unwrap();
    assert!(second.exists("k", None).await.unwrap());
    drop(watch);
    second.close().await.unwrap();
    drop((first, second));
    // Every handle gone: the file is opened afresh, with its data.
    let third = tokio::time::timeout(Duration::from_secs(10), reopen(&path))
        .await
        .expect("reopen after the last handle closed");
    assert_eq!(&third.get("k", None).await.unwrap().value[..], b"v2");
}
