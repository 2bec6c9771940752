//! The lease engine: one renewal schedule and one loss rule for every lease a backend holds —
//! a lock's hold, a `keep_alive` registration's lease.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::lock::LockLostSignal;
use crate::{Error, LockLost, Result};

/// How long before a lease's TTL runs out (measured from the send of the last renewal that
/// succeeded) its holder stops believing it holds it: a fifth of the TTL.
///
/// Every server measures a lease from a moment later than the client's send, so no other client
/// can take over before the holder has given up; the margin covers clock rates that differ and
/// a scheduler that runs the renewal task late.
pub fn loss_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// The time between renewals: a quarter of the TTL, so three renewals fall before the loss
/// deadline (at four fifths of the TTL).
pub fn renewal_period(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(1))
}

/// The wait before retrying a renewal that failed with a transient error: a twentieth of the
/// TTL, at least 5 ms; retries go on until the loss deadline.
pub fn retry_period(ttl: Duration) -> Duration {
    (ttl / 20).max(Duration::from_millis(5))
}

/// How long a release may take before it is abandoned (the lease then runs out by itself).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one renewal, as the server reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The server extended the lease by its TTL.
    Renewed,
    /// The server no longer has the lease (expired, revoked, or no longer this holder's):
    /// the hold is lost for good.
    Gone,
}

impl Renewal {
    /// `Renewed` when the server confirmed the hold, else `Gone`.
    pub fn held(held: bool) -> Renewal {
        if held {
            Renewal::Renewed
        } else {
            Renewal::Gone
        }
    }
}

/// Why a lease is given back: backends may release differently (on `Close`, a session that
/// closes anyway may take the lock's value with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// `Locker::unlock`.
    Unlock,
    /// `Store::close`.
    Close,
    /// The `Locker` (or the registration) was dropped or replaced.
    Drop,
}

/// The protocol steps of one lease, written by a backend: everything else (when to renew, when
/// the hold is lost, the held state, the release on drop and close) is the engine's.
///
/// Both methods are called with a deadline around them; they need no timeout of their own.
#[async_trait]
pub trait Lease: fmt::Debug + Send + Sync + 'static {
    /// Renews the lease by its TTL, once.
    ///
    /// # Errors
    ///
    /// Transient errors (`NotReachable`, `Timeout`) are retried until the loss deadline; any
    /// other error ends the hold.
    async fn renew(&self) -> Result<Renewal>;

    /// Gives the lease back. A release that fails leaves the lease to run out by itself.
    ///
    /// # Errors
    ///
    /// Whatever the server answered; the engine logs it.
    async fn release(&self, why: Release) -> Result<()>;
}

/// The protocol step of a `keep_alive` key whose expiry the server keeps on the key itself (a
/// deadline in the row, a `PEXPIRE`), for [`KeyLease`].
///
/// Backends whose registrations hang on a server-side session or lease (etcd, Consul,
/// ZooKeeper) write their own [`Lease`] instead.
#[async_trait]
pub trait RenewKey: fmt::Debug + Send + Sync + 'static {
    /// Pushes the expiry of `key` to now + `ttl`, but only while the key still holds the write
    /// at `index` and has not expired: `Ok(false)` when it was rewritten, deleted or expired
    /// (a later write is not this registration's to keep alive).
    ///
    /// # Errors
    ///
    /// Whatever the server answered; [`Lease::renew`] says which errors are retried.
    async fn renew_key(this: &Arc<Self>, key: &str, index: u64, ttl: Duration) -> Result<bool>;
}

/// A `keep_alive` key's [`Lease`] on a backend that implements [`RenewKey`]: renewing pushes the
/// key's expiry while it still holds the write that registered it; releasing sends nothing, as
/// the key's own expiry is the lease (a registration that is given back stays until its TTL
/// runs out, as on every backend).
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::prelude::*;
///
/// #[derive(Debug)]
/// struct Server;
///
/// #[async_trait]
/// impl RenewKey for Server {
///     async fn renew_key(_: &Arc<Self>, _key: &str, index: u64, _ttl: Duration) -> Result<bool> {
///         Ok(index == 7) // the key still holds the write at 7
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let lease = KeyLease::new(Arc::new(Server), "svc/a", 7, Duration::from_secs(5));
/// assert_eq!(lease.renew().await?, Renewal::Renewed);
/// let gone = KeyLease::new(Arc::new(Server), "svc/a", 8, Duration::from_secs(5));
/// assert_eq!(gone.renew().await?, Renewal::Gone);
/// # Ok::<(), kvstore_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct KeyLease<R> {
    server: Arc<R>,
    key: String,
    index: u64,
    ttl: Duration,
}

impl<R: RenewKey> KeyLease<R> {
    /// The lease of `key`, written at `index` with `ttl`, renewed through `server`.
    pub fn new(server: Arc<R>, key: &str, index: u64, ttl: Duration) -> Self {
        KeyLease {
            server,
            key: key.to_owned(),
            index,
            ttl,
        }
    }

    /// As [`new`](Self::new), ready to hand to the engine (the `lease` of a [`Written`](super::Written)).
    pub fn shared(server: Arc<R>, key: &str, index: u64, ttl: Duration) -> Arc<dyn Lease> {
        Arc::new(Self::new(server, key, index, ttl))
    }
}

#[async_trait]
impl<R: RenewKey> Lease for KeyLease<R> {
    async fn renew(&self) -> Result<Renewal> {
        let held = R::renew_key(&self.server, &self.key, self.index, self.ttl).await?;
        Ok(Renewal::held(held))
    }

    /// Nothing to give back: the key's own expiry is the lease.
    async fn release(&self, _why: Release) -> Result<()> {
        Ok(())
    }
}

/// A backend's shared state, owned by the backend value: its tasks hold `Arc` clones of the
/// state, and dropping the backend (the last `Store` handle) cancels their token, so a
/// dropped store ends its background work without `close()`. Derefs to the `Arc`, so
/// `self.inner.clone()` hands a task the state.
///
/// ```
/// use kvstore_core::backend::{Owned, Tasks};
///
/// struct Inner { tasks: Tasks }
/// let tasks = Tasks::new();
/// let owned = Owned::new(Inner { tasks: tasks.clone() }, &tasks);
/// let for_a_task = owned.clone();
/// drop(owned);
/// assert!(for_a_task.tasks.cancel_token().is_cancelled());
/// ```
#[derive(Debug)]
pub struct Owned<I> {
    inner: Arc<I>,
    _stop: tokio_util::sync::DropGuard,
}

impl<I> Owned<I> {
    /// Owns `inner`, whose background work runs on `tasks`.
    pub fn new(inner: I, tasks: &Tasks) -> Self {
        Owned {
            inner: Arc::new(inner),
            _stop: tasks.cancel.clone().drop_guard(),
        }
    }
}

impl<I> std::ops::Deref for Owned<I> {
    type Target = Arc<I>;

    fn deref(&self) -> &Arc<I> {
        &self.inner
    }
}

/// Where a backend's background work runs: tasks that the store tracks, and the token that
/// `Store::close` cancels. `close()` cancels the token, then waits (bounded) for the tracker,
/// so every release has been sent when it returns.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    /// A new, open set of tasks.
    pub fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The token cancelled by [`close`](Self::close).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Spawns `task` on the current runtime, tracked and carrying the caller's `tracing` span.
    /// Outside a runtime (a drop after the runtime ended) the task is not run.
    pub fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<()>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let task = task.instrument(tracing::Span::current());
        Some(self.tracker.spawn_on(task, &handle))
    }

    /// Cancels every task and waits up to `timeout` for them to finish (releases included).
    pub async fn close(&self, timeout: Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "background tasks did not finish within {timeout:?} of close; their leases run out by themselves"
            );
        }
    }
}

/// A held lease: renewed in the background under the loss rule until released, dropped, or
/// lost. Lock implementations keep one per hold.
///
/// **Loss rule.** Measured from the moment the last successful renewal (or the acquire) was
/// *sent*: when no renewal has succeeded within `ttl - loss_margin(ttl)` of it, the hold is lost
/// — [`lost`](Self::lost) resolves and [`token`](Self::token) returns `None` — without waiting
/// for the server to say so. A lost hold is never regained.
pub struct HeldLease {
    token: u64,
    lost: LockLost,
    signal: LockLostSignal,
    lease: Arc<dyn Lease>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    tasks: Tasks,
}

impl fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLease")
            .field("token", &self.token)
            .field("lost", &self.lost.is_lost())
            .field("lease", &self.lease)
            .finish()
    }
}

impl HeldLease {
    /// Starts holding `lease`, acquired by a request sent at `sent`, with fencing token
    /// `token`, renewing every [`renewal_period`] on `tasks`.
    pub fn start(
        lease: Arc<dyn Lease>,
        ttl: Duration,
        sent: Instant,
        token: u64,
        tasks: &Tasks,
    ) -> HeldLease {
        let (signal, lost) = LockLost::new();
        signal.set_deadline(sent + ttl - loss_margin(ttl));
        let renewal = tasks.spawn(keep_renewing(
            Arc::clone(&lease),
            ttl,
            sent,
            signal.clone(),
            tasks.cancel.clone(),
        ));
        HeldLease {
            token,
            lost,
            signal,
            lease,
            renewal,
            tasks: tasks.clone(),
        }
    }

    /// Sets the fencing token, for backends that learn it after the lease is granted (an etcd
    /// lock's waiter key revision): the lease is renewed while the lock is waited for.
    pub fn set_token(&mut self, token: u64) {
        self.token = token;
    }

    /// The fencing token while held; `None` once lost or released.
    pub fn token(&self) -> Option<u64> {
        (!self.lost.is_lost()).then_some(self.token)
    }

    /// Resolves when the hold ends (lost or released).
    pub fn lost(&self) -> LockLost {
        self.lost.clone()
    }

    /// Ends the hold now and gives the lease back, waiting for the release (bounded by
    /// [`RELEASE_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// The release's error; the hold has ended either way.
    pub async fn release(mut self, why: Release) -> Result<()> {
        self.stop();
        let lease = Arc::clone(&self.lease);
        tokio::time::timeout(RELEASE_TIMEOUT, lease.release(why))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    fn stop(&mut self) {
        self.signal.fire();
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Released already: by `release`, or by the renewal task, which gives the lease back
        // itself whenever it ends (lost or store closed).
        if self.renewal.as_ref().is_none_or(|r| r.is_finished()) {
            self.signal.fire();
            return;
        }
        self.stop();
        let lease = Arc::clone(&self.lease);
        // Drop cannot wait: the release runs as a tracked task that `close()` waits for.
        self.tasks
            .spawn(async move { release_logged(&*lease, Release::Drop).await });
    }
}

pub(crate) async fn release_logged(lease: &dyn Lease, why: Release) {
    match tokio::time::timeout(RELEASE_TIMEOUT, lease.release(why)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, ?lease, "releasing a lease failed; it runs out by itself")
        }
        Err(_) => tracing::warn!(?lease, "releasing a lease timed out; it runs out by itself"),
    }
}

/// How a renewal loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The store was closed (the lease has been released).
    Closed,
    /// The loss rule's deadline passed, the server said the lease is gone, or a renewal
    /// failed for good.
    Lost,
}

/// Renews `lease` until the loss rule says it is lost or `cancel` fires (then releases it).
/// Updates `signal`'s deadline after each success and fires it when the loop ends.
async fn keep_renewing(
    lease: Arc<dyn Lease>,
    ttl: Duration,
    sent: Instant,
    signal: LockLostSignal,
    cancel: CancellationToken,
) {
    match renew_until_lost(&*lease, ttl, sent, &signal, &cancel).await {
        Ended::Closed => release_logged(&*lease, Release::Close).await,
        Ended::Lost => {
            // Tell the holder first, then give back whatever the server may still hold for
            // it, so a successor need not wait for the server to expire it.
            signal.fire();
            release_logged(&*lease, Release::Drop).await;
        }
    }
    signal.fire();
}

/// The loss rule and the renewal schedule, written once.
pub(crate) async fn renew_until_lost(
    lease: &dyn Lease,
    ttl: Duration,
    mut last_ok_sent: Instant,
    signal: &LockLostSignal,
    cancel: &CancellationToken,
) -> Ended {
    let deadline_of = |sent: Instant| sent + ttl - loss_margin(ttl);
    let mut next = last_ok_sent + renewal_period(ttl);
    loop {
        let deadline = deadline_of(last_ok_sent);
        tokio::select! {
            // The deadline is checked first: after a pause of the process, every timer is due
            // at once, and the hold is lost whatever a late renewal would say.
            biased;
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(?lease, "lease lost: no renewal succeeded within its TTL minus the margin");
                return Ended::Lost;
            }
            () = cancel.cancelled() => return Ended::Closed,
            () = tokio::time::sleep_until(next) => {}
        }
        let attempt_sent = Instant::now();
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ended::Closed,
            outcome = tokio::time::timeout_at(deadline, lease.renew()) => outcome,
        };
        match outcome {
            Ok(Ok(Renewal::Renewed)) => {
                if deadline_of(attempt_sent) <= Instant::now() {
                    return Ended::Lost;
                }
                last_ok_sent = attempt_sent;
                signal.set_deadline(deadline_of(last_ok_sent));
                next = last_ok_sent + renewal_period(ttl);
            }
            Ok(Ok(Renewal::Gone)) => {
                tracing::warn!(?lease, "lease lost: the server no longer has it");
                return Ended::Lost;
            }
            Ok(Err(err)) if err.is_transient() => {
                tracing::debug!(?lease, error = %err, "renewal failed; retrying until the deadline");
                next = Instant::now() + retry_period(ttl);
            }
            Ok(Err(err)) => {
                tracing::warn!(?lease, error = %err, "lease lost: renewal refused");
                return Ended::Lost;
            }
            // The attempt ran into the deadline: the loop's first arm reports the loss.
            Err(_elapsed) => next = deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A lease whose renewals follow a script; used to test the engine's timing alone (the
    /// backends' fault tests exercise it against real servers).
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<Renewal>>>,
        stall: bool,
        renewals: AtomicUsize,
        releases: Mutex<Vec<Release>>,
    }

    #[async_trait]
    impl Lease for Scripted {
        async fn renew(&self) -> Result<Renewal> {
            self.renewals.fetch_add(1, Ordering::SeqCst);
            if self.stall {
                futures::future::pending::<()>().await;
            }
            self.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Ok(Renewal::Renewed))
        }
        async fn release(&self, why: Release) -> Result<()> {
            self.releases.lock().unwrap().push(why);
            Ok(())
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_stays_held() {
        let lease = Arc::new(Scripted::default());
        let tasks = Tasks::new();
        let held = HeldLease::start(lease.clone(), TTL, Instant::now(), 7, &tasks);
        tokio::time::sleep(TTL * 5).await;
        assert_eq!(held.token(), Some(7));
        assert!(
            lease.renewals.load(Ordering::SeqCst) >= 19,
            "renews 4 times per TTL"
        );
        held.release(Release::Unlock).await.unwrap();
        assert_eq!(*lease.releases.lock().unwrap(), [Release::Unlock]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_server_loses_the_hold_at_the_deadline() {
        let lease = Arc::new(Scripted {
            stall: true,
            ..Scripted::default()
        });
        let tasks = Tasks::new();
        let start = Instant::now();
        let held = HeldLease::start(lease.clone(), TTL, start, 1, &tasks);
        held.lost().await;
        assert_eq!(Instant::now() - start, TTL - loss_margin(TTL));
        assert_eq!(held.token(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_the_deadline() {
        let lease = Arc::new(Scripted {
            answers: Mutex::new(
                (0..100)
                    .map(|_| Err(Error::not_reachable("test", "down")))
                    .collect(),
            ),
            ..Scripted::default()
        });
        let tasks = Tasks::new();
        let start = Instant::now();
        let held = HeldLease::start(lease.clone(), TTL, start, 1, &tasks);
        held.lost().await;
        assert_eq!(Instant::now() - start, TTL - loss_margin(TTL));
        // First attempt at TTL/4, then every TTL/20 until 4/5 of the TTL.
        assert!(lease.renewals.load(Ordering::SeqCst) >= 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_lease_is_lost_at_once_and_never_regained() {
        let lease = Arc::new(Scripted {
            answers: Mutex::new(vec![Ok(Renewal::Gone)]),
            ..Scripted::default()
        });
        let tasks = Tasks::new();
        let start = Instant::now();
        let held = HeldLease::start(lease.clone(), TTL, start, 1, &tasks);
        held.lost().await;
        assert_eq!(Instant::now() - start, renewal_period(TTL));
        tokio::time::sleep(TTL).await;
        assert_eq!(held.token(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_send_of_the_acquire() {
        let lease = Arc::new(Scripted {
            stall: true,
            ..Scripted::default()
        });
        let tasks = Tasks::new();
        // Acquired by a request sent 3 s ago (its answer took that long).
        let sent = Instant::now() - Duration::from_secs(3);
        let held = HeldLease::start(lease, TTL, sent, 1, &tasks);
        assert!(held.token().is_some());
        tokio::time::sleep(TTL - loss_margin(TTL) - Duration::from_secs(3)).await;
        assert_eq!(held.token(), None, "is_lost reads the deadline itself");
    }

    #[tokio::test(start_paused = true)]
    async fn close_releases_and_drop_releases_on_a_tracked_task() {
        let lease = Arc::new(Scripted::default());
        let tasks = Tasks::new();
        let held = HeldLease::start(lease.clone(), TTL, Instant::now(), 1, &tasks);
        let dropped = Arc::new(Scripted::default());
        drop(HeldLease::start(
            dropped.clone(),
            TTL,
            Instant::now(),
            2,
            &tasks,
        ));
        tasks.close(Duration::from_secs(1)).await;
        assert_eq!(*lease.releases.lock().unwrap(), [Release::Close]);
        assert_eq!(*dropped.releases.lock().unwrap(), [Release::Drop]);
        assert!(held.lost().is_lost());
    }
}
