//! Locks: a session per `lock()` and the hidden key `<prefix><key>/` that the holder
//! acquires (source: Consul docs, "Application Leader Election with Sessions" and the
//! KV `acquire` semantics; here the `lock` verb of `/v1/txn`, which returns the new index).
//!
//! The session has the lock's TTL (whole seconds, rounded up), no lock delay and
//! `Behavior=delete`: when it is destroyed (`unlock`, store closed, `Locker` dropped) or
//! invalidated (its holder died; Consul invalidates between TTL and 2×TTL after the last
//! renewal) the hidden key is deleted, which wakes the waiters' blocking queries. It is renewed
//! at a third of the TTL. The fencing token is the `ModifyIndex` of the acquisition, which
//! grows with every later write in the cluster.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use kvstore_core::{Error, LockLost, LockLostSignal, LockOptions, Locker, Result};
use tokio_util::task::AbortOnDropHandle;

use crate::BACKEND;
use crate::api::{Consistency, Txn, next_index, op_lock};
use crate::store::{Condition, Inner, renew_session};

struct Held {
    token: u64,
    session: String,
    lost: LockLost,
    signal: LockLostSignal,
    _monitor: AbortOnDropHandle<()>,
    guard: SessionGuard,
}

/// Destroys a session when dropped while armed: an abandoned `lock()` or a dropped holder
/// leaves nothing behind.
struct SessionGuard {
    inner: Arc<Inner>,
    session: Option<String>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Drop cannot wait; this one bounded request runs on its own.
            rt.spawn(async move {
                if let Err(err) = inner.api.destroy_session(&session).await {
                    tracing::warn!(backend = BACKEND, error = %err, "destroying an abandoned lock session failed; it expires with its TTL");
                }
            });
        }
    }
}

/// A lock on a key of a [`ConsulStore`](crate::ConsulStore).
pub struct ConsulLocker {
    inner: Arc<Inner>,
    key: String,
    opts: LockOptions,
    held: Option<Held>,
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

/// Renews the session and watches the hidden key; fires `signal` when the session is gone or
/// the key is no longer held by it. When the store closes, destroys the session (releasing).
async fn monitor(
    inner: Arc<Inner>,
    lock_key: String,
    session: String,
    ttl: Duration,
    signal: LockLostSignal,
    started: oneshot::Sender<()>,
) {
    let renewal = renew_session(inner.clone(), session.clone(), ttl, inner.cancel.clone());
    tokio::pin!(renewal);
    let mut started = Some(started);
    let watch = async {
        let mut index = 0;
        loop {
            let block = (index > 0).then_some((index, inner.api.config.watch_wait));
            match inner
                .api
                .get(&lock_key, false, Consistency::Consistent, block)
                .await
            {
                Ok((entries, next)) => {
                    if !entries
                        .iter()
                        .any(|e| e.session.as_deref() == Some(&session))
                    {
                        return;
                    }
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                    index = next_index(index, next);
                }
                Err(err) => {
                    tracing::debug!(backend = BACKEND, error = %err, "lock watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    index = 0;
                }
            }
        }
    };
    tokio::select! {
        result = &mut renewal => {
            if inner.cancel.is_cancelled() {
                let _ = inner.api.destroy_session(&session).await;
            } else if let Err(err) = result {
                tracing::warn!(backend = BACKEND, error = %err, "lock session lost");
            }
        }
        () = watch => tracing::warn!(backend = BACKEND, key = %lock_key, "lock no longer held by this session"),
    }
    signal.fire();
}

impl ConsulLocker {
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
                .txn(vec![op_lock(lock_key, b"", session)])
                .await?
            {
                Txn::Done(results) => {
                    return results
                        .iter()
                        .find(|e| e.key == lock_key)
                        .map(|e| e.modify_index)
                        .ok_or_else(|| Error::backend(BACKEND, "lock returned no entry"));
                }
                Txn::Failed { what, .. } if what.contains("Invalid session") => {
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
            && !held.lost.is_lost()
        {
            return Ok(held.lost.clone());
        }
        self.held = None;
        self.inner.check_open()?;
        let ttl = self.opts.ttl;
        let session = self
            .inner
            .api
            .create_session(ttl, "delete", "kvstore lock")
            .await?;
        let guard = SessionGuard {
            inner: self.inner.clone(),
            session: Some(session.clone()),
        };
        // Renew while waiting, too: the wait may be longer than the TTL.
        let waiting_renewal = AbortOnDropHandle::new(tokio::spawn(renew_session(
            self.inner.clone(),
            session.clone(),
            ttl,
            self.inner.cancel.child_token(),
        )));
        let lock_key = self.inner.lock_key(&self.key);
        let token = self.acquire(&lock_key, &session).await?;
        if let Some(value) = &self.opts.value {
            self.inner
                .write(&self.key, value, Condition::None, None)
                .await?;
        }
        drop(waiting_renewal);
        let (signal, lost) = LockLost::new();
        let (started, running) = oneshot::channel();
        let task = tokio::spawn(monitor(
            self.inner.clone(),
            lock_key,
            session.clone(),
            ttl,
            signal.clone(),
            started,
        ));
        let monitor = AbortOnDropHandle::new(task);
        // The monitor has seen the key held before lock() returns.
        let _ = running.await;
        self.held = Some(Held {
            token,
            session,
            lost: lost.clone(),
            signal,
            _monitor: monitor,
            guard,
        });
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        held.signal.fire();
        held.guard.session = None;
        let session = held.session.clone();
        drop(held);
        if self.opts.delete_on_unlock {
            match self.inner.remove(&self.key, None).await {
                Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        // Behavior=delete: destroying the session deletes the hidden key, which wakes the
        // next waiter.
        self.inner.api.destroy_session(&session).await
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|h| !h.lost.is_lost())
            .map(|h| h.token)
    }
}
