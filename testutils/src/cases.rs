//! The conformance cases. Each panics with the rule it found broken.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_core::{Error, KvPair, LockOptions, Store, WriteOptions};

use crate::{
    EVENT_TIMEOUT, Opener, cleanup, eventually, keys, lock_ttl, next_within, ok, scratch_dir, ttl,
};

macro_rules! assert_err {
    ($result:expr, $pattern:pat, $what:expr) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                $what,
                stringify!($pattern),
                other.map(|_| ())
            ),
        }
    };
}

/// put/get/delete/exists, with leading and trailing `/` and nested keys.
pub async fn put_get_delete_exists(store: &dyn Store) {
    let dir = scratch_dir("put_get");
    let key = format!("{dir}/a/b");

    assert!(
        !ok(store.exists(&key, None).await, "exists on a missing key"),
        "missing key exists"
    );
    assert_err!(
        store.get(&key, None).await,
        Error::KeyNotFound { .. },
        "get of a missing key"
    );
    assert_err!(
        store.delete(&key).await,
        Error::KeyNotFound { .. },
        "delete of a missing key"
    );

    let put = ok(store.put(&format!("/{key}/"), b"v1", None).await, "put");
    assert_eq!(put.key, key, "put returns the normalized key");
    assert_eq!(&put.value[..], b"v1");
    assert_ne!(put.last_index, 0, "last_index must be non-zero");

    let got = ok(store.get(&key, None).await, "get");
    assert_eq!(got, put, "get returns what put returned");
    let got = ok(
        store.get(&format!("/{key}"), None).await,
        "get with leading /",
    );
    assert_eq!(got.key, key, "KvPair.key is normalized");
    assert!(
        ok(store.exists(&format!("{key}/"), None).await, "exists"),
        "written key must exist"
    );

    let second = ok(store.put(&key, b"v2", None).await, "overwrite");
    assert!(
        second.last_index > put.last_index,
        "last_index must grow on every write"
    );
    assert_eq!(
        &ok(store.get(&key, None).await, "get after overwrite").value[..],
        b"v2"
    );

    // A nested key and its parent are independent keys.
    let child = format!("{key}/c");
    ok(store.put(&child, b"child", None).await, "put child");
    ok(store.delete(&key).await, "delete parent");
    assert!(
        !ok(store.exists(&key, None).await, "exists after delete"),
        "deleted key still exists"
    );
    assert_eq!(
        &ok(
            store.get(&child, None).await,
            "child survives parent delete"
        )
        .value[..],
        b"child"
    );
    assert_err!(
        store.get(&key, None).await,
        Error::KeyNotFound { .. },
        "get after delete"
    );

    cleanup(store, &dir).await;
}

/// Values are bytes, stored as-is, including empty and non-UTF-8 values.
pub async fn binary_values(store: &dyn Store) {
    let dir = scratch_dir("binary");
    let cases: [&[u8]; 4] = [
        b"",
        &[0, 255, 1, 254, 0],
        "ünïcødé ✓".as_bytes(),
        &[b'x'; 10_000],
    ];
    for (i, value) in cases.iter().enumerate() {
        let key = format!("{dir}/v{i}");
        ok(store.put(&key, value, None).await, "put binary");
        assert_eq!(
            &ok(store.get(&key, None).await, "get binary").value[..],
            *value,
            "value {i} changed in storage"
        );
    }
    cleanup(store, &dir).await;
}

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

/// `atomic_put`: create-only, `KeyExists`, CAS success, `KeyModified`, `KeyNotFound`.
pub async fn atomic_put(store: &dyn Store) {
    let dir = scratch_dir("atomic_put");
    let key = format!("{dir}/k");

    let missing = KvPair::new(key.clone(), "x", 1);
    assert_err!(
        store.atomic_put(&key, b"v", Some(&missing), None).await,
        Error::KeyNotFound { .. },
        "CAS on a missing key"
    );

    let created = ok(
        store
            .atomic_put(&format!("/{key}"), b"v1", None, None)
            .await,
        "create-only put",
    );
    assert_eq!(created.key, key);
    assert_ne!(created.last_index, 0);
    assert_err!(
        store.atomic_put(&key, b"v1b", None, None).await,
        Error::KeyExists { .. },
        "create-only on an existing key"
    );

    let swapped = ok(
        store.atomic_put(&key, b"v2", Some(&created), None).await,
        "CAS with the current index",
    );
    assert!(
        swapped.last_index > created.last_index,
        "CAS must produce a new, larger index"
    );
    assert_eq!(&swapped.value[..], b"v2");

    assert_err!(
        store.atomic_put(&key, b"v3", Some(&created), None).await,
        Error::KeyModified { .. },
        "CAS with a stale index"
    );
    assert_eq!(
        &ok(store.get(&key, None).await, "get").value[..],
        b"v2",
        "a refused CAS must change nothing"
    );

    // The index returned by put is the one get reports, so a put→CAS chain works.
    let plain = ok(store.put(&key, b"v4", None).await, "put");
    let fetched = ok(store.get(&key, None).await, "get");
    assert_eq!(
        plain.last_index, fetched.last_index,
        "put and get must agree on last_index"
    );
    ok(
        store.atomic_put(&key, b"v5", Some(&plain), None).await,
        "CAS with the index put returned",
    );
    cleanup(store, &dir).await;
}

/// `atomic_delete`: success, stale index → `KeyModified`, missing → `KeyNotFound`.
pub async fn atomic_delete(store: &dyn Store) {
    let dir = scratch_dir("atomic_delete");
    let key = format!("{dir}/k");
    let first = ok(store.put(&key, b"v1", None).await, "put");
    let second = ok(store.put(&key, b"v2", None).await, "put");
    assert_err!(
        store.atomic_delete(&key, &first).await,
        Error::KeyModified { .. },
        "atomic_delete with a stale index"
    );
    assert!(
        ok(store.exists(&key, None).await, "exists"),
        "a refused atomic_delete must keep the key"
    );
    ok(
        store.atomic_delete(&format!("{key}/"), &second).await,
        "atomic_delete with the current index",
    );
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "atomic_delete must delete"
    );
    assert_err!(
        store.atomic_delete(&key, &second).await,
        Error::KeyNotFound { .. },
        "atomic_delete of a missing key"
    );
    cleanup(store, &dir).await;
}

/// 5 workers × 10 compare-and-swap increments of one counter must end at exactly 50.
pub async fn cas_race(store: &dyn Store) {
    const WORKERS: usize = 5;
    const INCREMENTS: usize = 10;
    let dir = scratch_dir("cas_race");
    let key = format!("{dir}/counter");
    ok(store.put(&key, b"0", None).await, "put counter");
    let worker = |_| {
        let key = key.clone();
        async move {
            let mut done = 0;
            while done < INCREMENTS {
                let current = ok(store.get(&key, None).await, "get counter");
                let n: usize = current
                    .value_str()
                    .and_then(|s| s.parse().ok())
                    .expect("counter is a number");
                match store
                    .atomic_put(&key, (n + 1).to_string().as_bytes(), Some(&current), None)
                    .await
                {
                    Ok(_) => done += 1,
                    Err(Error::KeyModified { .. }) => tokio::task::yield_now().await,
                    Err(err) => panic!("CAS increment failed: {err}"),
                }
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all((0..WORKERS).map(worker)),
    )
    .await
    .expect("CAS race must finish within 60 s");
    let end = ok(store.get(&key, None).await, "get counter");
    assert_eq!(
        end.value_str(),
        Some("50"),
        "lost update: {WORKERS}×{INCREMENTS} CAS increments"
    );
    cleanup(store, &dir).await;
}

/// `last_index` is per-key monotonic across delete and re-create.
pub async fn last_index_semantics(store: &dyn Store) {
    let dir = scratch_dir("last_index");
    let key = format!("{dir}/k");
    let mut last = 0;
    for round in 0..3 {
        let pair = ok(
            store.put(&key, format!("v{round}").as_bytes(), None).await,
            "put",
        );
        assert!(
            pair.last_index > last,
            "last_index must grow: {} then {}",
            last,
            pair.last_index
        );
        last = pair.last_index;
        ok(store.delete(&key).await, "delete");
    }
    let recreated = ok(
        store.atomic_put(&key, b"again", None, None).await,
        "re-create",
    );
    assert!(
        recreated.last_index > last,
        "a re-created key must not reuse an old index"
    );
    cleanup(store, &dir).await;
}

fn expect_state(
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
        assert_err!(
            store.watch(&key, None).await,
            Error::CallNotSupported { .. },
            "watch without the capability"
        );
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
        assert_err!(
            store.watch_tree(&tree, None).await,
            Error::CallNotSupported { .. },
            "watch_tree without the capability"
        );
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

/// Locks: value visible while held, fencing token present, unlock and re-lock on one `Locker`.
pub async fn lock_basics(store: &dyn Store) {
    let dir = scratch_dir("lock");
    let key = format!("{dir}/leader");
    if !store.capabilities().lock {
        assert_err!(
            store.new_lock(&key, None).await,
            Error::CallNotSupported { .. },
            "new_lock without the capability"
        );
        return;
    }
    let mut locker = ok(
        store
            .new_lock(&key, Some(&LockOptions::default().with_value("node-1")))
            .await,
        "new_lock",
    );
    assert_eq!(
        locker.fencing_token(),
        None,
        "new_lock must not take the lock"
    );
    let lost = ok(
        tokio::time::timeout(EVENT_TIMEOUT, locker.lock())
            .await
            .expect("free lock is taken at once"),
        "lock",
    );
    assert!(!lost.is_lost());
    let first = locker.fencing_token().expect("fencing token while held");
    assert_eq!(
        &ok(store.get(&key, None).await, "get lock value").value[..],
        b"node-1",
        "lock value readable while held"
    );

    ok(locker.unlock().await, "unlock");
    tokio::time::timeout(EVENT_TIMEOUT, lost.clone())
        .await
        .expect("LockLost resolves on unlock");
    assert_eq!(locker.fencing_token(), None, "no token after unlock");
    assert_eq!(
        &ok(store.get(&key, None).await, "get after unlock").value[..],
        b"node-1",
        "unlock keeps the value"
    );

    let lost2 = ok(
        tokio::time::timeout(EVENT_TIMEOUT, locker.lock())
            .await
            .expect("re-lock at once"),
        "re-lock",
    );
    let second = locker.fencing_token().expect("token on re-lock");
    assert!(
        second > first,
        "fencing token must grow: {first} then {second}"
    );
    ok(locker.unlock().await, "unlock");
    assert!(lost2.is_lost());
    ok(locker.unlock().await, "unlock when not held is a no-op");
    cleanup(store, &dir).await;
}

/// `delete_on_unlock` removes the key on unlock.
pub async fn lock_delete_on_unlock(store: &dyn Store) {
    if !store.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_delete");
    let key = format!("{dir}/lock");
    let opts = LockOptions::default()
        .with_value("held")
        .with_delete_on_unlock(true);
    let mut locker = ok(store.new_lock(&key, Some(&opts)).await, "new_lock");
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, locker.lock())
            .await
            .expect("lock"),
        "lock",
    );
    assert!(
        ok(store.exists(&key, None).await, "exists"),
        "lock value present while held"
    );
    ok(locker.unlock().await, "unlock");
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "delete_on_unlock must delete the key"
    );
    cleanup(store, &dir).await;
}

/// Lock bookkeeping (sessions, waiter keys) never shows in `list` or `watch_tree`.
pub async fn lock_bookkeeping_hidden(store: &dyn Store) {
    if !store.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_hidden");
    let key = format!("{dir}/locks/job");
    ok(store.put(&format!("{dir}/data"), b"d", None).await, "put");
    let mut tree = if store.capabilities().watch_tree {
        let mut s = ok(store.watch_tree(&dir, None).await, "watch_tree");
        next_within(&mut s, "initial")
            .await
            .expect("initial listing");
        Some(s)
    } else {
        None
    };
    let mut holder = ok(
        store
            .new_lock(&key, Some(&LockOptions::default().with_value("v")))
            .await,
        "new_lock",
    );
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let mut waiter = ok(store.new_lock(&key, None).await, "new_lock");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiter.lock())
            .await
            .is_err(),
        "second lock must wait"
    );

    let want = vec![format!("{dir}/data"), key.clone()];
    assert_eq!(
        keys(&ok(store.list(&dir, None).await, "list")),
        want,
        "list shows the lock value only, no bookkeeping"
    );
    let whole = ok(store.list("", None).await, "list whole keyspace");
    let ours: Vec<&str> = keys(&whole)
        .into_iter()
        .filter(|k| k.starts_with(&format!("{dir}/")))
        .collect();
    assert_eq!(ours, want, "list(\"\") shows no bookkeeping under the dir");
    if let Some(s) = tree.as_mut() {
        let l = ok(next_within(s, "listing after lock").await, "listing");
        assert_eq!(keys(&l), want, "watch_tree shows the lock value only");
    }
    ok(holder.unlock().await, "unlock");
    cleanup(store, &dir).await;
}

/// Every call rejects malformed keys with `InvalidKey` before doing anything.
pub async fn invalid_keys(store: &dyn Store) {
    let long = "k".repeat(kvstore_core::MAX_KEY_LEN + 1);
    let bad = [
        "",
        "/",
        "a//b",
        "a/./b",
        "a/../b",
        "a\nb",
        "a\u{0}b",
        "a/\u{E000}",
        // Outside the Basic Multilingual Plane: ZooKeeper cannot store it, so no backend may.
        "svc/\u{1F600}",
        "a/\u{10000}/b",
        long.as_str(),
    ];
    let pair = KvPair::new("a", "v", 1);
    for key in bad {
        let what = |op: &str| format!("{op}({key:?})");
        assert_err!(
            store.put(key, b"v", None).await,
            Error::InvalidKey { .. },
            what("put")
        );
        assert_err!(
            store.get(key, None).await,
            Error::InvalidKey { .. },
            what("get")
        );
        assert_err!(
            store.delete(key).await,
            Error::InvalidKey { .. },
            what("delete")
        );
        assert_err!(
            store.exists(key, None).await,
            Error::InvalidKey { .. },
            what("exists")
        );
        assert_err!(
            store.atomic_put(key, b"v", None, None).await,
            Error::InvalidKey { .. },
            what("atomic_put")
        );
        assert_err!(
            store.atomic_delete(key, &pair).await,
            Error::InvalidKey { .. },
            what("atomic_delete")
        );
        if store.capabilities().watch {
            assert_err!(
                store.watch(key, None).await,
                Error::InvalidKey { .. },
                what("watch")
            );
        }
        if store.capabilities().lock {
            assert_err!(
                store.new_lock(key, None).await,
                Error::InvalidKey { .. },
                what("new_lock")
            );
        }
        if !key.trim_matches('/').is_empty() {
            assert_err!(
                store.list(key, None).await,
                Error::InvalidKey { .. },
                what("list")
            );
            assert_err!(
                store.delete_tree(key).await,
                Error::InvalidKey { .. },
                what("delete_tree")
            );
            if store.capabilities().watch_tree {
                assert_err!(
                    store.watch_tree(key, None).await,
                    Error::InvalidKey { .. },
                    what("watch_tree")
                );
            }
        }
    }
}

/// A value over the limit fails with `ValueTooLarge` and changes nothing; the limit itself fits.
pub async fn value_too_large(store: &dyn Store) {
    let dir = scratch_dir("too_large");
    let key = format!("{dir}/k");
    let limit = store.capabilities().max_value_size;
    let before = ok(store.put(&key, b"keep me", None).await, "put");
    let big = vec![b'x'; limit + 1];
    match store.put(&key, &big, None).await {
        Err(Error::ValueTooLarge { size, limit: l, .. }) => {
            assert_eq!((size, l), (limit + 1, limit))
        }
        other => panic!(
            "put over the limit: expected ValueTooLarge, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_err!(
        store.atomic_put(&key, &big, Some(&before), None).await,
        Error::ValueTooLarge { .. },
        "atomic_put over the limit"
    );
    assert_eq!(
        ok(store.get(&key, None).await, "get"),
        before,
        "a refused write must change nothing"
    );
    let at_limit = vec![b'y'; limit];
    let written = ok(
        store.put(&key, &at_limit, None).await,
        "put of exactly max_value_size bytes",
    );
    assert_eq!(written.value.len(), limit);
    assert_eq!(
        ok(store.get(&key, None).await, "get").value.len(),
        limit,
        "a value at the limit is stored whole"
    );
    cleanup(store, &dir).await;
}

/// A second contender waits while the lock is held and gets it right after unlock.
pub async fn lock_contention(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_contention");
    let key = format!("{dir}/lock");
    let mut holder = ok(
        a.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let mut contender = ok(
        b.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let waiting = tokio::spawn(async move {
        let lost = ok(contender.lock().await, "contender lock");
        (contender, lost, Instant::now())
    });
    // Outlive the TTL so renewal, not luck, keeps the holder in place.
    tokio::time::sleep(opener.ttl + opener.ttl / 2).await;
    assert!(
        !waiting.is_finished(),
        "the contender must wait while the lock is held and renewed"
    );
    let released = Instant::now();
    ok(holder.unlock().await, "unlock");
    let (contender, _lost, got) = tokio::time::timeout(EVENT_TIMEOUT, waiting)
        .await
        .expect("the contender gets the lock after unlock")
        .expect("contender task");
    let hand_off = got.duration_since(released);
    assert!(
        hand_off < opener.ttl,
        "hand-off took {hand_off:?}: waiters must be woken by the release, not the TTL"
    );
    assert!(contender.fencing_token() > Some(0));
    drop(contender);
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// Deleting a held lock's key (`delete`, then `delete_tree` of a directory above it) removes
/// its value but never ends the hold: the holder keeps its token, a contender keeps waiting
/// past the TTL, and gets the lock only after `unlock`.
pub async fn lock_survives_key_deletion(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_key_deleted");
    let key = format!("{dir}/jobs/lock");
    let opts = lock_ttl(opener.ttl).with_value("holder-1");
    let mut holder = ok(a.new_lock(&key, Some(&opts)).await, "new_lock");
    let lost = ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let token = holder.fencing_token().expect("held");
    ok(b.delete(&key).await, "delete the lock's key");
    ok(b.put(&format!("{dir}/other"), b"x", None).await, "put");
    ok(
        b.delete_tree(&dir).await,
        "delete_tree above the lock's key",
    );
    assert!(
        !ok(b.exists(&key, None).await, "exists"),
        "the value is gone"
    );

    let mut contender = ok(
        b.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let waited = tokio::time::timeout(opener.ttl * 2, contender.lock()).await;
    assert!(
        waited.is_err(),
        "deleting the key must not free the lock: the contender got it"
    );
    assert!(!lost.is_lost(), "deleting the key must not end the hold");
    assert_eq!(holder.fencing_token(), Some(token));
    ok(holder.unlock().await, "unlock");
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, contender.lock())
            .await
            .expect("the contender gets the lock after unlock"),
        "lock",
    );
    assert!(contender.fencing_token().expect("held") > token);
    ok(contender.unlock().await, "unlock");
    let _ = a.close().await;
    let _ = b.close().await;
}

/// A contender bounded by a timeout returns on time and leaves no waiter behind.
pub async fn lock_cancel_leaves_no_waiter(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_cancel");
    let key = format!("{dir}/lock");
    let mut holder = ok(
        a.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );

    let mut impatient = ok(
        b.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let start = Instant::now();
    let attempt = tokio::time::timeout(Duration::from_millis(500), impatient.lock()).await;
    let waited = start.elapsed();
    assert!(
        attempt.is_err(),
        "a held lock must not be granted to a second contender"
    );
    assert!(
        waited < Duration::from_secs(3),
        "timeout-bounded lock() must return on time, took {waited:?}"
    );
    assert_eq!(
        impatient.fencing_token(),
        None,
        "a cancelled lock() holds nothing"
    );

    ok(holder.unlock().await, "unlock");
    // If the cancelled attempt had left a waiter, it would take the lock now and this would block.
    let mut next = ok(
        a.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let start = Instant::now();
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, next.lock())
            .await
            .expect("lock after cancelled contender"),
        "lock",
    );
    assert!(
        start.elapsed() < opener.ttl,
        "the lock must be free at once: the cancelled contender left a waiter"
    );
    ok(next.unlock().await, "unlock");
    // The cancelled locker can still be used.
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, impatient.lock())
            .await
            .expect("re-use after cancel"),
        "lock",
    );
    ok(impatient.unlock().await, "unlock");
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// A holder whose store is closed loses the lock (its `LockLost` fires) and a waiting contender
/// takes over within the TTL plus the backend's slack.
pub async fn lock_expires_after_holder_closed(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        return;
    }
    let dir = scratch_dir("lock_takeover");
    let key = format!("{dir}/lock");
    let mut holder = ok(
        a.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let lost = ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let first = holder.fencing_token().expect("token");
    let mut contender = ok(
        b.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
        "new_lock",
    );
    let waiting = tokio::spawn(async move {
        ok(contender.lock().await, "contender lock");
        contender
    });
    let closed = Instant::now();
    ok(a.close().await, "close holder's store");
    let bound = opener.ttl + opener.ttl_slack + Duration::from_secs(1);
    tokio::time::timeout(bound, lost)
        .await
        .expect("the closed holder's LockLost must fire");
    let contender = tokio::time::timeout(bound, waiting)
        .await
        .unwrap_or_else(|_| panic!("the contender must take over within {bound:?}"))
        .expect("contender task");
    let took = closed.elapsed();
    assert!(took <= bound, "takeover took {took:?}");
    assert!(
        contender.fencing_token().expect("token") > first,
        "the new holder's token must be greater"
    );
    drop(contender);
    cleanup(&*b, &dir).await;
    let _ = b.close().await;
    drop(holder);
}

/// Fencing tokens strictly increase across holders on different clients.
pub async fn lock_fencing_tokens_increase(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        return;
    }
    let dir = scratch_dir("fencing");
    let key = format!("{dir}/lock");
    let mut last = 0;
    for round in 0..6 {
        let store = if round % 2 == 0 { &a } else { &b };
        let mut locker = ok(
            store.new_lock(&key, Some(&lock_ttl(opener.ttl))).await,
            "new_lock",
        );
        ok(
            tokio::time::timeout(EVENT_TIMEOUT, locker.lock())
                .await
                .expect("lock"),
            "lock",
        );
        let token = locker.fencing_token().expect("token while held");
        assert!(
            token > last,
            "fencing token must strictly increase: {last} then {token}"
        );
        last = token;
        // Writes in between must not break the order.
        ok(store.put(&format!("{dir}/noise"), b"n", None).await, "put");
        ok(locker.unlock().await, "unlock");
    }
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// A TTL key survives until its TTL and is gone within TTL + slack; a watcher sees `None`.
pub async fn ttl_expiry(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("ttl");
    let key = format!("{dir}/ephemeral");
    if !store.capabilities().ttl {
        assert_err!(
            store.put(&key, b"v", Some(&ttl(opener.ttl))).await,
            Error::CallNotSupported { .. },
            "put with TTL"
        );
        return;
    }
    let mut watch = if store.capabilities().watch {
        let mut s = ok(store.watch(&key, None).await, "watch");
        expect_state(next_within(&mut s, "initial").await, None, "initial");
        Some(s)
    } else {
        None
    };
    let written = Instant::now();
    ok(
        store
            .put(&key, b"short-lived", Some(&ttl(opener.ttl)))
            .await,
        "put with TTL",
    );
    let persistent = format!("{dir}/persistent");
    ok(
        store.put(&persistent, b"stays", None).await,
        "put without TTL",
    );
    if let Some(s) = watch.as_mut() {
        expect_state(
            next_within(s, "put").await,
            Some(b"short-lived"),
            "put seen",
        );
    }
    // Still there just before the TTL (checked at 80 % of it).
    tokio::time::sleep((opener.ttl * 4 / 5).saturating_sub(written.elapsed())).await;
    if written.elapsed() < opener.ttl {
        assert!(
            ok(store.exists(&key, None).await, "exists"),
            "a TTL key must not disappear before its TTL"
        );
    }
    let bound = opener.ttl + opener.ttl_slack;
    match watch.as_mut() {
        Some(s) => {
            let item = tokio::time::timeout(bound + Duration::from_secs(1), s.next())
                .await
                .expect("the watcher must see the expiry")
                .expect("stream open");
            expect_state(item, None, "expiry yields None");
            assert!(
                written.elapsed() >= opener.ttl,
                "expired after {:?}, before its TTL",
                written.elapsed()
            );
        }
        None => {
            let gone = eventually(bound, || async {
                !ok(store.exists(&key, None).await, "exists")
            })
            .await;
            assert!(gone, "a TTL key must be gone within TTL + slack");
        }
    }
    assert!(
        !ok(store.exists(&key, None).await, "exists"),
        "expired key must not be readable"
    );
    assert_err!(
        store.get(&key, None).await,
        Error::KeyNotFound { .. },
        "get of an expired key"
    );
    assert!(
        ok(store.exists(&persistent, None).await, "exists"),
        "a key without TTL stays"
    );
    // Overwriting without a TTL removes the TTL.
    ok(
        store.put(&key, b"v", Some(&ttl(opener.ttl))).await,
        "put with TTL",
    );
    ok(
        store.put(&key, b"forever", None).await,
        "overwrite without TTL",
    );
    tokio::time::sleep(bound).await;
    assert!(
        ok(store.exists(&key, None).await, "exists"),
        "overwriting without TTL must clear the TTL"
    );
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// `keep_alive` keeps a TTL key alive while its store is open; after `close()` it expires.
pub async fn keep_alive(opener: &Opener) {
    let (owner, observer) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("keep_alive");
    let key = format!("{dir}/service");
    if !owner.capabilities().keep_alive {
        let opts = ttl(opener.ttl).with_keep_alive(true);
        assert_err!(
            owner.put(&key, b"v", Some(&opts)).await,
            Error::CallNotSupported { .. },
            "keep_alive"
        );
        return;
    }
    let opts = WriteOptions::default()
        .with_ttl(opener.ttl)
        .with_keep_alive(true);
    ok(
        owner.put(&key, b"10.0.0.1:80", Some(&opts)).await,
        "put with keep_alive",
    );
    // Well past the TTL plus its slack, the key must still be there.
    tokio::time::sleep(opener.ttl * 2 + opener.ttl_slack).await;
    assert!(
        ok(observer.exists(&key, None).await, "exists"),
        "keep_alive must renew the key while the store is open"
    );
    let closed = Instant::now();
    ok(owner.close().await, "close");
    let bound = opener.ttl + opener.ttl_slack + Duration::from_secs(1);
    let gone = eventually(bound, || async {
        !ok(observer.exists(&key, None).await, "exists")
    })
    .await;
    assert!(
        gone,
        "after close() the kept-alive key must expire within TTL + slack ({bound:?})"
    );
    assert!(closed.elapsed() <= bound + Duration::from_millis(100));
    cleanup(&*observer, &dir).await;
    let _ = observer.close().await;
}

/// `close()` ends watches; every later call fails.
pub async fn close_ends_everything(opener: &Opener) {
    let (store, other) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("close");
    let key = format!("{dir}/k");
    ok(store.put(&key, b"v", None).await, "put");
    let mut watch = if store.capabilities().watch {
        let mut s = ok(store.watch(&key, None).await, "watch");
        next_within(&mut s, "initial").await.expect("initial");
        Some(s)
    } else {
        None
    };
    let mut tree = if store.capabilities().watch_tree {
        let mut s = ok(store.watch_tree(&dir, None).await, "watch_tree");
        next_within(&mut s, "initial").await.expect("initial");
        Some(s)
    } else {
        None
    };
    ok(store.close().await, "close");
    ok(store.close().await, "a second close is a no-op");
    for (name, s) in [
        (
            "watch",
            watch.as_mut().map(|s| s.map(|i| i.map(|_| ())).boxed()),
        ),
        (
            "watch_tree",
            tree.as_mut().map(|s| s.map(|i| i.map(|_| ())).boxed()),
        ),
    ] {
        let Some(mut s) = s else { continue };
        // The stream may report the close as one final error, then it must end.
        let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(item) = s.next().await {
                if item.is_err() {
                    return s.next().await.is_none();
                }
            }
            true
        })
        .await;
        assert_eq!(ended, Ok(true), "{name} must end after close()");
    }
    assert!(
        store.get(&key, None).await.is_err(),
        "get after close must fail"
    );
    assert!(
        store.put(&key, b"v", None).await.is_err(),
        "put after close must fail"
    );
    assert!(
        store.list(&dir, None).await.is_err(),
        "list after close must fail"
    );
    assert!(
        store.watch(&key, None).await.is_err(),
        "watch after close must fail"
    );
    assert!(
        store.new_lock(&key, None).await.is_err(),
        "new_lock after close must fail"
    );
    // Other handles are unaffected.
    assert_eq!(
        &ok(other.get(&key, None).await, "get on another handle").value[..],
        b"v"
    );
    cleanup(&*other, &dir).await;
    let _ = other.close().await;
}

/// A watch sees writes made through another, independent client.
pub async fn watch_sees_other_clients(opener: &Opener) {
    let (watcher, writer) = (opener.open().await, opener.open().await);
    if !watcher.capabilities().watch {
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
