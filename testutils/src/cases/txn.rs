//! Multi-key transactions: conditions, atomicity, lock-guarded writes, races, watches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvstore_core::{Error, KvPair, LockOptions, Store, Txn};

use crate::{EVENT_TIMEOUT, Opener, cleanup, keys, next_within, ok, scratch_dir};

/// A store without transactions refuses them with `CallNotSupported`; `true` when it has them.
async fn can_txn(store: &dyn Store, dir: &str) -> bool {
    if store.capabilities().max_txn_ops > 0 {
        return true;
    }
    assert_err!(
        store.txn(&Txn::new().put(&format!("{dir}/k"), "v")).await,
        Error::CallNotSupported { .. },
        "txn without the capability"
    );
    false
}

/// Everything under `dir`, to compare before and after a transaction that must change nothing.
async fn snapshot(store: &dyn Store, dir: &str) -> Vec<KvPair> {
    ok(store.list(dir, None).await, "list")
}

/// Each condition kind passing and failing; the first failing condition names the error; a
/// failed transaction changes nothing (every key's value and `last_index`); checks before any
/// I/O (`InvalidTxn`, `InvalidKey`, `ValueTooLarge`); `max_txn_ops` operations succeed and one
/// more fails.
pub async fn txn_conditions(store: &dyn Store) {
    let dir = scratch_dir("txn");
    if !can_txn(store, &dir).await {
        return;
    }
    let (a, b, c) = (format!("{dir}/a"), format!("{dir}/b"), format!("{dir}/c"));
    let pa = ok(store.put(&a, b"1", None).await, "put a");

    let written = ok(
        store
            .txn(
                &Txn::new()
                    .when_index(&a, pa.last_index)
                    .when_exists(&a)
                    .when_missing(&b)
                    .put(&a, "2")
                    .put(&format!("/{b}/"), "x")
                    .delete(&c),
            )
            .await,
        "txn whose conditions hold",
    );
    assert_eq!(written.len(), 3, "one entry per operation");
    let (na, nb) = (
        written[0].clone().expect("a put gives its pair"),
        written[1].clone().expect("a put gives its pair"),
    );
    assert_eq!(
        written[2], None,
        "a delete gives None (a missing key is no error)"
    );
    assert_eq!((na.key.as_str(), &na.value[..]), (a.as_str(), &b"2"[..]));
    assert_eq!(nb.key, b, "keys are normalized");
    assert_ne!(na.last_index, pa.last_index, "a put changes last_index");
    assert_eq!(ok(store.get(&a, None).await, "get a"), na);
    assert_eq!(ok(store.get(&b, None).await, "get b"), nb);

    let before = snapshot(store, &dir).await;
    let failing: Vec<(Txn, &str)> = vec![
        (
            Txn::new().when_index(&a, pa.last_index).put(&c, "no"),
            "KeyModified",
        ),
        (Txn::new().when_index(&c, 1).put(&a, "no"), "KeyNotFound"),
        (Txn::new().when_exists(&c).put(&a, "no"), "KeyNotFound"),
        (Txn::new().when_missing(&a).put(&c, "no"), "KeyExists"),
        // The first failing condition in order names the error.
        (
            Txn::new()
                .when_exists(&a)
                .when_missing(&b)
                .when_index(&c, 1)
                .put(&c, "no")
                .delete(&a),
            "KeyExists",
        ),
    ];
    for (txn, want) in failing {
        let got = store.txn(&txn).await;
        let name = match &got {
            Err(Error::KeyModified { key }) if *key == a => "KeyModified",
            Err(Error::KeyNotFound { key }) if *key == c => "KeyNotFound",
            Err(Error::KeyExists { key }) if *key == a || *key == b => "KeyExists",
            _ => "",
        };
        assert_eq!(
            name,
            want,
            "{txn:?}: expected {want} naming the failing key, got {:?}",
            got.map(|_| ())
        );
        assert_eq!(
            snapshot(store, &dir).await,
            before,
            "a failed transaction changes nothing"
        );
    }

    // Checked before any I/O.
    assert_err!(
        store.txn(&Txn::new().when_exists(&a)).await,
        Error::InvalidTxn { .. },
        "no op"
    );
    assert_err!(
        store
            .txn(&Txn::new().put(&a, "1").delete(&format!("{a}/")))
            .await,
        Error::InvalidTxn { .. },
        "a key in two operations"
    );
    assert_err!(
        store
            .txn(&Txn::new().put(&c, "1").put(&format!("{dir}//x"), "1"))
            .await,
        Error::InvalidKey { .. },
        "an invalid key"
    );
    let limit = store.capabilities().max_value_size;
    assert_err!(
        store
            .txn(&Txn::new().put(&c, "1").put(&a, vec![0u8; limit + 1]))
            .await,
        Error::ValueTooLarge { .. },
        "a value over the limit"
    );
    let max = store.capabilities().max_txn_ops;
    let full = (0..max).fold(Txn::new(), |t, i| t.put(&format!("{dir}/many/{i:04}"), "v"));
    assert_eq!(
        ok(store.txn(&full).await, "max_txn_ops operations").len(),
        max
    );
    let over = Txn::new().when_exists(&a);
    let over = (0..max).fold(over, |t, i| t.put(&format!("{dir}/over/{i:04}"), "v"));
    assert_err!(
        store.txn(&over).await,
        Error::InvalidTxn { .. },
        "max_txn_ops + 1"
    );
    assert!(
        !ok(
            store.exists(&format!("{dir}/over/0000"), None).await,
            "exists"
        ),
        "a refused transaction writes nothing"
    );
    assert_eq!(&ok(store.get(&b, None).await, "get b").value[..], b"x");
    cleanup(store, &dir).await;
}

/// `when_held`: a write is accepted while the lock is held with that token and refused with
/// `LockNotHeld` (nothing written) for another token, after the holder's store closed, and
/// for the old token once a new holder took the lock.
pub async fn txn_held(opener: &Opener) {
    let (holder_store, other) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("txn_held");
    if !can_txn(&*other, &dir).await {
        return;
    }
    if !other.capabilities().lock {
        super::refused::lock(&*other, &format!("{dir}/lock")).await;
        return;
    }
    let (lock_key, out) = (format!("{dir}/lock"), format!("{dir}/out"));
    let opts = LockOptions::default().with_ttl(opener.ttl);
    let mut holder = ok(
        holder_store.new_lock(&lock_key, Some(&opts)).await,
        "new_lock",
    );
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, holder.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let token = holder.fencing_token().expect("held");
    ok(
        other
            .txn(
                &Txn::new()
                    .when_held(&lock_key, token)
                    .put(&out, "by the holder"),
            )
            .await,
        "a write while held",
    );
    let refused =
        |want: &str| format!("a write with a token that does not hold must fail ({want})");
    assert_err!(
        other
            .txn(&Txn::new().when_held(&lock_key, token + 1).put(&out, "no"))
            .await,
        Error::LockNotHeld { .. },
        refused("another token")
    );
    // The holder's store closes: its lock is released.
    let _ = holder_store.close().await;
    assert_err!(
        other
            .txn(&Txn::new().when_held(&lock_key, token).put(&out, "no"))
            .await,
        Error::LockNotHeld { .. },
        refused("released")
    );
    let mut next = ok(other.new_lock(&lock_key, Some(&opts)).await, "new_lock");
    ok(
        tokio::time::timeout(EVENT_TIMEOUT, next.lock())
            .await
            .expect("lock"),
        "lock",
    );
    let next_token = next.fencing_token().expect("held");
    assert!(next_token > token);
    assert_err!(
        other
            .txn(&Txn::new().when_held(&lock_key, token).put(&out, "no"))
            .await,
        Error::LockNotHeld { .. },
        refused("a new holder")
    );
    assert_eq!(
        &ok(other.get(&out, None).await, "get").value[..],
        b"by the holder",
        "refused writes wrote nothing"
    );
    ok(
        other
            .txn(
                &Txn::new()
                    .when_held(&lock_key, next_token)
                    .put(&out, "by the next"),
            )
            .await,
        "a write by the new holder",
    );
    ok(next.unlock().await, "unlock");
    cleanup(&*other, &dir).await;
    let _ = other.close().await;
}

/// Tasks on two handles race to move units between two counters, each move a transaction with
/// `when_index` on both ends: every unit is counted exactly once.
pub async fn txn_race(opener: &Opener) {
    const TASKS: usize = 6;
    const MOVES: u64 = 5;
    let stores = [opener.open().await, opener.open().await];
    let dir = scratch_dir("txn_race");
    if !can_txn(&*stores[0], &dir).await {
        return;
    }
    let (from, to) = (format!("{dir}/from"), format!("{dir}/to"));
    let total = TASKS as u64 * MOVES;
    ok(
        stores[0]
            .put(&from, total.to_string().as_bytes(), None)
            .await,
        "put",
    );
    ok(stores[0].put(&to, b"0", None).await, "put");
    let moved = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let (store, from, to, moved) = (
            stores[i % 2].clone(),
            from.clone(),
            to.clone(),
            moved.clone(),
        );
        tasks.spawn(async move {
            let number = |p: &KvPair| -> u64 { String::from_utf8_lossy(&p.value).parse().unwrap() };
            let mut done = 0;
            let mut attempts = 0;
            while done < MOVES {
                attempts += 1;
                assert!(attempts < 1000, "a mover made no progress in 1000 attempts");
                let (a, b) = (
                    ok(store.get(&from, None).await, "get from"),
                    ok(store.get(&to, None).await, "get to"),
                );
                let txn = Txn::new()
                    .when_index(&from, a.last_index)
                    .when_index(&to, b.last_index)
                    .put(&from, (number(&a) - 1).to_string())
                    .put(&to, (number(&b) + 1).to_string());
                match store.txn(&txn).await {
                    Ok(_) => {
                        done += 1;
                        moved.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::KeyModified { .. }) => {}
                    Err(err) => panic!("move failed: {}", crate::error_chain(&err)),
                }
            }
        });
    }
    let finished = tokio::time::timeout(EVENT_TIMEOUT * 6, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "the movers must finish in time");
    let value = |p: KvPair| -> u64 { String::from_utf8_lossy(&p.value).parse().unwrap() };
    let (a, b) = (
        value(ok(stores[1].get(&from, None).await, "get")),
        value(ok(stores[1].get(&to, None).await, "get")),
    );
    assert_eq!(moved.load(Ordering::SeqCst), total);
    assert_eq!((a, b), (0, total), "every unit moved exactly once");
    cleanup(&*stores[0], &dir).await;
    for store in stores {
        let _ = store.close().await;
    }
}

/// A `watch_tree` over a transaction that writes three keys never sees only some of them.
pub async fn txn_watch_tree_atomic(store: &dyn Store) {
    let dir = scratch_dir("txn_watch");
    if !can_txn(store, &dir).await {
        return;
    }
    if !store.capabilities().watch_tree {
        super::refused::watch_tree(store, &dir).await;
        return;
    }
    let names: Vec<String> = ["x", "y", "z"]
        .iter()
        .map(|n| format!("{dir}/{n}"))
        .collect();
    let mut tree = ok(store.watch_tree(&dir, None).await, "watch_tree");
    assert!(ok(next_within(&mut tree, "initial").await, "initial").is_empty());
    let txn = names.iter().fold(Txn::new(), |t, k| t.put(k, "v"));
    ok(store.txn(&txn).await, "txn");
    loop {
        let listing = ok(
            next_within(&mut tree, "the txn's writes").await,
            "watch_tree",
        );
        let seen = keys(&listing);
        assert!(
            seen.is_empty() || seen.len() == 3,
            "watch_tree showed a half-applied transaction: {seen:?}"
        );
        if seen.len() == 3 {
            break;
        }
    }
    let txn = Txn::new()
        .delete(&names[0])
        .delete(&names[1])
        .put(&names[2], "w");
    ok(store.txn(&txn).await, "txn");
    loop {
        let listing = ok(
            next_within(&mut tree, "the txn's deletes").await,
            "watch_tree",
        );
        let seen = keys(&listing);
        assert!(
            seen.len() == 3 || (seen == [names[2].as_str()] && &listing[0].value[..] == b"w"),
            "watch_tree showed a half-applied transaction: {listing:?}"
        );
        if seen.len() == 1 {
            break;
        }
    }
    cleanup(store, &dir).await;
}
