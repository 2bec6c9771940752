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

#[tokio::test]
async fn a_held_file_fails_with_not_reachable_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.redb");
    let _owner = reopen(&path).await;
    let start = Instant::now();
    let result =
        RedbStore::open(RedbConfig::file(&path).with_open_timeout(Duration::from_millis(400)))
            .await;
    let took = start.elapsed();
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
