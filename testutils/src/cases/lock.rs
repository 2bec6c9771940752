//! Locks: holds, contention, cancellation, fencing tokens.

use std::time::{Duration, Instant};

use kvstore_core::{Error, KvPair, LockLost, LockOptions, Locker, Store, Txn};

use crate::{EVENT_TIMEOUT, Opener, cleanup, keys, lock_ttl, next_within, ok, scratch_dir};

/// Locks: value visible while held, fencing token present, unlock and re-lock on one `Locker`.
pub async fn lock_basics(store: &dyn Store) {
    let dir = scratch_dir("lock");
    let key = format!("{dir}/leader");
    if !store.capabilities().lock {
        super::refused::lock(store, &key).await;
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
    let held = ok(store.get(&key, None).await, "get lock value");
    assert_eq!(&held.value[..], b"node-1", "lock value readable while held");
    assert_eq!(
        held.last_index, first,
        "the lock's value is written with the fencing token as last_index"
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
        super::refused::lock(store, &scratch_dir("refused")).await;
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
        super::refused::lock(store, &scratch_dir("refused")).await;
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

/// A second contender waits while the lock is held and gets it right after unlock.
pub async fn lock_contention(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        super::refused::lock(&*a, &scratch_dir("refused")).await;
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
        super::refused::lock(&*a, &scratch_dir("refused")).await;
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

    hold_survives(
        &*b,
        &key,
        opener.ttl,
        holder,
        &lost,
        "deleting the lock's key",
    )
    .await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// No client call reaches lock bookkeeping: every name a backend's bookkeeping could use (a
/// segment starting with `.kvstore`: `.kvstore-locks/<key>`, `<key>/.kvstore-pin`, …) is
/// refused with `InvalidKey` by every call that takes a key — before any I/O, so nothing is
/// deleted or overwritten — `list("")` shows none of them, and after all those attempts a
/// second client's `lock()` still waits past the TTL while the holder holds.
pub async fn lock_bookkeeping_unreachable(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("lock_reserved");
    let key = format!("{dir}/job");
    if !a.capabilities().lock {
        super::refused::lock(&*a, &key).await;
        return;
    }
    let (holder, lost, token) =
        crate::take_lock_with(&*a, &key, &lock_ttl(opener.ttl).with_value("held")).await;
    let names = [
        ".kvstore-locks".to_owned(),
        format!(".kvstore-locks/{key}"),
        format!(".kvstore-locks/{dir}"),
        format!("{dir}/.kvstore-locks/{key}"),
        format!("{key}/.kvstore-pin"),
        format!("{dir}/.kvstore-pin"),
        ".kvstore-pin".to_owned(),
        ".kvstore".to_owned(),
        format!("{dir}/.kvstore-anything"),
    ];
    let stale = KvPair::new(key.clone(), "x", token);
    for name in &names {
        let what = |call: &str| format!("{call}({name:?}) of a reserved name");
        assert_err!(
            b.put(name, b"x", None).await,
            Error::InvalidKey { .. },
            what("put")
        );
        assert_err!(
            b.get(name, None).await,
            Error::InvalidKey { .. },
            what("get")
        );
        assert_err!(
            b.exists(name, None).await,
            Error::InvalidKey { .. },
            what("exists")
        );
        assert_err!(
            b.delete(name).await,
            Error::InvalidKey { .. },
            what("delete")
        );
        assert_err!(
            b.delete_tree(name).await,
            Error::InvalidKey { .. },
            what("delete_tree")
        );
        assert_err!(
            b.list(name, None).await,
            Error::InvalidKey { .. },
            what("list")
        );
        assert_err!(
            b.atomic_put(name, b"x", None, None).await,
            Error::InvalidKey { .. },
            what("atomic_put")
        );
        assert_err!(
            b.atomic_delete(name, &stale).await,
            Error::InvalidKey { .. },
            what("atomic_delete")
        );
        assert_err!(
            b.txn(&Txn::new().delete(name)).await,
            Error::InvalidKey { .. },
            what("txn delete")
        );
        assert_err!(
            b.new_lock(name, None).await,
            Error::InvalidKey { .. },
            what("new_lock")
        );
        if b.capabilities().watch_tree {
            assert_err!(
                b.watch_tree(name, None).await,
                Error::InvalidKey { .. },
                what("watch_tree")
            );
        }
    }
    let whole = ok(b.list("", None).await, "list the whole keyspace");
    let leaked: Vec<&str> = keys(&whole)
        .into_iter()
        .filter(|k| k.split('/').any(|s| s.starts_with(".kvstore")))
        .collect();
    assert!(
        leaked.is_empty(),
        "list(\"\") shows bookkeeping: {leaked:?}"
    );
    // The key itself is the user's: deleting it removes the value, not the hold.
    ok(b.delete(&key).await, "delete the lock's own key");

    hold_survives(
        &*b,
        &key,
        opener.ttl,
        holder,
        &lost,
        "calls on reserved names",
    )
    .await;
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// After `what` was done by another client, the hold of `holder` is intact: a contender on
/// `other` waits past twice the TTL, the holder keeps its token and its `LockLost` stays
/// pending; after `unlock` the contender gets the lock with a greater token.
async fn hold_survives(
    other: &dyn Store,
    key: &str,
    ttl: Duration,
    mut holder: Box<dyn Locker>,
    lost: &LockLost,
    what: &str,
) {
    let token = holder.fencing_token().expect("held");
    let mut contender = ok(other.new_lock(key, Some(&lock_ttl(ttl))).await, "new_lock");
    let waited = tokio::time::timeout(ttl * 2, contender.lock()).await;
    assert!(
        waited.is_err(),
        "{what} must not free the lock: a second locker won while the holder held it"
    );
    assert!(!lost.is_lost(), "{what} must not end the hold");
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
}

/// A contender bounded by a timeout returns on time and leaves no waiter behind.
pub async fn lock_cancel_leaves_no_waiter(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    if !a.capabilities().lock {
        super::refused::lock(&*a, &scratch_dir("refused")).await;
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
        super::refused::lock(&*a, &scratch_dir("refused")).await;
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
        super::refused::lock(&*a, &scratch_dir("refused")).await;
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
