//! Scale: many concurrent calls and many watchers on one store.

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
