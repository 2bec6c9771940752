//! Data written by other clients: the sample that valkeyrie v1 (and the servers' own CLIs)
//! write, and the checks that kvstore reads it exactly. A backend's test writes the sample with
//! the raw client under a directory, then calls these.

use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{Error, KvPair, Store};

use crate::{keys, next_within, ok};

/// The sample, relative to its directory: `(key, value)` in key order. `a/b/d` holds every
/// byte value 0..=255 once; `e` is empty. `ttl30` is written with a 30 s TTL by the writer.
pub fn foreign_sample() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a/b/c", b"v1".to_vec()),
        ("a/b/d", (0..=255u8).collect()),
        ("e", Vec::new()),
        ("ttl30", b"expires".to_vec()),
    ]
}

/// `get`, `exists` and `list` through `store` return the sample under `dir` byte for byte,
/// with non-zero indexes; `extra` names keys the backend also reports (see its docs), which
/// `list` must return too, in order.
pub async fn reads_foreign_sample(store: &dyn Store, dir: &str, extra: &[&str]) {
    for (key, value) in foreign_sample() {
        let key = format!("{dir}/{key}");
        let pair = ok(store.get(&key, None).await, &format!("get {key}"));
        assert_eq!(pair.key, key);
        assert_eq!(&pair.value[..], &value[..], "value of {key}");
        assert_ne!(pair.last_index, 0, "last_index of {key}");
        assert!(ok(store.exists(&key, None).await, "exists"), "{key} exists");
    }
    let listed = ok(store.list(dir, None).await, "list");
    let mut want: Vec<String> = foreign_sample()
        .iter()
        .map(|(k, _)| format!("{dir}/{k}"))
        .chain(extra.iter().map(|k| format!("{dir}/{k}")))
        .collect();
    want.sort();
    assert_eq!(keys(&listed), want, "list({dir})");
    for (key, value) in foreign_sample() {
        let pair = listed
            .iter()
            .find(|p| p.key == format!("{dir}/{key}"))
            .expect("listed");
        assert_eq!(&pair.value[..], &value[..], "listed value of {key}");
    }
}

/// A CAS through `store` on a foreign key works: with the index `get` reported it succeeds,
/// with that index again it fails with `KeyModified`; `atomic_delete` with the new pair works.
pub async fn cas_on_foreign_key(store: &dyn Store, key: &str) {
    let read = ok(store.get(key, None).await, "get");
    let swapped = ok(
        store.atomic_put(key, b"swapped", Some(&read), None).await,
        "atomic_put on a foreign key",
    );
    assert_eq!(&swapped.value[..], b"swapped");
    assert_ne!(swapped.last_index, read.last_index);
    match store.atomic_put(key, b"stale", Some(&read), None).await {
        Err(Error::KeyModified { .. }) => {}
        other => panic!("a stale CAS must fail with KeyModified, got {other:?}"),
    }
    let current = ok(store.get(key, None).await, "get");
    assert_eq!(current, swapped);
    ok(store.atomic_delete(key, &current).await, "atomic_delete");
    assert!(!ok(store.exists(key, None).await, "exists"));
}

/// Opens `watch_tree(dir)` and `watch(key)`, runs `write` (a foreign write of `value` at
/// `key`, which must be below `dir`), and checks both watches report it.
pub async fn watches_see_foreign_write<F, Fut>(
    store: &dyn Store,
    dir: &str,
    key: &str,
    value: &[u8],
    write: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tree = ok(store.watch_tree(dir, None).await, "watch_tree");
    let mut single = ok(store.watch(key, None).await, "watch");
    let _initial_tree = ok(next_within(&mut tree, "initial tree").await, "tree");
    let _initial_key = ok(next_within(&mut single, "initial key").await, "key");
    write().await;
    let deadline = Duration::from_secs(10);
    let seen = tokio::time::timeout(deadline, async {
        loop {
            let item: Option<KvPair> = ok(single.next().await.expect("watch ended"), "watch item");
            if item.as_ref().is_some_and(|p| &p.value[..] == value) {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "watch({key}) did not see the foreign write");
    let seen = tokio::time::timeout(deadline, async {
        loop {
            let pairs = ok(tree.next().await.expect("watch_tree ended"), "tree item");
            if pairs.iter().any(|p| p.key == key && &p.value[..] == value) {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "watch_tree({dir}) did not see the foreign write"
    );
}
