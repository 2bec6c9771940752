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

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::backend::{HeldLease, Release};
use kvstore_core::{Error, LockLost, LockOptions, Locker, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::api::{Consistency, Txn, next_index, op, op_lock, op_value};
use crate::client::{Inner, SessionLease};
use crate::error::is_invalid_session;

/// A lock on a key of a [`ConsulStore`](crate::ConsulStore).
pub(crate) struct ConsulLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    held: Option<HeldLease>,
}

impl fmt::Debug for ConsulLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulLocker")
            .field("key", &self.key)
            .field("ttl", &self.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

impl ConsulLocker {
    /// The acquire transaction: the hidden key's `lock`, and the value's write in the same
    /// step. With `delete_on_unlock` the value key is acquired by the lock's session too, so
    /// `Behavior=delete` deletes it with the session (any release, or invalidation of a lost
    /// hold); otherwise it is a plain `set`. Deleting first detaches the session of an earlier
    /// TTL write (see `Inner::write_with_session`).
    fn acquire_ops(&self, lock_key: &str, session: &str) -> Vec<serde_json::Value> {
        let mut ops = vec![op_lock(lock_key, b"", session)];
        if let Some(value) = &self.opts.value {
            let consul_key = self.inner.consul_key(&self.key);
            ops.push(op("delete", &consul_key));
            ops.push(if self.opts.delete_on_unlock {
                op_lock(&consul_key, value, session)
            } else {
                op_value("set", &consul_key, value)
            });
        }
        ops
    }

    pub(crate) fn new(inner: Arc<Inner>, key: String, opts: LockOptions) -> Self {
        ConsulLocker {
            inner,
            key,
            opts,
            held: None,
        }
    }

    /// Tries to acquire until it succeeds; between tries waits (blocking query) until the
    /// hidden key is free. Returns the acquisition's index.
    async fn acquire(&self, lock_key: &str, session: &str) -> Result<u64> {
        let mut index = 0;
        loop {
            self.inner.check_open()?;
            match self
                .inner
                .api
                .txn(self.acquire_ops(lock_key, session))
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
                        key: self.key.clone(),
                        source: what.into(),
                    });
                }
                Txn::Failed { .. } => {}
            }
            // Held by someone else: wait until the key changes (released or deleted).
            loop {
                let block = (index > 0).then_some((index, self.inner.api.config.watch_wait));
                let read = self
                    .inner
                    .api
                    .get(lock_key, false, Consistency::Consistent, block);
                let (entries, next) = tokio::select! {
                    () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                    read = read => read?,
                };
                index = next_index(index, next);
                if entries.iter().all(|e| e.session.is_none()) {
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Locker for ConsulLocker {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "lock", key = %self.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && held.token().is_some()
        {
            return Ok(held.lost());
        }
        self.held = None;
        self.inner.check_open()?;
        let ttl = self.opts.ttl;
        // The loss rule measures from the send of the session's creation; the engine renews
        // it from here on, while waiting too. Dropping this future drops the hold, which
        // destroys the session and so leaves no waiter behind.
        let sent = Instant::now();
        let session = self
            .inner
            .api
            .create_session(ttl, "delete", "kvstore lock")
            .await?;
        // A value acquired by the session goes with it (`Behavior=delete`); only a key the lock
        // wrote no value to needs a delete of its own on `unlock`.
        let delete_on_unlock =
            (self.opts.delete_on_unlock && self.opts.value.is_none()).then(|| self.key.clone());
        let mut held = HeldLease::start(
            Arc::new(SessionLease::new(
                self.inner.clone(),
                session.clone(),
                delete_on_unlock,
            )),
            ttl,
            sent,
            0,
            &self.inner.tasks,
        );
        let lost = held.lost();
        let lock_key = self.inner.lock_key(&self.key);
        let token = tokio::select! {
            token = self.acquire(&lock_key, &session) => token?,
            () = lost.clone() => {
                return Err(Error::CannotLock {
                    key: self.key.clone(),
                    source: "the lock's session was lost while waiting".into(),
                });
            }
        };
        if self.opts.value.is_some() {
            // A write without keep_alive (a lock's value too) ends a registration.
            self.inner.registrations.remove(&self.key);
        }
        held.set_token(token);
        self.held = Some(held);
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        // Behavior=delete: destroying the session deletes the hidden key, which wakes the
        // next waiter.
        match self.held.take() {
            Some(held) => held.release(Release::Unlock).await,
            None => Ok(()),
        }
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held.as_ref().and_then(HeldLease::token)
    }
}
