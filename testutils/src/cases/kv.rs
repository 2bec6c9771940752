//! Single-key calls, values and the key grammar.

use kvstore_core::{Error, KvPair, Store};

use crate::{cleanup, ok, scratch_dir};

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
