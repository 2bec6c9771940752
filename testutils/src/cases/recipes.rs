//! The coordination recipes written over `Store` — `Counter`, `update`, `update_many`,
//! `Group` — under contention from two handles.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use kvstore_core::{Counter, Error, Group, KvPair, Store, WriteOptions, update, update_many};

use crate::{Opener, cleanup, next_within, ok, scratch_dir};

/// Tasks contending in each case, spread over two handles.
const TASKS: usize = 8;
/// `add(1)` calls per task in [`counter_adds_exactly`].
const ADDS: usize = 500;
/// Updates per task in [`update_loses_no_update`] and [`update_many_is_atomic`].
const UPDATES: usize = 25;

/// Two handles on the same store, and the one task `i` uses.
fn handle(handles: &[Arc<dyn Store>; 2], i: usize) -> Arc<dyn Store> {
    handles[i % 2].clone()
}

/// 8 tasks on two handles each `add(1)` 500 times to one counter: the counter ends at
/// exactly 4,000 and every `add` returned a different value, 1 to 4,000 — no update lost,
/// none counted twice.
pub async fn counter_adds_exactly(opener: &Opener) {
    let handles = [opener.open().await, opener.open().await];
    let dir = scratch_dir("counter");
    let key = format!("{dir}/hits");
    let tasks = (0..TASKS).map(|i| {
        let counter = Counter::new(handle(&handles, i), &key);
        async move {
            let mut seen = Vec::with_capacity(ADDS);
            for _ in 0..ADDS {
                seen.push(ok(counter.add(1).await, "add(1)"));
            }
            seen
        }
    });
    let mut returned: Vec<i64> = join_all(tasks).await.into_iter().flatten().collect();
    returned.sort_unstable();
    let total = i64::try_from(TASKS * ADDS).unwrap();
    assert_eq!(
        returned,
        (1..=total).collect::<Vec<_>>(),
        "every add returns its own new value"
    );
    let counter = Counter::new(handles[0].clone(), &key);
    assert_eq!(ok(counter.get().await, "get"), total);
    // Other clients read the decimal text.
    let pair = ok(handles[1].get(&key, None).await, "get the key");
    assert_eq!(pair.value_str(), Some(total.to_string().as_str()));
    assert_eq!(ok(counter.add(-total).await, "add(-total)"), 0);
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}

/// A counter refuses a value that is not a decimal `i64`, and a sum that overflows, with
/// `InvalidValue`, writing nothing.
pub async fn counter_refuses_bad_values(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("counter_bad");
    let key = format!("{dir}/c");
    let written = ok(store.put(&key, b"ten", None).await, "put text");
    let counter = Counter::new(store.clone(), &key);
    assert_err!(
        counter.add(1).await,
        Error::InvalidValue { .. },
        "add to text"
    );
    assert_err!(
        counter.get().await,
        Error::InvalidValue { .. },
        "get of text"
    );
    assert_eq!(
        ok(store.get(&key, None).await, "get"),
        written,
        "nothing written"
    );
    let max = ok(
        store.put(&key, i64::MAX.to_string().as_bytes(), None).await,
        "put max",
    );
    assert_err!(counter.add(1).await, Error::InvalidValue { .. }, "overflow");
    assert_eq!(
        ok(store.get(&key, None).await, "get"),
        max,
        "nothing written"
    );
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// 8 tasks on two handles each append 25 distinct tokens to one key with `update`: every
/// token is there exactly once at the end.
pub async fn update_loses_no_update(opener: &Opener) {
    let handles = [opener.open().await, opener.open().await];
    let dir = scratch_dir("update");
    let key = format!("{dir}/list");
    let tasks = (0..TASKS).map(|i| {
        let (store, key) = (handle(&handles, i), key.clone());
        async move {
            for j in 0..UPDATES {
                let token = format!("t{i}-{j};");
                let written = ok(
                    update(
                        &*store,
                        &key,
                        |current| {
                            let mut v = current.map(|p| p.value.to_vec()).unwrap_or_default();
                            v.extend_from_slice(token.as_bytes());
                            Some(Bytes::from(v))
                        },
                        None,
                    )
                    .await,
                    "update",
                )
                .expect("a put returns its pair");
                assert!(written.value_str().unwrap().contains(&token));
            }
        }
    });
    join_all(tasks).await;
    let pair = ok(handles[0].get(&key, None).await, "get");
    let tokens: Vec<&str> = pair
        .value_str()
        .unwrap()
        .split(';')
        .filter(|t| !t.is_empty())
        .collect();
    let distinct: BTreeSet<&str> = tokens.iter().copied().collect();
    assert_eq!(tokens.len(), TASKS * UPDATES, "no update lost or doubled");
    assert_eq!(distinct.len(), TASKS * UPDATES);
    // `None` from the closure deletes; an absent key stays absent.
    assert!(ok(update(&*handles[1], &key, |_| None, None).await, "delete").is_none());
    assert!(!ok(handles[0].exists(&key, None).await, "exists"));
    assert!(ok(update(&*handles[1], &key, |_| None, None).await, "absent").is_none());
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}

/// 8 tasks on two handles move amounts between two balances with `update_many`: every state a
/// call returns, and the end state, keeps the sum — both keys change together or not at all.
pub async fn update_many_is_atomic(opener: &Opener) {
    let handles = [opener.open().await, opener.open().await];
    let dir = scratch_dir("update_many");
    let (a, b) = (format!("{dir}/a"), format!("{dir}/b"));
    let opened = update_many(
        &*handles[0],
        &[&a, &b],
        |now| {
            assert_eq!(now, [None, None], "new keys read as absent");
            vec![Some(Bytes::from("100")), Some(Bytes::from("100"))]
        },
        None,
    )
    .await;
    if matches!(opened, Err(Error::CallNotSupported { .. })) {
        // A store without transactions (`update` still works on it).
        return;
    }
    ok(opened, "open both balances");
    let number = |p: &Option<KvPair>| -> i64 {
        p.as_ref()
            .and_then(|p| p.value_str()?.parse().ok())
            .expect("a balance")
    };
    let tasks = (0..TASKS).map(|i| {
        let (store, a, b) = (handle(&handles, i), a.clone(), b.clone());
        async move {
            for j in 0..UPDATES {
                let amount = i64::try_from(i * UPDATES + j).unwrap() % 7 - 3;
                let after = ok(
                    update_many(
                        &*store,
                        &[&a, &b],
                        |now| {
                            let (x, y) = (number(&now[0]), number(&now[1]));
                            vec![
                                Some(Bytes::from((x - amount).to_string())),
                                Some(Bytes::from((y + amount).to_string())),
                            ]
                        },
                        None,
                    )
                    .await,
                    "update_many",
                );
                assert_eq!(number(&after[0]) + number(&after[1]), 200, "{after:?}");
            }
        }
    });
    join_all(tasks).await;
    let x = ok(handles[1].get(&a, None).await, "get a");
    let y = ok(handles[1].get(&b, None).await, "get b");
    assert_eq!(number(&Some(x)) + number(&Some(y)), 200);
    // A closure that changes nothing writes nothing.
    let before = ok(handles[0].get(&a, None).await, "get a");
    let same = ok(
        update_many(
            &*handles[0],
            &[&a],
            |now| vec![now[0].as_ref().map(|p| p.value.clone())],
            None,
        )
        .await,
        "no-op",
    );
    assert_eq!(same, vec![Some(before.clone())]);
    assert_eq!(ok(handles[0].get(&a, None).await, "get a"), before);
    assert_err!(
        update_many(&*handles[0], &[&a], |_| Vec::new(), None).await,
        Error::InvalidTxn { .. },
        "a closure that returns no value"
    );
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}

/// Five members join a group from two handles; a follower sees them, then sees the one that
/// leaves go, then the two of the handle that closes go — each list exactly the members
/// present.
pub async fn group_membership(opener: &Opener) {
    let handles = [opener.open().await, opener.open().await];
    let dir = scratch_dir("group");
    let opts = WriteOptions::default().with_ttl(opener.ttl);
    let mut members = Vec::new();
    for i in 0..5 {
        let member = format!("m{i}");
        let joined = Group::join(
            handle(&handles, i),
            &dir,
            &member,
            format!("addr-{i}"),
            Some(&opts),
        )
        .await;
        members.push(ok(joined, "join"));
    }
    assert_err!(
        Group::join(handles[0].clone(), &dir, "a/b", "x", None).await,
        Error::InvalidKey { .. },
        "a member name with a slash"
    );
    let mut follow = ok(Group::follow(&*handles[0], &dir).await, "follow");
    let names = |list: &[KvPair]| -> Vec<String> {
        list.iter()
            .map(|p| p.key.rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    let mut until = async |want: &[&str], what: &str| loop {
        let list = ok(next_within(&mut follow, what).await, what);
        if names(&list) == want {
            return list;
        }
    };
    let all = until(&["m0", "m1", "m2", "m3", "m4"], "the five members").await;
    assert_eq!(all[2].value, Bytes::from("addr-2"));
    // m2 joined on handle 0: it leaves.
    ok(members.remove(2).leave().await, "leave");
    until(&["m0", "m1", "m3", "m4"], "after m2 left").await;
    // m1 and m3 joined on handle 1, which closes.
    let [first, second] = handles;
    let _ = second.close().await;
    until(&["m0", "m4"], "after handle 1 closed").await;
    drop(members);
    until(&[], "after every membership was dropped").await;
    drop(follow);
    cleanup(&*first, &dir).await;
    let _ = first.close().await;
}

/// Acquisitions per task in [`semaphore_never_over_permits`].
const ROUNDS: usize = 4;

/// 8 tasks on two handles contend for 3 permits, 4 times each: never more than 3 hold at once,
/// and the fencing tokens of each permit strictly increase from holder to holder.
pub async fn semaphore_never_over_permits(opener: &Opener) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kvstore_core::{LockOptions, Semaphore};

    let handles = [opener.open().await, opener.open().await];
    let dir = scratch_dir("semaphore");
    let key = format!("{dir}/pool");
    let opts = LockOptions::default().with_ttl(opener.ttl * 4);
    if !handles[0].capabilities().lock {
        let semaphore = ok(Semaphore::new(handles[0].clone(), &key, 3, None), "new");
        assert!(semaphore.acquire().await.is_err(), "a store without locks");
        return;
    }
    assert_err!(
        Semaphore::new(handles[0].clone(), &key, 0, None),
        Error::InvalidConfig { .. },
        "0 permits"
    );
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let tasks = (0..TASKS).map(|i| {
        let semaphore = ok(
            Semaphore::new(handle(&handles, i), &key, 3, Some(&opts)),
            "Semaphore::new",
        );
        let (holding, most, grants) = (holding.clone(), most.clone(), grants.clone());
        async move {
            for _ in 0..ROUNDS {
                let permit = ok(
                    tokio::time::timeout(crate::EVENT_TIMEOUT * 6, semaphore.acquire())
                        .await
                        .expect("a permit within the bound"),
                    "acquire",
                );
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let token = permit.fencing_token().expect("a held permit has a token");
                grants
                    .lock()
                    .unwrap()
                    .push((permit.key().to_owned(), token));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                ok(permit.release().await, "release");
            }
        }
    });
    join_all(tasks).await;
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders of 3 permits at once");
    let grants = grants.lock().unwrap().clone();
    assert_eq!(grants.len(), TASKS * ROUNDS);
    let keys: BTreeSet<&str> = grants.iter().map(|(k, _)| k.as_str()).collect();
    for permit in keys {
        let tokens: Vec<u64> = grants
            .iter()
            .filter(|(k, _)| k == permit)
            .map(|(_, t)| *t)
            .collect();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "tokens of {permit} must strictly increase: {tokens:?}"
        );
    }
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}

/// A read-write lock: two readers on two handles hold it at once; then, under a stream of
/// readers from both handles, a writer gets in within the bound while the readers keep coming,
/// no reader holds while it writes, and its token guards a write with `when_held` until it
/// releases.
pub async fn rwlock_writer_not_starved(opener: &Opener) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use kvstore_core::{LockOptions, RwLock, Txn};

    let handles = [opener.open().await, opener.open().await];
    if !handles[0].capabilities().lock || !handles[0].capabilities().watch_tree {
        return;
    }
    let dir = scratch_dir("rwlock");
    let key = format!("{dir}/lock");
    let opts = LockOptions::default().with_ttl(opener.ttl * 4);
    let bound = crate::EVENT_TIMEOUT * 2;
    // Readers share the lock: a second read is granted while the first is held.
    let first = ok(RwLock::new(handles[0].clone(), &key, Some(&opts)), "new");
    let second = ok(RwLock::new(handles[1].clone(), &key, Some(&opts)), "new");
    let held = ok(first.read().await, "a first read");
    let shared = tokio::time::timeout(bound, second.read())
        .await
        .unwrap_or_else(|_| panic!("a second reader waited {bound:?} behind a reader"));
    ok(ok(shared, "a second read").release().await, "release");
    ok(held.release().await, "release");
    let readers = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_tasks: Vec<_> = (0..6)
        .map(|i| {
            let lock = ok(RwLock::new(handle(&handles, i), &key, Some(&opts)), "new");
            let (readers, writing, stop) = (readers.clone(), writing.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) {
                    let permit = ok(lock.read().await, "read");
                    assert!(!writing.load(Ordering::SeqCst), "a reader while writing");
                    readers.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    ok(permit.release().await, "release a read");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lock = ok(RwLock::new(handles[0].clone(), &key, Some(&opts)), "new");
    let write = tokio::time::timeout(bound, lock.write())
        .await
        .unwrap_or_else(|_| panic!("the writer was starved for {bound:?}"));
    let write = ok(write, "write");
    writing.store(true, Ordering::SeqCst);
    assert_eq!(readers.load(Ordering::SeqCst), 0, "readers while writing");
    let token = write.fencing_token().expect("a held write has a token");
    let guarded = format!("{dir}/guarded");
    let txn = Txn::new()
        .when_held(write.key(), token)
        .put(&guarded, "written");
    ok(
        handles[1].txn(&txn).await,
        "a write guarded by the write hold",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(readers.load(Ordering::SeqCst), 0, "readers while writing");
    writing.store(false, Ordering::SeqCst);
    ok(write.release().await, "release the write");
    assert_err!(
        handles[1].txn(&txn).await,
        Error::LockNotHeld { .. },
        "a write guarded by a released hold"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for task in reader_tasks {
        reads += tokio::time::timeout(bound, task)
            .await
            .expect("the readers stop")
            .expect("a reader task panicked");
    }
    assert!(reads >= 6, "the readers read ({reads})");
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}
