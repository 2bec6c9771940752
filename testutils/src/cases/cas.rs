//! Compare-and-swap on `last_index`.

use std::time::Duration;

use kvstore_core::{Error, KvPair, Store};

use crate::{cleanup, ok, scratch_dir};

/// The ABA case: a key rewritten with the same value (A → B → A, or A → A) has a new
/// `last_index`, so a CAS or conditional delete holding the pair read before the rewrites is
/// refused with `KeyModified` — comparing values would have accepted it — and nothing changes.
pub async fn cas_aba(store: &dyn Store) {
    let dir = scratch_dir("cas_aba");
    let key = format!("{dir}/k");
    let read = ok(store.put(&key, b"A", None).await, "put A");
    ok(store.put(&key, b"B", None).await, "put B");
    let back = ok(store.put(&key, b"A", None).await, "put A again");
    assert_ne!(
        back.last_index, read.last_index,
        "a rewrite gets a new last_index"
    );
    assert_err!(
        store.atomic_put(&key, b"C", Some(&read), None).await,
        Error::KeyModified { .. },
        "atomic_put with the pair read before A → B → A"
    );
    let same = ok(store.put(&key, b"A", None).await, "put the same value");
    assert!(
        same.last_index > back.last_index,
        "rewriting the same value moves last_index"
    );
    assert_err!(
        store.atomic_put(&key, b"C", Some(&back), None).await,
        Error::KeyModified { .. },
        "atomic_put with the pair read before an A → A rewrite"
    );
    assert_err!(
        store.atomic_delete(&key, &back).await,
        Error::KeyModified { .. },
        "atomic_delete with the pair read before an A → A rewrite"
    );
    let now = ok(store.get(&key, None).await, "get");
    assert_eq!(now, same, "the refused calls changed nothing");
    ok(
        store.atomic_put(&key, b"C", Some(&now), None).await,
        "atomic_put with the current pair",
    );
    cleanup(store, &dir).await;
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
