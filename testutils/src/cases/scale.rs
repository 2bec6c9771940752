//! Scale: many concurrent calls and many watchers on one store.

use futures::StreamExt;
use futures::future::join_all;
use kvstore_core::Store;

use crate::{EVENT_TIMEOUT, cleanup, next_within, ok, scratch_dir};

/// Concurrent `put`s from one store.
const PUTS: usize = 500;
/// Watchers on one store, polled at once.
const WATCHERS: usize = 300;

/// 500 concurrent `put` calls from one store all succeed (a backend queues what its connection
/// budget cannot send at once; it never fails a call for being one too many).
pub async fn concurrent_puts(store: &dyn Store) {
    let dir = scratch_dir("concurrent_puts");
    let puts = (0..PUTS).map(|i| {
        let key = format!("{dir}/k{i:03}");
        async move { (store.put(&key, format!("v{i}").as_bytes(), None).await, key) }
    });
    for (result, key) in join_all(puts).await {
        ok(result, &format!("put {key} among {PUTS} concurrent ones"));
    }
    let listed = ok(store.list(&dir, None).await, "list");
    assert_eq!(listed.len(), PUTS, "every concurrent put is stored");
    cleanup(store, &dir).await;
}

/// 300 watchers on distinct keys of one store, polled at once: each sees its key's initial
/// state (absent), then its write.
pub async fn many_watchers(store: &dyn Store) {
    if !store.capabilities().watch {
        super::refused::watch(store, &scratch_dir("refused")).await;
        return;
    }
    let dir = scratch_dir("many_watchers");
    let keys: Vec<String> = (0..WATCHERS)
        .map(|i| format!("{dir}/d{}/k{i:03}", i % 10))
        .collect();
    let opened = join_all(keys.iter().map(|key| store.watch(key, None))).await;
    let mut watches: Vec<_> = opened
        .into_iter()
        .map(|w| ok(w, "watch among many"))
        .collect();
    let firsts = join_all(
        watches
            .iter_mut()
            .map(|w| async move { next_within(w, "a watcher's first state").await }),
    )
    .await;
    for first in firsts {
        assert_eq!(ok(first, "first state"), None, "the keys start absent");
    }
    for (result, key) in join_all(
        keys.iter()
            .map(|key| async move { (store.put(key, key.as_bytes(), None).await, key) }),
    )
    .await
    {
        ok(result, &format!("put {key}"));
    }
    let seen = join_all(watches.iter_mut().zip(&keys).map(|(w, key)| async move {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let item = tokio::time::timeout_at(deadline, futures::StreamExt::next(w)).await;
            match item {
                Ok(Some(Ok(Some(pair)))) if pair.value == key.as_bytes() => return Ok(()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => return Err(format!("{key}: watch ended: {err}")),
                Ok(None) => return Err(format!("{key}: watch ended")),
                Err(_) => return Err(format!("{key}: no write seen within {EVENT_TIMEOUT:?}")),
            }
        }
    }))
    .await;
    let missed: Vec<String> = seen.into_iter().filter_map(Result::err).collect();
    assert!(
        missed.is_empty(),
        "{} of {WATCHERS} watchers missed their write, first: {:?}",
        missed.len(),
        missed.first()
    );
    drop(watches);
    cleanup(store, &dir).await;
}

/// Keys in [`large_directory`] (`KVSTORE_LARGE_KEYS` overrides it, for a quicker local run).
pub const LARGE_DIRECTORY_KEYS: usize = 100_000;

/// A directory of 100,000 keys with 64-byte values: written in transactions of the store's
/// `max_txn_ops`, 16 at a time; `list` returns every key once, in bytewise order, with its
/// value (a reply the server or client limits is paginated, never refused); `delete_tree`
/// removes them all.
pub async fn large_directory(store: &dyn Store) {
    let keys = std::env::var("KVSTORE_LARGE_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(LARGE_DIRECTORY_KEYS);
    let dir = scratch_dir("large_directory");
    let value = |i: usize| format!("{i:064}").into_bytes();
    let key = |i: usize| format!("{dir}/d{}/k{i:06}", i % 16);
    let batch = store.capabilities().max_txn_ops.clamp(1, 128);
    let batches: Vec<Vec<usize>> = (0..keys)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(<[usize]>::to_vec)
        .collect();
    let written = futures::stream::iter(batches)
        .map(|batch| async move {
            let mut txn = kvstore_core::Txn::new();
            for &i in &batch {
                txn = txn.put(&key(i), value(i));
            }
            store.txn(&txn).await.map(|_| batch.len())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut total = 0;
    for w in written {
        total += ok(w, "a transaction writing the directory");
    }
    assert_eq!(total, keys, "every key written");

    let listed = ok(store.list(&dir, None).await, "list of the large directory");
    assert_eq!(listed.len(), keys, "list returns every key once");
    let mut expected: Vec<(String, usize)> = (0..keys).map(|i| (key(i), i)).collect();
    expected.sort();
    for (pair, (key, i)) in listed.iter().zip(&expected) {
        assert_eq!(&pair.key, key, "list is in bytewise key order");
        assert_eq!(pair.value, value(*i), "{key}: its value");
    }
    // A watcher of the directory sees the whole listing, then the directory emptied by one
    // `delete_tree` (on etcd one revision of 100,000 delete events, more than one reply).
    let mut watch = if store.capabilities().watch_tree {
        let mut watch = ok(store.watch_tree(&dir, None).await, "watch_tree");
        let first = ok(next_within(&mut watch, "the first listing").await, "first");
        assert_eq!(
            first.len(),
            keys,
            "the watcher's first listing has every key"
        );
        Some(watch)
    } else {
        None
    };
    ok(
        store.delete_tree(&dir).await,
        "delete_tree of the large directory",
    );
    if let Some(watch) = &mut watch {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT * 6;
        loop {
            let item = tokio::time::timeout_at(deadline, watch.next())
                .await
                .expect("the watcher sees the directory emptied");
            let listing = ok(
                item.expect("the watch goes on"),
                "watch_tree after delete_tree",
            );
            if listing.is_empty() {
                break;
            }
        }
    }
    assert_err!(
        store.list(&dir, None).await,
        kvstore_core::Error::KeyNotFound { .. },
        "list after delete_tree"
    );
}

/// Values at the store's `max_value_size` (at most 1 MiB): eight keys written, read back whole
/// by `get` and by one `list` (several MiB in all, so a store whose replies are limited must
/// page the list), then deleted.
pub async fn largest_values(store: &dyn Store) {
    let size = store.capabilities().max_value_size.min(1 << 20);
    let dir = scratch_dir("largest_values");
    let value = |i: usize| -> Vec<u8> {
        (0..size)
            .map(|j| u8::try_from((j * 31 + i * 7) % 251).expect("below 251"))
            .collect()
    };
    for i in 0..8 {
        let key = format!("{dir}/k{i}");
        ok(
            store.put(&key, &value(i), None).await,
            &format!("put of {size} bytes"),
        );
        let got = ok(store.get(&key, None).await, "get of the largest value");
        assert!(
            got.value == value(i),
            "{key}: the {size}-byte value reads back whole"
        );
    }
    let listed = ok(store.list(&dir, None).await, "list of the largest values");
    assert_eq!(listed.len(), 8, "list returns every key");
    for (i, pair) in listed.iter().enumerate() {
        assert!(pair.value == value(i), "{}: listed whole", pair.key);
    }
    cleanup(store, &dir).await;
}
