//! In-process locks persisted in the `kvstore_locks` table, renewed in the background.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::{Error, LockLost, LockLostSignal, LockOptions, Locker, Result};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::store::{Acquire, Change, Shared, now_ms};

/// The hold of a lock: its token, the signal its holder sees, and the task renewing it.
struct Held {
    token: u64,
    lost: LockLost,
    signal: LockLostSignal,
    _renewal: AbortOnDropHandle<()>,
}

/// A lock on a key of a [`RedbStore`](crate::RedbStore).
///
/// Waiters are woken by the in-process change feed when the holder releases, or when the
/// holder's TTL deadline passes. The fencing token is the store revision at acquisition.
pub struct RedbLocker {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    key: String,
    opts: LockOptions,
    owner: u64,
    held: Option<Held>,
}

impl fmt::Debug for RedbLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbLocker")
            .field("key", &self.key)
            .field("ttl", &self.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

impl RedbLocker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cancel: CancellationToken,
        key: String,
        opts: LockOptions,
    ) -> Self {
        RedbLocker {
            shared,
            cancel,
            key,
            opts,
            owner: rand::random(),
            held: None,
        }
    }

    /// One acquisition attempt that stays correct if the caller's future is dropped mid-way.
    ///
    /// The transaction runs on the blocking pool and cannot be stopped once started. If the
    /// caller goes away first, whoever finishes last (the blocking task or the guard's `Drop`)
    /// sees the other's mark and releases the lock, so an abandoned `lock()` never leaves a
    /// holder behind.
    async fn attempt(&self) -> Result<Acquire> {
        let pending = Arc::new(Mutex::new(Pending::Running));
        let mut guard = AbandonGuard {
            pending: pending.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
            owner: self.owner,
            armed: true,
        };
        let (key, owner, ttl, value) = (
            self.key.clone(),
            self.owner,
            self.opts.ttl,
            self.opts.value.clone(),
        );
        let result = self
            .shared
            .blocking(move |s| {
                let outcome = s.try_acquire(&key, owner, ttl, value.as_deref())?;
                if let Acquire::Acquired(token) = outcome {
                    let mut state = pending.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(*state, Pending::Abandoned) {
                        drop(state);
                        s.release_lock(&key, owner, token, false)?;
                    } else {
                        *state = Pending::Acquired(token);
                    }
                }
                Ok(outcome)
            })
            .await;
        guard.armed = false;
        result
    }
}

enum Pending {
    Running,
    Abandoned,
    Acquired(u64),
}

struct AbandonGuard {
    pending: Arc<Mutex<Pending>>,
    shared: Arc<Shared>,
    key: String,
    owner: u64,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            Pending::Running => *state = Pending::Abandoned,
            Pending::Acquired(token) => {
                // The transaction committed but nobody will take the result: give it back.
                // `Drop` must not block, so the release runs on the blocking pool.
                let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || shared.release_lock(&key, owner, token, false));
                }
            }
            Pending::Abandoned => {}
        }
    }
}

/// Renews the hold at a third of the TTL; releases it when the handle is closed; fires the
/// `LockLost` signal (by dropping it) when the hold ends for any reason.
async fn renew(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    key: String,
    owner: u64,
    token: u64,
    ttl: Duration,
    signal: LockLostSignal,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                let k = key.clone();
                if let Err(err) = shared.blocking(move |s| s.release_lock(&k, owner, token, false)).await {
                    tracing::warn!(key, error = %err, "releasing lock on close failed; it expires with its TTL");
                }
                break;
            }
            () = tokio::time::sleep(period) => {}
        }
        let k = key.clone();
        match shared
            .blocking(move |s| s.renew_lock(&k, owner, token, ttl))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(key, "lock lost: no longer the holder");
                break;
            }
            Err(err) => {
                tracing::warn!(key, error = %err, "lock renewal failed; lock lost");
                break;
            }
        }
    }
    signal.fire();
}

#[async_trait]
impl Locker for RedbLocker {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "lock", key = %self.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && !held.lost.is_lost()
        {
            return Ok(held.lost.clone());
        }
        self.held = None;
        loop {
            if self.cancel.is_cancelled() {
                return Err(Error::Closed {
                    backend: self.shared.backend,
                });
            }
            // Subscribe before trying, so a release between the attempt and the wait is seen.
            let mut changes = self.shared.subscribe();
            match self.attempt().await? {
                Acquire::Acquired(token) => {
                    let (signal, lost) = LockLost::new();
                    let renewal = tokio::spawn(renew(
                        self.shared.clone(),
                        self.cancel.clone(),
                        self.key.clone(),
                        self.owner,
                        token,
                        self.opts.ttl,
                        signal.clone(),
                    ));
                    self.held = Some(Held {
                        token,
                        lost: lost.clone(),
                        signal,
                        _renewal: AbortOnDropHandle::new(renewal),
                    });
                    return Ok(lost);
                }
                Acquire::Held(expires_at) => {
                    let until = Duration::from_millis(expires_at.saturating_sub(now_ms()) + 1);
                    let released = async {
                        loop {
                            match changes.recv().await {
                                Ok(Change::Lock(k)) if *k == *self.key => return,
                                Ok(_) => {}
                                Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                            }
                        }
                    };
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(Error::Closed { backend: self.shared.backend }),
                        () = tokio::time::sleep(until) => {}
                        () = released => {}
                    }
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.shared.backend, op = "unlock", key = %self.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let (key, owner, token, delete) = (
            self.key.clone(),
            self.owner,
            held.token,
            self.opts.delete_on_unlock,
        );
        held.signal.fire();
        drop(held);
        self.shared
            .blocking(move |s| s.release_lock(&key, owner, token, delete))
            .await
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .filter(|h| !h.lost.is_lost())
            .map(|h| h.token)
    }
}
