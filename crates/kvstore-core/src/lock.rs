//! Distributed locks: the [`Locker`] trait and the [`LockLost`] signal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use tokio::time::Instant;

use crate::Result;

/// A lock on one key, prepared by `Store::new_lock`.
///
/// The lock is not taken until [`lock`](Locker::lock) returns. While held, the holder renews it
/// in the background; it is released by [`unlock`](Locker::unlock), by closing the store, or by
/// dropping the `Locker` (a drop stops renewal and releases as soon as the backend allows: at
/// once where release needs no I/O, otherwise when the TTL runs out).
#[async_trait]
pub trait Locker: fmt::Debug + Send + Sync {
    /// Waits until the lock is held and returns a [`LockLost`] that resolves when it is lost.
    ///
    /// Calling `lock` on a `Locker` that already holds the lock returns a new `LockLost` for the
    /// current hold without waiting.
    ///
    /// # Errors
    ///
    /// `CannotLock` when the backend refuses the lock (for example the session cannot be
    /// created); `Closed` after the store was closed; `NotReachable`/`Timeout` on connection
    /// failures — among them a waiter whose own lease or session ran out while it waited
    /// because its renewals did not reach the server in time. These two are transient:
    /// calling `lock()` again queues anew.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the returned future (for example under `tokio::time::timeout`)
    /// leaves no waiter behind and does not take the lock later.
    async fn lock(&mut self) -> Result<LockLost>;

    /// Releases the lock at once; with `delete_on_unlock` also deletes the key.
    ///
    /// Unlocking a lock that is not held is a no-op that returns `Ok(())`.
    ///
    /// # Errors
    ///
    /// `NotReachable`/`Timeout` when the release could not reach the server (the lock is
    /// then released when its TTL runs out).
    async fn unlock(&mut self) -> Result<()>;

    /// The fencing token of the current hold: `Some` while held, strictly greater for each
    /// later holder of the same key. Pass it to the resource the lock protects so it can
    /// refuse writes from a holder that has lost the lock.
    fn fencing_token(&self) -> Option<u64>;
}

/// A future that resolves when a held lock stops being held: lost (session or lease expired,
/// connection lost beyond the TTL, key deleted by someone else) or released (`unlock`, store
/// closed, `Locker` dropped).
///
/// Cheap to clone; every clone resolves at the same time. Resolving is final.
///
/// # Examples
///
/// A backend creates one with `kvstore_core::backend::lock_lost`:
///
/// ```
/// use kvstore_core::backend::lock_lost;
///
/// # futures::executor::block_on(async {
/// let (signal, lost) = lock_lost();
/// assert!(!lost.is_lost());
/// signal.fire();
/// lost.clone().await;
/// assert!(lost.is_lost());
/// # });
/// ```
#[derive(Clone)]
pub struct LockLost {
    state: Arc<LostState>,
    done: Shared<oneshot::Receiver<()>>,
}

/// What [`LockLost::is_lost`] reads: the fired flag, and the deadline of the loss rule (the
/// hold is lost once it passes, even before the renewal task has run to fire the signal, for
/// example right after the process was paused).
#[derive(Debug)]
struct LostState {
    lost: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl LockLost {
    /// Creates a `LockLost` and the [`LockLostSignal`] that fires it; public as
    /// `kvstore_core::backend::lock_lost`.
    pub(crate) fn new() -> (LockLostSignal, LockLost) {
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(LostState {
            lost: AtomicBool::new(false),
            deadline: Mutex::new(None),
        });
        let signal = LockLostSignal(Arc::new(SignalInner {
            state: state.clone(),
            tx: Mutex::new(Some(tx)),
        }));
        (
            signal,
            LockLost {
                state,
                done: rx.shared(),
            },
        )
    }

    /// Whether the lock has been lost or released. Never goes back to `false`.
    ///
    /// True as soon as the loss rule's deadline has passed, even if the background task that
    /// resolves this future has not run yet.
    pub fn is_lost(&self) -> bool {
        if self.state.lost.load(Ordering::Acquire) {
            return true;
        }
        let deadline = *self
            .state
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl fmt::Debug for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLost")
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Future for LockLost {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The sender fires by sending or by being dropped; both mean "lost".
        self.done.poll_unpin(cx).map(|_| ())
    }
}

/// The sending side of a [`LockLost`], for backend authors. Clones share one signal: firing
/// any clone, or dropping the last one, resolves every clone of the `LockLost`.
#[derive(Debug, Clone)]
pub struct LockLostSignal(Arc<SignalInner>);

#[derive(Debug)]
struct SignalInner {
    state: Arc<LostState>,
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

impl LockLostSignal {
    /// Resolves the `LockLost` now. Idempotent.
    pub fn fire(&self) {
        self.0.fire();
    }

    /// Sets the moment after which [`LockLost::is_lost`] reports the hold as lost, whether or
    /// not [`fire`](Self::fire) has been called by then. The lease engine moves it forward
    /// after every successful renewal.
    pub fn set_deadline(&self, deadline: Instant) {
        *self
            .0
            .state
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
    }
}

impl SignalInner {
    fn fire(&self) {
        self.state.lost.store(true, Ordering::Release);
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for SignalInner {
    fn drop(&mut self) {
        self.fire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_signal_resolves_every_clone() {
        let (signal, lost) = LockLost::new();
        let other = lost.clone();
        let waiter = tokio::spawn(other);
        assert!(!lost.is_lost());
        drop(signal);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("clone resolves")
            .expect("task ok");
        assert!(lost.is_lost());
        lost.await;
    }
}
