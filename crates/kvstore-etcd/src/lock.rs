//! Locks: a lease plus a waiter key `<prefix>\x01kvstore/lock/<key>/<lease>` per contender; the
//! contender whose key has the lowest create revision holds the lock, and each waiter watches
//! only the key just before its own (source: etcd docs, "concurrency" package / v3lock recipe).
//! The lock is taken by one transaction after the predecessor released: it writes the hidden
//! holder key `<prefix>\x01kvstore/held/<key>` (and the value) with the lease, and its revision
//! is the fencing token — the value's `last_index` and the holder key's `mod_revision`, which
//! `Txn::when_held` compares — so every later holder's is greater.
//! With `delete_on_unlock` the lock's value is put with the lock's lease, so it lives exactly
//! as long as the hold (source: etcd docs, "Interacting with etcd" → leases: keys attached to
//! a lease are deleted when it is revoked or expires).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use kvstore_core::backend::{HeldLease, Release};
use kvstore_core::{Error, LockLost, LockOptions, Locker, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::{EtcdLease, Inner};

/// A lock on a key of an [`EtcdStore`](crate::EtcdStore).
pub(crate) struct EtcdLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    held: Option<HeldLease>,
}

impl fmt::Debug for EtcdLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLocker")
            .field("key", &self.key)
            .field("ttl", &self.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

impl EtcdLocker {
    pub(crate) fn new(inner: Arc<Inner>, key: String, opts: LockOptions) -> Self {
        EtcdLocker {
            inner,
            key,
            opts,
            held: None,
        }
    }

    /// Waits until no waiter key older than `my_rev` remains; returns the revision of the read
    /// that found none (at or after the predecessor's release).
    async fn wait_turn(&self, prefix: &str, my_rev: i64, lost: &LockLost) -> Result<i64> {
        loop {
            let opts = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(my_rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            let resp = self
                .inner
                .call(self.inner.client().get(prefix, Some(opts)))
                .await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            let Some(pred) = resp.kvs().first() else {
                return Ok(revision);
            };
            let from = revision + 1;
            // On the store's shared watch stream, like every watch (`mux.rs`).
            let mut watch = self
                .inner
                .watch_hub
                .watch(
                    &self.inner.client,
                    &self.inner.tasks,
                    pred.key(),
                    WatchOptions::new().with_start_revision(from),
                )
                .await?;
            loop {
                tokio::select! {
                    () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                    () = lost.clone() => {
                        return Err(Error::CannotLock { key: self.key.clone(), source: "the lock's lease expired while waiting".into() });
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
}

#[async_trait]
impl Locker for EtcdLocker {
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
        // The loss rule measures from the send of the grant. The lease is renewed by the
        // engine from here on, while waiting too (a wait may be longer than the TTL); dropping
        // this future drops the hold, which revokes the lease and so the waiter key.
        let sent = Instant::now();
        let lease = self.inner.grant(ttl).await?;
        // A value written with the lease goes with it (the revoke deletes it); only a key the
        // lock wrote no value to needs a delete of its own on `unlock`.
        let delete_on_unlock =
            (self.opts.delete_on_unlock && self.opts.value.is_none()).then(|| {
                (
                    self.inner.data_key(&self.key),
                    self.inner.holder_key(&self.key),
                )
            });
        let mut held = HeldLease::start(
            Arc::new(EtcdLease::new(self.inner.clone(), lease, delete_on_unlock)),
            ttl,
            sent,
            0,
            &self.inner.tasks,
        );
        let lost = held.lost();

        let prefix = self.inner.lock_prefix(&self.key);
        let waiter = format!("{prefix}{lease:016x}");
        let put = self
            .inner
            .call(self.inner.client().put(
                waiter.clone(),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            ))
            .await?;
        let my_rev = put.header().map_or(0, |h| h.revision());
        let turn = self.wait_turn(&prefix, my_rev, &lost).await?;

        // Take the lock in one transaction, only while our waiter key is still the one we
        // created: the holder key (its revision is the token that `Txn::when_held` compares)
        // and the value, both with the lease. With `delete_on_unlock` the value is attached to
        // the lease, so the server deletes it with the lease: on revoke (any release) and on
        // expiry (a lost hold).
        let mut ops = vec![TxnOp::put(
            self.inner.holder_key(&self.key),
            waiter.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )];
        if let Some(value) = &self.opts.value {
            let bound = self
                .opts
                .delete_on_unlock
                .then(|| PutOptions::new().with_lease(lease));
            ops.push(TxnOp::put(
                self.inner.data_key(&self.key),
                value.to_vec(),
                bound,
            ));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(waiter, CompareOp::Equal, my_rev)])
            .and_then(ops);
        let resp = self.inner.call(self.inner.client().txn(txn)).await?;
        if !resp.succeeded() {
            return Err(Error::CannotLock {
                key: self.key.clone(),
                source: "the lock's lease expired while acquiring".into(),
            });
        }
        if self.opts.value.is_some() {
            // A write without keep_alive (a lock's value too) ends a registration.
            self.inner.registrations.remove(&self.key);
        }
        // The transaction's revision: the holder key's and the value's, and the token.
        let token = resp.header().map_or(turn, |h| h.revision());
        let token =
            u64::try_from(token).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
        held.set_token(token);
        self.held = Some(held);
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        // Revoking deletes the waiter key, which wakes the next waiter.
        match self.held.take() {
            Some(held) => held.release(Release::Unlock).await,
            None => Ok(()),
        }
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held.as_ref().and_then(HeldLease::token)
    }
}
