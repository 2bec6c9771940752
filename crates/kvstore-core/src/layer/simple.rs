//! The layers that wrap each call without changing its arguments: timeout, concurrency limit,
//! retry, tracing.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::Layer;
use super::intercept::{Intercept, Intercepted, Operation};
use crate::{Error, Result, Store};

/// Bounds every call by a timeout: a call still running after it ends with
/// [`Error::Timeout`] (transient).
///
/// Applies to every [`Store`] call and to [`Locker::unlock`](crate::Locker::unlock); not to
/// [`Locker::lock`](crate::Locker::lock), which waits until the lock is free by design (wrap it
/// in `tokio::time::timeout` to bound the wait), not to `close` (bounded by the store itself),
/// and not to the items of a watch stream (only to opening it).
///
/// A write that timed out may still have happened (the request may have reached the server):
/// its outcome is unknown, as with any `Timeout`. Read the key to learn it.
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use std::time::Duration;
/// use kvstore_core::layer::{StoreExt, TimeoutLayer};
///
/// let store = store.layer(TimeoutLayer::new(Duration::from_millis(500)));
/// match store.get("config/a", None).await {
///     Err(kvstore_core::Error::Timeout) => eprintln!("no answer within 500 ms"),
///     other => println!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer that bounds each call by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Intercepted::wrap(inner, *self)
    }
}

impl Intercept for TimeoutLayer {
    async fn around_once<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> Result<T> {
        if op.waits_by_design() {
            return call.await;
        }
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(Error::Timeout))
    }
}

/// Lets at most `max` calls of the store run at once; the others wait for a free slot, in
/// order (a fair semaphore).
///
/// Counts every [`Store`] call and [`Locker::unlock`](crate::Locker::unlock); not
/// [`Locker::lock`](crate::Locker::lock), whose wait for a free lock would hold a slot for as
/// long as another holder keeps it, nor `close`, nor the items of open watch streams. Waiting
/// for a slot is cancel-safe: dropping the call's future gives up its place.
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use std::num::NonZeroUsize;
/// use kvstore_core::layer::{ConcurrencyLimitLayer, StoreExt};
///
/// let max = NonZeroUsize::new(16).expect("not zero");
/// let store = store.layer(ConcurrencyLimitLayer::new(max));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConcurrencyLimitLayer {
    max: NonZeroUsize,
}

impl ConcurrencyLimitLayer {
    /// A layer that lets at most `max` calls run at once, per wrapped store.
    pub fn new(max: NonZeroUsize) -> Self {
        ConcurrencyLimitLayer { max }
    }
}

impl Layer for ConcurrencyLimitLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Intercepted::wrap(
            inner,
            Limit {
                slots: Semaphore::new(self.max.get()),
            },
        )
    }
}

#[derive(Debug)]
struct Limit {
    slots: Semaphore,
}

impl Intercept for Limit {
    async fn around_once<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> Result<T> {
        if op.waits_by_design() {
            return call.await;
        }
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await.ok();
        call.await
    }
}

/// Retries a call that failed with a transient error ([`Error::is_transient`]:
/// `NotReachable`, `Timeout`) with exponential backoff, for the calls that are safe to repeat
/// ([`Operation::is_safe_to_repeat`]): `get`, `exists`, `list`, opening a `watch` or
/// `watch_tree`, `put` and `new_lock`. Other errors, and every other call, are returned as
/// they are.
///
/// **Why not a CAS, a delete or a transaction.** A transient error leaves the outcome unknown:
/// the request may have been applied before the connection broke. Sent again, an `atomic_put`
/// that did happen fails its own condition (`KeyModified`), a `delete` answers `KeyNotFound`,
/// a `txn` fails its conditions — a wrong answer about a write that succeeded. The caller
/// decides instead: read the key (`get`) and compare it with what the write meant to leave
/// (for a CAS, the value written; for a transaction, the keys it wrote), then retry the whole
/// read–modify–write from the current state if it did not happen.
///
/// The default backoff starts at 50 ms, doubles up to 2 s, with jitter, for at most 4 retries
/// (5 attempts); [`with_backoff`](RetryLayer::with_backoff) sets another. Cancel-safe: dropping
/// the call's future stops retrying.
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use std::time::Duration;
/// use kvstore_core::layer::{RetryLayer, StoreExt, TimeoutLayer};
///
/// // Each attempt bounded by 1 s, at most 4 retries.
/// let store = store
///     .layer(TimeoutLayer::new(Duration::from_secs(1)))
///     .layer(RetryLayer::new());
/// let pair = store.get("config/a", None).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer {
    backoff: ExponentialBuilder,
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl RetryLayer {
    /// A layer with the default backoff (50 ms doubling to 2 s, jittered, 4 retries).
    pub fn new() -> Self {
        RetryLayer {
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(4)
                .with_jitter(),
        }
    }

    /// Uses `backoff` (from the `backon` crate) between attempts instead.
    pub fn with_backoff(mut self, backoff: ExponentialBuilder) -> Self {
        self.backoff = backoff;
        self
    }
}

impl Layer for RetryLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Intercepted::wrap(inner, *self)
    }
}

impl Intercept for RetryLayer {
    async fn around_once<'a, T: Send + 'a>(
        &'a self,
        _op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> Result<T> {
        call.await
    }

    async fn around<'a, T: Send + 'a, Fut>(
        &'a self,
        op: Operation,
        mut make: impl FnMut() -> Fut + Send + 'a,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        if !op.is_safe_to_repeat() {
            return make().await;
        }
        (|| make())
            .retry(self.backoff)
            .when(Error::is_transient)
            .notify(|err, delay| {
                tracing::debug!(
                    "db.operation.name" = op.name(),
                    error = %err,
                    ?delay,
                    "transient error; retrying"
                );
            })
            .await
    }
}

/// A `tracing` span around every call, named `kvstore`, at `DEBUG` level, with the
/// OpenTelemetry database-client fields: `db.system.name` (the store's
/// [`backend`](Store::backend)), `db.operation.name` ([`Operation::name`]) and, when the call
/// fails, `error.type` ([`Error::kind`]) and an event with the error's message.
///
/// The span covers the whole call, retries included when this layer is outside a
/// [`RetryLayer`]; for `lock` it covers the wait. Watch stream items are not spanned (only
/// opening the stream).
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::layer::{StoreExt, TracingLayer};
///
/// let store = store.layer(TracingLayer::new());
/// store.get("config/a", None).await?; // span kvstore{db.operation.name="get" …}
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer {
    _private: (),
}

impl TracingLayer {
    /// A tracing layer.
    pub fn new() -> Self {
        TracingLayer::default()
    }
}

impl Layer for TracingLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        let backend = inner.backend();
        Intercepted::wrap(inner, Traced { backend })
    }
}

#[derive(Debug)]
struct Traced {
    backend: &'static str,
}

impl Intercept for Traced {
    async fn around_once<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> Result<T> {
        let span = tracing::debug_span!(
            "kvstore",
            "db.system.name" = self.backend,
            "db.operation.name" = op.name(),
            "error.type" = tracing::field::Empty,
        );
        let result = call.instrument(span.clone()).await;
        if let Err(err) = &result {
            span.record("error.type", err.kind());
            span.in_scope(|| tracing::debug!(error = %err, "call failed"));
        }
        result
    }
}
