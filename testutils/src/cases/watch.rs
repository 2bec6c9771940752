//! Watches of a key and of a directory.

use kvstore_core::{KvPair, Store};

use crate::{Opener, cleanup, keys, next_within, ok, scratch_dir};

pub(super) fn expect_state(
    item: kvstore_core::Result<Option<KvPair>>,
    want: Option<&[u8]>,
    what: &str,
) -> Option<KvPair> {
    let state = ok(item, what);
    assert_eq!(state.as_ref().map(|p| &p.value[..]), want, "{what}");
    state
}

/// `watch`: current state first (`None` when missing), an item per write, `None` on delete.
pub async fn watch_key(store: &dyn Store) {
    let dir = scratch_dir("watch");
    let key = format!("{dir}/k");
    if !store.capabilities().watch {
        super::refused::watch(store, &key).await;
        return;
    }
    let mut stream = ok(store.watch(&key, None).await, "watch of a missing key");
    expect_state(
        next_within(&mut stream, "initial state").await,
        None,
        "a missing key's first item is None",
    );

    let mut last = 0;
    for value in [&b"v1"[..], b"v2", b"v3"] {
        let written = ok(store.put(&key, value, None).await, "put");
        let seen = expect_state(
            next_within(&mut stream, "item after put").await,
            Some(value),
            "item after put",
        )
        .unwrap();
        assert_eq!(seen.key, key, "watch items carry the normalized key");
        assert_eq!(
            seen.last_index, written.last_index,
            "watch item index = written index"
        );
        assert!(seen.last_index > last, "watch items never go backwards");
        last = seen.last_index;
    }
    // A write below the key is not a change of the key.
    ok(
        store.put(&format!("{key}/child"), b"c", None).await,
        "put child",
    );
    ok(store.delete(&key).await, "delete");
    expect_state(
        next_within(&mut stream, "item after delete").await,
        None,
        "delete yields None",
    );

    // A watch on an existing key starts with its state.
    ok(store.put(&key, b"again", None).await, "put");
    let mut second = ok(
        store.watch(&format!("/{key}/"), None).await,
        "watch of an existing key",
    );
    expect_state(
        next_within(&mut second, "initial state").await,
        Some(b"again"),
        "first item is the current value",
    );
    expect_state(
        next_within(&mut stream, "item after re-create").await,
        Some(b"again"),
        "re-create is seen",
    );
    drop(second);
    drop(stream);
    cleanup(store, &dir).await;
}

/// `watch_tree`: the full listing first and after every create, value change and delete.
pub async fn watch_tree(store: &dyn Store) {
    let dir = scratch_dir("watch_tree");
    let tree = format!("{dir}/tree");
    if !store.capabilities().watch_tree {
        super::refused::watch_tree(store, &tree).await;
        return;
    }
    let mut stream = ok(
        store.watch_tree(&tree, None).await,
        "watch_tree of a missing dir",
    );
    let first = ok(
        next_within(&mut stream, "initial listing").await,
        "initial listing",
    );
    assert!(
        first.is_empty(),
        "a missing dir's first listing is empty, got {:?}",
        keys(&first)
    );

    let a = format!("{tree}/a");
    let deep = format!("{tree}/x/y/deep");
    ok(store.put(&a, b"1", None).await, "create a");
    let l = ok(
        next_within(&mut stream, "listing after create").await,
        "listing",
    );
    assert_eq!(keys(&l), vec![a.as_str()], "create is seen");

    ok(
        store.put(&deep, b"d", None).await,
        "create a deep descendant",
    );
    let l = ok(
        next_within(&mut stream, "listing after deep create").await,
        "listing",
    );
    assert_eq!(
        keys(&l),
        vec![a.as_str(), deep.as_str()],
        "a deep create is seen, sorted"
    );

    ok(store.put(&a, b"2", None).await, "change a");
    let l = ok(
        next_within(&mut stream, "listing after value change").await,
        "listing",
    );
    assert_eq!(&l[0].value[..], b"2", "a child's value change is seen");

    // Writes outside the tree (including a sibling sharing the prefix) are not changes.
    ok(
        store.put(&format!("{dir}/treehouse"), b"no", None).await,
        "put sibling",
    );
    ok(store.delete(&deep).await, "delete deep");
    let l = ok(
        next_within(&mut stream, "listing after delete").await,
        "listing",
    );
    assert_eq!(
        keys(&l),
        vec![a.as_str()],
        "a delete is seen and siblings are not listed"
    );

    ok(store.delete(&a).await, "delete a");
    let l = ok(
        next_within(&mut stream, "listing after last delete").await,
        "listing",
    );
    assert!(l.is_empty(), "an emptied dir lists as empty");
    drop(stream);
    cleanup(store, &dir).await;
}

/// Dropping a watch stream stops it; the store keeps working and new watches work.
pub async fn watch_drop_stops(store: &dyn Store) {
    if !store.capabilities().watch {
        super::refused::watch(store, &scratch_dir("refused")).await;
        return;
    }
    let dir = scratch_dir("watch_drop");
    let key = format!("{dir}/k");
    for round in 0..20 {
        let mut stream = ok(store.watch(&key, None).await, "watch");
        next_within(&mut stream, "initial state")
            .await
            .expect("initial state");
        ok(
            store.put(&key, format!("{round}").as_bytes(), None).await,
            "put",
        );
        drop(stream);
    }
    let mut stream = ok(
        store.watch(&key, None).await,
        "watch after many dropped watches",
    );
    expect_state(
        next_within(&mut stream, "initial").await,
        Some(b"19"),
        "latest state",
    );
    cleanup(store, &dir).await;
}

/// A watch sees writes made through another, independent client.
pub async fn watch_sees_other_clients(opener: &Opener) {
    let (watcher, writer) = (opener.open().await, opener.open().await);
    if !watcher.capabilities().watch {
        super::refused::watch(&*watcher, &scratch_dir("refused")).await;
        return;
    }
    let dir = scratch_dir("watch_other");
    let key = format!("{dir}/k");
    let mut stream = ok(watcher.watch(&key, None).await, "watch");
    expect_state(next_within(&mut stream, "initial").await, None, "initial");
    ok(
        writer.put(&key, b"from-b", None).await,
        "put from another client",
    );
    expect_state(
        next_within(&mut stream, "remote put").await,
        Some(b"from-b"),
        "remote write seen",
    );
    ok(writer.delete(&key).await, "delete from another client");
    expect_state(
        next_within(&mut stream, "remote delete").await,
        None,
        "remote delete seen",
    );
    drop(stream);
    cleanup(&*writer, &dir).await;
    let _ = watcher.close().await;
    let _ = writer.close().await;
}
