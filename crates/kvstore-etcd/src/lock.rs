//! Locks: a lease plus a waiter key `<prefix>\x01kvstore/lock/<key>/<lease>` per contender; the
//! contender whose key has the lowest create revision holds the lock, and each waiter watches
//! only the key just before its own (source: etcd docs, "concurrency" package / v3lock recipe).
//! The fencing token is the holder's create revision, so every later holder's is greater.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use kvstore_core::{Error, LockLost, LockLostSignal, LockOptions, Locker, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::BACKEND;
use crate::error::from_etcd;
use crate::store::{Inner, keep_lease_alive, lease_seconds};

struct Held {
    token: u64,
    lease: i64,
    lost: LockLost,
    signal: LockLostSignal,
    _renewal: AbortOnDropHandle<()>,
}

/// A lock on a key of an [`EtcdStore`](crate::EtcdStore).
pub struct EtcdLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    held: Option<Held>,
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

/// Keeps the lease alive; on store close revokes it (releasing at once); fires the signal when
/// the lease is gone for any reason.
async fn renew(inner: Arc<Inner>, lease: i64, ttl: Duration, signal: LockLostSignal) {
    let cancel: CancellationToken = inner.cancel.clone();
    match keep_lease_alive(inner.clone(), lease, ttl, cancel).await {
        Ok(()) => {
            if let Err(err) = inner.client().lease_revoke(lease).await {
                tracing::warn!(backend = BACKEND, error = %err, "revoking lock lease on close failed; it expires with its TTL");
            }
        }
        Err(err) => tracing::debug!(backend = BACKEND, error = %err, "lock lease lost"),
    }
    signal.fire();
}

/// Revokes the lease of an abandoned `lock()` so it leaves no waiter key behind.
struct WaitGuard {
    inner: Arc<Inner>,
    lease: i64,
    armed: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (inner, lease) = (self.inner.clone(), self.lease);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Drop cannot wait; this one bounded call runs on its own.
            rt.spawn(async move {
                if let Err(err) = inner.client().lease_revoke(lease).await {
                    tracing::warn!(backend = BACKEND, error = %err, "revoking an abandoned lock lease failed; it expires with its TTL");
                }
            });
        }
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

    /// Waits until no waiter key older than `my_rev` remains.
    async fn wait_turn(&self, prefix: &str, my_rev: i64, lost: &LockLost) -> Result<()> {
        loop {
            let opts = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(my_rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            let resp = self
                .inner
                .client()
                .get(prefix, Some(opts))
                .await
                .map_err(from_etcd)?;
            let Some(pred) = resp.kvs().first() else {
                return Ok(());
            };
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            let mut watch = self
                .inner
                .client()
                .watch(
                    pred.key(),
                    Some(WatchOptions::new().with_start_revision(from)),
                )
                .await
                .map_err(from_etcd)?;
            loop {
                tokio::select! {
                    () = self.inner.cancel.cancelled() => return Err(Error::Closed { backend: BACKEND }),
                    () = lost.clone() => {
                        return Err(Error::CannotLock { key: self.key.clone(), source: "the lock's lease expired while waiting".into() });
                    }
                    message = watch.message() => match message {
                        Ok(Some(resp)) if resp.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
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
            && !held.lost.is_lost()
        {
            return Ok(held.lost.clone());
        }
        self.held = None;
        self.inner.check_open()?;
        let ttl = self.opts.ttl;
        let lease = self
            .inner
            .client()
            .lease_grant(lease_seconds(ttl), None)
            .await
            .map_err(from_etcd)?
            .id();
        let mut guard = WaitGuard {
            inner: self.inner.clone(),
            lease,
            armed: true,
        };
        let (signal, lost) = LockLost::new();
        let renewal = AbortOnDropHandle::new(tokio::spawn(renew(
            self.inner.clone(),
            lease,
            ttl,
            signal.clone(),
        )));

        let prefix = self.inner.lock_prefix(&self.key);
        let waiter = format!("{prefix}{lease:016x}");
        let put = self
            .inner
            .client()
            .put(
                waiter.clone(),
                Vec::new(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(from_etcd)?;
        let my_rev = put.header().map_or(0, |h| h.revision());
        self.wait_turn(&prefix, my_rev, &lost).await?;

        if let Some(value) = &self.opts.value {
            // Write the value only while our waiter key is still the one we created.
            let txn = Txn::new()
                .when([Compare::create_revision(waiter, CompareOp::Equal, my_rev)])
                .and_then([TxnOp::put(
                    self.inner.data_key(&self.key),
                    value.to_vec(),
                    None,
                )]);
            let resp = self.inner.client().txn(txn).await.map_err(from_etcd)?;
            if !resp.succeeded() {
                return Err(Error::CannotLock {
                    key: self.key.clone(),
                    source: "the lock's lease expired while acquiring".into(),
                });
            }
        }
        guard.armed = false;
        let token =
            u64::try_from(my_rev).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
        self.held = Some(Held {
            token,
            lease,
            lost: lost.clone(),
            signal,
            _renewal: renewal,
        });
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        held.signal.fire();
        let lease = held.lease;
        drop(held);
        if self.opts.delete_on_unlock {
            self.inner
                .client()
                .delete(self.inner.data_key(&self.key), None)
                .await
                .map_err(from_etcd)?;
        }
        // Revoking deletes the waiter key, which wakes the next waiter.
        self.inner
            .client()
            .lease_revoke(lease)
            .await
            .map_err(from_etcd)?;
        Ok(())
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|h| !h.lost.is_lost())
            .map(|h| h.token)
    }
}
