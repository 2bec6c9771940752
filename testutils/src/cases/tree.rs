//! Directories: `list` and `delete_tree`.

use kvstore_core::{Error, Store};

use crate::{cleanup, keys, ok, scratch_dir};

/// `list`: recursive, sorted, `dir` excluded, `a` vs `ab` isolated, leaf → empty, missing →
/// `KeyNotFound`.
pub async fn list_directory(store: &dyn Store) {
    let dir = scratch_dir("list");
    for key in ["a", "a/x", "a/y/z", "a/b", "ab/x", "abc", "b"] {
        ok(
            store
                .put(&format!("{dir}/{key}"), key.as_bytes(), None)
                .await,
            "put",
        );
    }
    let listed = ok(store.list(&format!("{dir}/a"), None).await, "list a");
    let want: Vec<String> = ["a/b", "a/x", "a/y/z"]
        .iter()
        .map(|k| format!("{dir}/{k}"))
        .collect();
    assert_eq!(
        keys(&listed),
        want,
        "list(a) must return every descendant, sorted, not a itself, not ab/*"
    );
    for pair in &listed {
        assert_eq!(
            pair.value,
            pair.key
                .strip_prefix(&format!("{dir}/"))
                .unwrap_or_default()
                .as_bytes(),
            "listed value"
        );
        assert_ne!(pair.last_index, 0, "listed last_index must be non-zero");
    }
    let with_slashes = ok(store.list(&format!("/{dir}/a/"), None).await, "list /a/");
    assert_eq!(listed, with_slashes, "list ignores leading and trailing /");

    let all = ok(store.list(&dir, None).await, "list dir");
    let want: Vec<String> = ["a", "a/b", "a/x", "a/y/z", "ab/x", "abc", "b"]
        .iter()
        .map(|k| format!("{dir}/{k}"))
        .collect();
    assert_eq!(keys(&all), want, "list(dir) must be recursive and sorted");

    let leaf = ok(
        store.list(&format!("{dir}/b"), None).await,
        "list of a leaf",
    );
    assert!(
        leaf.is_empty(),
        "a leaf with no children lists as empty, got {:?}",
        keys(&leaf)
    );
    assert_err!(
        store.list(&format!("{dir}/missing"), None).await,
        Error::KeyNotFound { .. },
        "list of a missing dir"
    );
    // A directory that exists only through its descendants is a directory.
    let implicit = ok(
        store.list(&format!("{dir}/a/y"), None).await,
        "list of an implicit dir",
    );
    assert_eq!(keys(&implicit), vec![format!("{dir}/a/y/z")]);
    cleanup(store, &dir).await;
}

/// `list("")` is the whole keyspace: it includes this case's keys, sorted and normalized.
pub async fn list_whole_keyspace(store: &dyn Store) {
    let dir = scratch_dir("list_all");
    ok(store.put(&format!("{dir}/k1"), b"1", None).await, "put");
    ok(store.put(&format!("{dir}/k2"), b"2", None).await, "put");
    for root in ["", "/"] {
        let all = ok(store.list(root, None).await, "list of the whole keyspace");
        let ks = keys(&all);
        assert!(
            ks.windows(2).all(|w| w[0] < w[1]),
            "list(\"\") must be sorted without duplicates"
        );
        assert!(
            ks.iter().all(|k| !k.starts_with('/') && !k.ends_with('/')),
            "keys must be normalized"
        );
        let ours: Vec<&str> = ks
            .iter()
            .copied()
            .filter(|k| k.starts_with(&format!("{dir}/")))
            .collect();
        assert_eq!(
            ours,
            vec![format!("{dir}/k1"), format!("{dir}/k2")],
            "list(\"\") must include our keys"
        );
    }
    cleanup(store, &dir).await;
}

/// `delete_tree` deletes `dir` and its descendants, nothing else; missing → `KeyNotFound`.
pub async fn delete_tree(store: &dyn Store) {
    let dir = scratch_dir("delete_tree");
    for key in ["a", "a/x", "a/y/z", "ab/x", "abc", "b"] {
        ok(store.put(&format!("{dir}/{key}"), b"v", None).await, "put");
    }
    ok(
        store.delete_tree(&format!("/{dir}/a/")).await,
        "delete_tree a",
    );
    let left = ok(store.list(&dir, None).await, "list after delete_tree");
    let want: Vec<String> = ["ab/x", "abc", "b"]
        .iter()
        .map(|k| format!("{dir}/{k}"))
        .collect();
    assert_eq!(
        keys(&left),
        want,
        "delete_tree(a) must delete a and a/*, never ab/* or abc"
    );
    assert_err!(
        store.delete_tree(&format!("{dir}/a")).await,
        Error::KeyNotFound { .. },
        "delete_tree of a missing tree"
    );
    // A tree that exists only through descendants.
    ok(
        store.delete_tree(&format!("{dir}/ab")).await,
        "delete_tree of an implicit dir",
    );
    assert!(
        !ok(store.exists(&format!("{dir}/ab/x"), None).await, "exists"),
        "ab/x must be gone"
    );
    assert!(
        ok(store.exists(&format!("{dir}/abc"), None).await, "exists"),
        "abc must survive"
    );
    cleanup(store, &dir).await;
    assert_err!(
        store.list(&dir, None).await,
        Error::KeyNotFound { .. },
        "list after deleting everything"
    );
}
