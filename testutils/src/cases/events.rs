//! Per-key watch events (`watch_events`) and the revision-returning `list_at`, checked against
//! the fold invariant: the items received so far, folded over an empty map, give `list(dir)`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{
    Error, EventKind, EventStream, KvPair, Store, Txn, WatchEvent, WatchOptions, WriteOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{EVENT_TIMEOUT, Opener, cleanup, next_within, ok, scratch_dir};

/// Whether the store has `watch_events`; where it has not, `watch_events` must be refused —
/// `CallNotSupported`, or `InvalidConfig` where the server's configuration is what lacks
/// (Redis without keyspace notifications) — and `list_at` refused the same way unless it
/// answers (it needs no wake-ups).
pub(crate) async fn can_watch_events(store: &dyn Store, dir: &str) -> bool {
    if store.capabilities().events {
        return true;
    }
    assert_err!(
        store.watch_events(dir, None).await,
        Error::CallNotSupported { .. } | Error::InvalidConfig { .. },
        "watch_events without the capability"
    );
    if let Err(err) = store.list_at(dir, None).await {
        assert!(
            matches!(err, Error::CallNotSupported { .. }),
            "list_at without the capability: {err:?}"
        );
    }
    false
}

/// A consumer's view: the fold of every item received, checked item by item.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    view: BTreeMap<String, KvPair>,
    revision: Option<u64>,
    /// Every `Put` received, as (key, last_index).
    puts: Vec<(String, u64)>,
    items: usize,
}

impl Folded {
    /// Folds `item`, checking that revisions strictly increase, that every event is under
    /// `dir` and within the item's revision, and that a `Snapshot` is sorted.
    pub(crate) fn apply(&mut self, item: &WatchEvent, dir: &str) {
        let revision = item.revision();
        if let Some(last) = self.revision {
            assert!(
                revision > last,
                "revisions must strictly increase: {revision} after {last}"
            );
        }
        let under = |key: &str| dir.is_empty() || key.starts_with(&format!("{dir}/"));
        match item {
            WatchEvent::Snapshot { pairs, .. } => {
                assert!(
                    pairs.windows(2).all(|w| w[0].key < w[1].key),
                    "a Snapshot is sorted by key"
                );
                for p in pairs {
                    assert!(under(&p.key), "Snapshot of {dir} holds {}", p.key);
                    assert!(
                        p.last_index <= revision,
                        "{} is newer than its Snapshot",
                        p.key
                    );
                }
            }
            WatchEvent::Changes { events, .. } => {
                assert!(!events.is_empty(), "a Changes item is never empty");
                for e in events {
                    assert!(under(&e.key), "an event of {dir} names {}", e.key);
                    assert!(
                        e.last_index <= revision && self.revision.is_none_or(|r| e.last_index > r),
                        "event {e:?} is outside its item's revisions ({:?}, {revision}]",
                        self.revision
                    );
                    match e.kind {
                        EventKind::Put => self.puts.push((e.key.clone(), e.last_index)),
                        EventKind::Delete => assert!(e.value.is_empty(), "a Delete has no value"),
                        _ => panic!("unknown event kind {e:?}"),
                    }
                }
            }
            _ => panic!("unknown item {item:?}"),
        }
        item.apply(&mut self.view);
        self.revision = Some(revision);
        self.items += 1;
    }

    pub(crate) fn pairs(&self) -> Vec<KvPair> {
        self.view.values().cloned().collect()
    }

    pub(crate) fn revision(&self) -> Option<u64> {
        self.revision
    }
}

/// The next item of `stream`, folded into `folded`.
pub(crate) async fn fold_next(
    stream: &mut EventStream,
    folded: &mut Folded,
    dir: &str,
    what: &str,
) {
    let item = ok(next_within(stream, what).await, what);
    folded.apply(&item, dir);
}

/// Reads items until the fold equals `list_at(dir)` (within [`EVENT_TIMEOUT`]): the writers
/// have stopped, so the view must reach the store's state, and may not pass it.
pub(crate) async fn catch_up(
    store: &dyn Store,
    stream: &mut EventStream,
    folded: &mut Folded,
    dir: &str,
    what: &str,
) {
    catch_up_within(store, stream, folded, dir, what, EVENT_TIMEOUT).await;
}

/// [`catch_up`] within `limit`; a transient `list_at` error (a server coming back) is retried.
pub(crate) async fn catch_up_within(
    store: &dyn Store,
    stream: &mut EventStream,
    folded: &mut Folded,
    dir: &str,
    what: &str,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let listed = match store.list_at(dir, None).await {
            Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => None,
            other => Some(ok(other, "list_at")),
        };
        if let Some((pairs, revision)) = &listed
            && folded.pairs() == *pairs
        {
            assert!(
                folded.revision().is_some_and(|r| r <= *revision),
                "{what}: the view is at {:?}, past the store's {revision}",
                folded.revision()
            );
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = left.min(Duration::from_millis(500));
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(item)) => folded.apply(&ok(item, what), dir),
            Ok(None) => panic!("{what}: the event stream ended"),
            Err(_) if left.is_zero() => panic!(
                "{what}: the fold of the events never reached list_at\nfold: {:?}\nlist: {:?}",
                folded.pairs(),
                listed
            ),
            Err(_) => {}
        }
    }
}

/// Writes a burst under `dir` from `store`: puts of new keys, an update, a delete; each call
/// retried while the server is away (transient errors), for up to 30 s.
pub(crate) async fn write_burst(store: &dyn Store, dir: &str, tag: &str) {
    for i in 0..5 {
        let key = format!("{dir}/{tag}{i}");
        crate::retry_transient(Duration::from_secs(30), "put", || {
            store.put(&key, tag.as_bytes(), None)
        })
        .await;
    }
    let first = format!("{dir}/{tag}0");
    crate::retry_transient(Duration::from_secs(30), "update", || {
        store.put(&first, b"updated", None)
    })
    .await;
    let last = format!("{dir}/{tag}4");
    crate::retry_transient(Duration::from_secs(30), "delete", || store.delete(&last)).await;
}

/// `list_at` gives the pairs and their revision (an empty list for a missing directory);
/// `watch_events` starts with a `Snapshot` equal to it, then one event per key per change —
/// puts, updates, deletes, a `delete_tree` — and nothing for keys outside the directory.
pub async fn events_snapshot_and_changes(store: &dyn Store) {
    let dir = scratch_dir("events");
    if !can_watch_events(store, &dir).await {
        return;
    }
    let (missing, _) = ok(
        store.list_at(&dir, None).await,
        "list_at of a missing directory",
    );
    assert!(missing.is_empty(), "a missing directory lists as empty");
    let a = ok(store.put(&format!("{dir}/a"), b"1", None).await, "put a");
    let b = ok(store.put(&format!("{dir}/b"), b"2", None).await, "put b");
    let (pairs, revision) = ok(store.list_at(&dir, None).await, "list_at");
    assert_eq!(
        pairs,
        vec![a.clone(), b.clone()],
        "list_at lists the directory"
    );
    assert!(
        revision >= b.last_index,
        "list_at's revision covers what it read"
    );

    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    let mut folded = Folded::default();
    fold_next(&mut stream, &mut folded, &dir, "the first item").await;
    assert_eq!(folded.items, 1);
    assert_eq!(
        folded.pairs(),
        pairs,
        "the first item is a Snapshot of the directory"
    );

    // One event per write, with the written index.
    let c = ok(store.put(&format!("{dir}/c"), b"3", None).await, "put c");
    let item = ok(
        next_within(&mut stream, "the put's item").await,
        "watch_events",
    );
    folded.apply(&item, &dir);
    let WatchEvent::Changes { events, .. } = &item else {
        panic!("a put gives a Changes item, not {item:?}")
    };
    assert_eq!(events.len(), 1, "one event for one put: {events:?}");
    assert_eq!(
        (
            events[0].kind,
            events[0].key.as_str(),
            &events[0].value[..],
            events[0].last_index
        ),
        (EventKind::Put, c.key.as_str(), &b"3"[..], c.last_index)
    );
    ok(
        store.put(&format!("{dir}/a"), b"1b", None).await,
        "update a",
    );
    ok(store.delete(&b.key).await, "delete b");
    // A write outside the directory (a sibling whose name starts alike) is no event of it.
    ok(
        store.put(&format!("{dir}x/other"), b"x", None).await,
        "put outside",
    );
    ok(
        store.put(&format!("{dir}/sub/1"), b"s1", None).await,
        "put sub/1",
    );
    ok(
        store.put(&format!("{dir}/sub/2"), b"s2", None).await,
        "put sub/2",
    );
    catch_up(
        store,
        &mut stream,
        &mut folded,
        &dir,
        "after puts and a delete",
    )
    .await;
    ok(
        store.delete_tree(&format!("{dir}/sub")).await,
        "delete_tree sub",
    );
    catch_up(store, &mut stream, &mut folded, &dir, "after a delete_tree").await;
    assert!(
        folded.view.keys().all(|k| !k.contains("/sub/")),
        "delete_tree removed every key below it"
    );
    drop(stream);
    cleanup(store, &dir).await;
    cleanup(store, &format!("{dir}x")).await;
}

/// A transaction's writes under the directory arrive in one `Changes` item.
pub async fn events_txn_one_item(store: &dyn Store) {
    let dir = scratch_dir("events_txn");
    if !can_watch_events(store, &dir).await || store.capabilities().max_txn_ops == 0 {
        return;
    }
    ok(store.put(&format!("{dir}/gone"), b"g", None).await, "put");
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    let mut folded = Folded::default();
    fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    let txn = Txn::new()
        .put(&format!("{dir}/x"), "1")
        .put(&format!("{dir}/y"), "2")
        .delete(&format!("{dir}/gone"));
    ok(store.txn(&txn).await, "txn");
    let item = ok(
        next_within(&mut stream, "the txn's item").await,
        "watch_events",
    );
    folded.apply(&item, &dir);
    let WatchEvent::Changes { events, .. } = &item else {
        panic!("a txn gives a Changes item, not {item:?}")
    };
    let mut seen: Vec<(EventKind, &str)> =
        events.iter().map(|e| (e.kind, e.key.as_str())).collect();
    seen.sort_by_key(|(_, k)| *k);
    let (gone, x, y) = (
        format!("{dir}/gone"),
        format!("{dir}/x"),
        format!("{dir}/y"),
    );
    assert_eq!(
        seen,
        vec![
            (EventKind::Delete, gone.as_str()),
            (EventKind::Put, x.as_str()),
            (EventKind::Put, y.as_str())
        ],
        "the transaction's three writes in one item"
    );
    catch_up(store, &mut stream, &mut folded, &dir, "after the txn").await;
    drop(stream);
    cleanup(store, &dir).await;
}

/// `since` a revision from `list_at`: the stream starts with the changes after it (or, where
/// the store can no longer tell them, a `Snapshot`), and the fold reaches the store's state.
pub async fn events_resume(store: &dyn Store) {
    let dir = scratch_dir("events_resume");
    if !can_watch_events(store, &dir).await {
        return;
    }
    let x = ok(store.put(&format!("{dir}/x"), b"1", None).await, "put x");
    let (pairs, revision) = ok(store.list_at(&dir, None).await, "list_at");
    let y = ok(store.put(&format!("{dir}/y"), b"2", None).await, "put y");
    ok(store.delete(&x.key).await, "delete x");
    let z = ok(store.put(&format!("{dir}/z"), b"3", None).await, "put z");
    let opts = WatchOptions::default().with_since(revision);
    let mut stream = ok(
        store.watch_events(&dir, Some(&opts)).await,
        "watch_events since",
    );
    // The consumer's view at `revision`, as it would have kept it.
    let mut folded = Folded {
        view: pairs.into_iter().map(|p| (p.key.clone(), p)).collect(),
        revision: Some(revision),
        ..Folded::default()
    };
    let first = ok(
        next_within(&mut stream, "the first item").await,
        "watch_events",
    );
    if let WatchEvent::Changes { events, .. } = &first {
        let got: Vec<(EventKind, &str)> = events.iter().map(|e| (e.kind, e.key.as_str())).collect();
        let want = [
            (EventKind::Put, y.key.as_str()),
            (EventKind::Delete, x.key.as_str()),
            (EventKind::Put, z.key.as_str()),
        ];
        assert!(
            want.starts_with(&got),
            "the first item after `since` starts the missed changes in order: {got:?}"
        );
    }
    folded.apply(&first, &dir);
    catch_up(store, &mut stream, &mut folded, &dir, "resumed").await;
    drop(stream);
    cleanup(store, &dir).await;
}

/// A consumer that reads nothing while 200 writes happen loses nothing: its next items (fewer,
/// larger batches allowed) fold to the store's state.
pub async fn events_slow_consumer(store: &dyn Store) {
    let dir = scratch_dir("events_slow");
    if !can_watch_events(store, &dir).await {
        return;
    }
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    let mut folded = Folded::default();
    fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    for i in 0..200 {
        let key = format!("{dir}/k{}", i % 40);
        if i % 7 == 6 {
            match store.delete(&key).await {
                Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                Err(err) => panic!("delete failed: {err}"),
            }
        } else {
            ok(
                store.put(&key, format!("v{i}").as_bytes(), None).await,
                "put",
            );
        }
    }
    catch_up(
        store,
        &mut stream,
        &mut folded,
        &dir,
        "after 200 unread writes",
    )
    .await;
    assert!(folded.items <= 201, "never more items than writes");
    drop(stream);
    cleanup(store, &dir).await;
}

/// A key's expiry is a `Delete` event.
pub async fn events_expiry(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("events_ttl");
    if !can_watch_events(&*store, &dir).await || !store.capabilities().ttl {
        return;
    }
    let key = format!("{dir}/short");
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    let mut folded = Folded::default();
    fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    let opts = WriteOptions::default().with_ttl(opener.ttl);
    ok(store.put(&key, b"v", Some(&opts)).await, "put with a TTL");
    let deadline = tokio::time::Instant::now() + opener.ttl + opener.ttl_slack + EVENT_TIMEOUT;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no Delete event for {key} after its TTL"))
            .expect("the stream ended");
        let item = ok(item, "watch_events");
        folded.apply(&item, &dir);
        if let WatchEvent::Changes { events, .. } = &item
            && events
                .iter()
                .any(|e| e.key == key && e.kind == EventKind::Delete)
        {
            break;
        }
    }
    assert!(!folded.view.contains_key(&key));
    drop(stream);
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// The fold invariant under a random workload from two clients — puts, conditional puts,
/// deletes, TTL keys, `delete_tree`s and transactions — checked each time the writers pause;
/// and no event is invented: every `Put` received is a write a client made.
pub async fn events_fold_random(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("events_fold");
    if !can_watch_events(&*a, &dir).await {
        return;
    }
    let seed: u64 = rand::random();
    eprintln!("events_fold_random: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (txn_ops, ttl_ok) = (a.capabilities().max_txn_ops, a.capabilities().ttl);
    let mut stream = ok(a.watch_events(&dir, None).await, "watch_events");
    let mut folded = Folded::default();
    fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    let mut written: BTreeSet<(String, u64)> = BTreeSet::new();
    for phase in 0..4 {
        for _ in 0..40 {
            let client: &dyn Store = if rng.random_bool(0.5) { &*a } else { &*b };
            let key = format!(
                "{dir}/{}k{}",
                ["", "sub/"][rng.random_range(0..2)],
                rng.random_range(0..8)
            );
            match rng.random_range(0..10) {
                0..=3 => {
                    let p = ok(
                        client.put(&key, format!("{phase}").as_bytes(), None).await,
                        "put",
                    );
                    written.insert((p.key, p.last_index));
                }
                4 => match client.get(&key, None).await {
                    Ok(prev) => match client.atomic_put(&key, b"cas", Some(&prev), None).await {
                        Ok(p) => {
                            written.insert((p.key, p.last_index));
                        }
                        Err(Error::KeyModified { .. } | Error::KeyNotFound { .. }) => {}
                        Err(err) => panic!("atomic_put failed: {err}"),
                    },
                    Err(Error::KeyNotFound { .. }) => {}
                    Err(err) => panic!("get failed: {err}"),
                },
                5 | 6 => match client.delete(&key).await {
                    Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                    Err(err) => panic!("delete failed: {err}"),
                },
                7 if ttl_ok => {
                    let opts = WriteOptions::default().with_ttl(opener.ttl);
                    let p = ok(
                        client.put(&key, b"ttl", Some(&opts)).await,
                        "put with a TTL",
                    );
                    written.insert((p.key, p.last_index));
                }
                8 => match client.delete_tree(&format!("{dir}/sub")).await {
                    Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                    Err(err) => panic!("delete_tree failed: {err}"),
                },
                9 if txn_ops >= 2 => {
                    let (k1, k2) = (
                        format!("{dir}/t{}", rng.random_range(0..3)),
                        format!("{dir}/sub/t{}", rng.random_range(0..3)),
                    );
                    let txn = Txn::new().put(&k1, "t").put(&k2, "t");
                    for p in ok(client.txn(&txn).await, "txn").into_iter().flatten() {
                        written.insert((p.key, p.last_index));
                    }
                }
                _ => {
                    let p = ok(client.put(&key, b"other", None).await, "put");
                    written.insert((p.key, p.last_index));
                }
            }
        }
        catch_up(
            &*a,
            &mut stream,
            &mut folded,
            &dir,
            &format!("phase {phase} (seed {seed})"),
        )
        .await;
    }
    for put in &folded.puts {
        assert!(
            written.contains(put),
            "an invented Put event {put:?} (seed {seed})"
        );
    }
    drop(stream);
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// A [`Cache`](kvstore_core::Cache) of a directory: it starts as `list_at`, reads its own and
/// another client's writes after `wait_for`, answers `get`, `exists` and `list` of a
/// subdirectory like the store, and its `events()` fold to its content.
pub async fn cache_matches_the_store(opener: &Opener) {
    use kvstore_core::Cache;

    let (a, b) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("cache");
    if !a.capabilities().events {
        assert_err!(
            Cache::new(a.clone(), &dir).await,
            Error::CallNotSupported { .. } | Error::InvalidConfig { .. },
            "a Cache without watch_events"
        );
        return;
    }
    ok(a.put(&format!("{dir}/a"), b"1", None).await, "put a");
    ok(
        a.put(&format!("{dir}/sub/b"), b"2", None).await,
        "put sub/b",
    );
    let cache = tokio::time::timeout(EVENT_TIMEOUT, Cache::new(a.clone(), &dir))
        .await
        .expect("Cache::new returns within the event timeout");
    let cache = ok(cache, "Cache::new");
    let (listed, revision) = ok(a.list_at(&dir, None).await, "list_at");
    assert!(
        cache.revision() <= revision,
        "the cache is not ahead of the store"
    );
    assert_eq!(cache.list(&dir), listed, "a new cache holds the directory");
    let mut events = cache.events();
    let mut folded = Folded::default();
    fold_next(&mut events, &mut folded, &dir, "the cache's Snapshot").await;

    // Another client's write, read after `wait_for`.
    let c = ok(
        b.put(&format!("{dir}/sub/c"), b"3", None).await,
        "put from b",
    );
    let within = |f| async move {
        tokio::time::timeout(EVENT_TIMEOUT, f)
            .await
            .expect("the cache reached the revision in time")
    };
    ok(within(cache.wait_for(c.last_index)).await, "wait_for");
    assert_eq!(
        cache.get(&c.key),
        Some(c.clone()),
        "the cache reads the write"
    );
    assert!(cache.exists(&c.key));
    // A delete returns no index to wait for: the cache shows it within the event timeout.
    // (`list_at`'s revision is store-wide on etcd and Consul: other directories' writes move
    // it, and a cache of this one only moves with changes here.)
    ok(b.delete(&format!("{dir}/a")).await, "delete a from b");
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while cache.exists(&format!("{dir}/a")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never applied the delete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (listed, _) = ok(a.list_at(&dir, None).await, "list_at");
    assert_eq!(cache.list(&dir), listed);
    let sub = ok(a.list(&format!("{dir}/sub"), None).await, "list sub");
    assert_eq!(
        cache.list(&format!("{dir}/sub")),
        sub,
        "a subdirectory lists like the store"
    );
    assert!(cache.list(&format!("{dir}/none")).is_empty());
    assert_eq!(cache.get("elsewhere/x"), None);
    // What `events()` gave folds to the cache's content.
    let expected = cache.list(&dir);
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while folded.pairs() != expected {
        let item = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the cache's events reach its content")
            .expect("the events stream ended");
        folded.apply(&ok(item, "cache event"), &dir);
    }
    drop(events);
    drop(cache);
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}
