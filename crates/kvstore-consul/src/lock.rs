//! Locks: a session per `lock()` and the hidden key `<prefix>.kvstore-locks/<key>` that the
//! holder acquires (source: Consul docs, "Application Leader Election with Sessions" and the
//! KV `acquire` semantics; here the `lock` verb of `/v1/txn`, which returns the new index).
//!
//! The session has the lock's TTL (whole seconds, rounded up), no lock delay and
//! `Behavior=delete`: when it is destroyed (`unlock`, store closed, `Locker` dropped) or
//! invalidated (its holder died; Consul invalidates between TTL and 2×TTL after the last
//! renewal) the hidden key is deleted, which wakes the waiters' blocking queries. The session
//! is held and renewed by the lease engine of `kvstore_core::backend`, from its creation on
//! (a wait may be longer than the TTL). The fencing token is the `ModifyIndex` of the
//! acquisition, which grows with every later write in the cluster. The lock's value is
//! written in the acquire transaction; with `delete_on_unlock` it is acquired by the session
//! as well, so it lives exactly as long as the hold.

use std::sync::Arc;

use kvstore_core::backend::{HeldLease, LockSpec, Tasks};
use kvstore_core::{Error, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::api::{Consistency, Txn, next_index, op, op_lock, op_value};
use crate::client::{Inner, SessionLease};
use crate::error::is_invalid_session;

/// The transaction that takes the hidden key `lock_key` for `session`, with the lock's value.
fn acquire_ops(
    inner: &Inner,
    lock: &LockSpec,
    lock_key: &str,
    session: &str,
) -> Vec<serde_json::Value> {
    let mut ops = vec![op_lock(lock_key, b"", session)];
    if let Some(value) = &lock.opts.value {
        let consul_key = inner.consul_key(&lock.key);
        ops.push(op("delete", &consul_key));
        ops.push(if lock.opts.delete_on_unlock {
            op_lock(&consul_key, value, session)
        } else {
            op_value("set", &consul_key, value)
        });
    }
    ops
}

/// Takes the hidden key for `session`, waiting (blocking queries) while another session holds
/// it; returns the acquisition's index, the fencing token.
async fn take(inner: &Inner, lock: &LockSpec, lock_key: &str, session: &str) -> Result<u64> {
    let mut index = 0;
    loop {
        match inner
            .api
            .txn(acquire_ops(inner, lock, lock_key, session))
            .await?
        {
            Txn::Done(results) => {
                return results
                    .iter()
                    .find(|e| e.key == lock_key)
                    .map(|e| e.modify_index)
                    .ok_or_else(|| Error::backend(BACKEND, "lock returned no entry"));
            }
            Txn::Failed { what, .. } if is_invalid_session(&what) => {
                return Err(Error::CannotLock {
                    key: lock.key.clone(),
                    source: what.into(),
                });
            }
            Txn::Failed { .. } => {}
        }
        // Held by someone else: wait until the key changes (released or deleted).
        loop {
            let block = (index > 0).then_some((index, inner.api.config.watch_wait));
            let (entries, next) = inner
                .api
                .get(lock_key, false, Consistency::Consistent, block)
                .await?;
            index = next_index(index, next);
            if entries.iter().all(|e| e.session.is_none()) {
                break;
            }
        }
    }
}

/// Acquires `lock`: creates its session (renewed from here on, while waiting too: a wait may
/// be longer than the TTL) and takes the hidden key with it.
///
/// Cancel safety: dropping the future drops the hold, which destroys the session and so leaves
/// no waiter behind.
pub(crate) async fn acquire(
    inner: &Arc<Inner>,
    lock: &LockSpec,
    tasks: &Tasks,
) -> Result<HeldLease> {
    let ttl = lock.opts.ttl;
    // The loss rule measures from the send of the session's creation.
    let sent = Instant::now();
    let session = inner
        .api
        .create_session(ttl, "delete", "kvstore lock")
        .await?;
    // A value acquired by the session goes with it (`Behavior=delete`); only a key the lock
    // wrote no value to needs a delete of its own on `unlock`.
    let delete_on_unlock =
        (lock.opts.delete_on_unlock && lock.opts.value.is_none()).then(|| lock.key.clone());
    let mut held = HeldLease::start(
        Arc::new(SessionLease::new(
            inner.clone(),
            session.clone(),
            delete_on_unlock,
        )),
        ttl,
        sent,
        0,
        tasks,
    );
    let lost = held.lost();
    let lock_key = inner.lock_key(&lock.key);
    let token = tokio::select! {
        token = take(inner, lock, &lock_key, &session) => token?,
        // The waiter's session ran out: its renewals failed for the loss deadline, so the agent
        // was not reached in time. Transient: `lock()` again queues anew.
        () = lost.clone() => {
            return Err(Error::not_reachable(
                BACKEND,
                format!("the session of the waiter for {} ran out while waiting", lock.key),
            ));
        }
    };
    held.set_token(token);
    Ok(held)
}
