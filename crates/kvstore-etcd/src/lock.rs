//! Locks: a lease plus a waiter key `<prefix>\x01kvstore/lock/<key>/<lease>` per contender; the
//! contender whose key has the lowest create revision holds the lock, and each waiter watches
//! only the key just before its own (source: etcd docs, "concurrency" package / v3lock recipe).
//! Uncontended, one transaction queues the waiter key and takes the lock, so a lock and its
//! unlock are three requests: the lease grant, that transaction and the revoke. Contended, the
//! transaction only queues, and the lock is taken by a second one after the predecessor
//! released. Taking writes the hidden
//! holder key `<prefix>\x01kvstore/held/<key>` (and the value) with the lease, and its revision
//! is the fencing token — the value's `last_index` and the holder key's `mod_revision`, which
//! `Txn::when_held` compares — so every later holder's is greater.
//! With `delete_on_unlock` the lock's value is put with the lock's lease, so it lives exactly
//! as long as the hold (source: etcd docs, "Interacting with etcd" → leases: keys attached to
//! a lease are deleted when it is revoked or expires).

use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use kvstore_core::backend::{HeldLease, LockSpec, Tasks};
use kvstore_core::{Error, LockLost, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::{EtcdLease, Inner};

/// Waits until the waiter key created at `my_rev` under `prefix` is the oldest; returns the
/// revision it read that at.
async fn wait_turn(
    inner: &Inner,
    key: &str,
    prefix: &str,
    my_rev: i64,
    lost: &LockLost,
) -> Result<i64> {
    loop {
        let opts = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(my_rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let resp = inner.call(inner.client().get(prefix, Some(opts))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let Some(pred) = resp.kvs().first() else {
            return Ok(revision);
        };
        let from = revision + 1;
        // On the store's shared watch stream, like every watch (`mux.rs`).
        let mut watch = inner
            .watch_hub
            .watch(
                &inner.client,
                &inner.tasks,
                pred.key(),
                WatchOptions::new().with_start_revision(from),
            )
            .await?;
        loop {
            tokio::select! {
                // The waiter's lease ran out: its renewals failed for the loss deadline, so the
                // server was not reached in time. Transient: `lock()` again queues anew.
                () = lost.clone() => {
                    return Err(Error::not_reachable(
                        BACKEND,
                        format!("the lease of the waiter for {key} ran out while waiting"),
                    ));
                }
                message = watch.message() => match message {
                    Some(resp) if resp.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                    Some(_) => {}
                    // The stream broke or dropped this watch: read the queue again.
                    None => break,
                },
            }
        }
    }
}

/// Acquires `lock`: grants its lease (renewed from here on, while waiting too: a wait may be
/// longer than the TTL), queues a waiter key, waits for its turn and takes the lock in one
/// transaction.
///
/// Cancel safety: dropping the future drops the hold, which revokes the lease and so the
/// waiter key.
pub(crate) async fn acquire(
    inner: &Arc<Inner>,
    lock: &LockSpec,
    tasks: &Tasks,
) -> Result<HeldLease> {
    let (key, opts) = (&lock.key, &lock.opts);
    let ttl = opts.ttl;
    // The loss rule measures from the send of the grant.
    let sent = Instant::now();
    let lease = inner.grant(ttl).await?;
    // A value written with the lease goes with it (the revoke deletes it); only a key the
    // lock wrote no value to needs a delete of its own on `unlock`.
    let delete_on_unlock = (opts.delete_on_unlock && opts.value.is_none())
        .then(|| (inner.data_key(key), inner.holder_key(key)));
    let mut held = HeldLease::start(
        Arc::new(EtcdLease::new(inner.clone(), lease, delete_on_unlock)),
        ttl,
        sent,
        0,
        tasks,
    );
    let lost = held.lost();

    let prefix = inner.lock_prefix(key);
    let waiter = format!("{prefix}{lease:016x}");
    let queue = || {
        TxnOp::put(
            waiter.clone(),
            Vec::new(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    // The lock is taken by the holder key (its revision is the token that `Txn::when_held`
    // compares) and the value, both with the lease. With `delete_on_unlock` the value is
    // attached to the lease, so the server deletes it with the lease: on revoke (any release)
    // and on expiry (a lost hold).
    let take = || {
        let mut ops = vec![TxnOp::put(
            inner.holder_key(key),
            waiter.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )];
        if let Some(value) = &opts.value {
            let bound = opts
                .delete_on_unlock
                .then(|| PutOptions::new().with_lease(lease));
            ops.push(TxnOp::put(inner.data_key(key), value.to_vec(), bound));
        }
        ops
    };
    // Uncontended, one transaction queues and takes: when no waiter key is under the prefix
    // (the holder's stays there until its lease goes), ours is the oldest. A compare over a
    // key range holds for every key in it, and an empty range compares as one zero key-value,
    // whose create revision is 0 (source: etcd API reference, "Txn" — `Compare.range_end`;
    // etcd's `applyCompare`). Otherwise the same transaction only queues, and we wait.
    let first = Txn::new()
        .when([Compare::create_revision(prefix.as_str(), CompareOp::Equal, 0).with_prefix()])
        .and_then([vec![queue()], take()].concat())
        .or_else([queue()]);
    let resp = inner.call(inner.client().txn(first)).await?;
    let my_rev = resp.header().map_or(0, |h| h.revision());
    let token = if resp.succeeded() {
        my_rev
    } else {
        let turn = wait_turn(inner, key, &prefix, my_rev, &lost).await?;
        // Take the lock only while our waiter key is still the one we created.
        let txn = Txn::new()
            .when([Compare::create_revision(
                waiter.as_str(),
                CompareOp::Equal,
                my_rev,
            )])
            .and_then(take());
        let resp = inner.call(inner.client().txn(txn)).await?;
        if !resp.succeeded() {
            return Err(Error::CannotLock {
                key: key.clone(),
                source: "the lock's lease expired while acquiring".into(),
            });
        }
        resp.header().map_or(turn, |h| h.revision())
    };
    // The taking transaction's revision: the holder key's and the value's, and the token.
    let token = u64::try_from(token).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
    held.set_token(token);
    Ok(held)
}
