//! The machinery the call-wrapping layers share: one [`Store`] and one [`Locker`]
//! implementation that hand every call to an [`Intercept`] (which times, bounds, limits,
//! retries or traces it) and tell it what was written, locked or watched.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    Capabilities, EventStream, KvPair, LockLost, LockOptions, Locker, ReadOptions, Result, Store,
    Txn, TxnOp, WatchOptions, WatchStream, WatchTreeStream, WriteOptions,
};

/// A call a layer sees: the [`Store`] methods and the [`Locker`] methods that reach the
/// server. Its [`name`](Operation::name) is the `db.operation.name` the metrics and tracing
/// layers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Store::put`].
    Put,
    /// [`Store::get`].
    Get,
    /// [`Store::delete`].
    Delete,
    /// [`Store::exists`].
    Exists,
    /// [`Store::list`].
    List,
    /// [`Store::delete_tree`].
    DeleteTree,
    /// [`Store::atomic_put`].
    AtomicPut,
    /// [`Store::atomic_delete`].
    AtomicDelete,
    /// [`Store::watch`] (opening the stream; its items are not calls).
    Watch,
    /// [`Store::watch_tree`] (opening the stream).
    WatchTree,
    /// [`Store::list_at`].
    ListAt,
    /// [`Store::watch_events`] (opening the stream).
    WatchEvents,
    /// [`Store::new_lock`].
    NewLock,
    /// [`Store::txn`].
    Txn,
    /// [`Store::close`].
    Close,
    /// [`Locker::lock`]: waits until the lock is free, by design.
    Lock,
    /// [`Locker::unlock`].
    Unlock,
}

impl Operation {
    /// The method's name: `"put"`, `"get"`, `"delete_tree"`, `"lock"`, …
    pub fn name(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::Exists => "exists",
            Operation::List => "list",
            Operation::DeleteTree => "delete_tree",
            Operation::AtomicPut => "atomic_put",
            Operation::AtomicDelete => "atomic_delete",
            Operation::Watch => "watch",
            Operation::WatchTree => "watch_tree",
            Operation::ListAt => "list_at",
            Operation::WatchEvents => "watch_events",
            Operation::NewLock => "new_lock",
            Operation::Txn => "txn",
            Operation::Close => "close",
            Operation::Lock => "lock",
            Operation::Unlock => "unlock",
        }
    }

    /// Whether the call may wait as long as it takes by design — [`Locker::lock`] until the
    /// lock is free, [`Store::close`] until its own bounded shutdown — so that a timeout or a
    /// concurrency limit must not apply to it.
    pub fn waits_by_design(self) -> bool {
        matches!(self, Operation::Lock | Operation::Close)
    }

    /// Whether sending the call again after a transient error whose outcome is unknown
    /// leaves the same state and answer as one success: reads, watch setups, a plain `put`
    /// (the same value again) and `new_lock` (which takes nothing). Not `delete` or
    /// `delete_tree` (a repeat of one that did happen answers `KeyNotFound`), not
    /// `atomic_put`, `atomic_delete` or `txn` (a repeat of one that did happen fails its own
    /// condition), not `lock`, `unlock` or `close`.
    pub fn is_safe_to_repeat(self) -> bool {
        matches!(
            self,
            Operation::Get
                | Operation::Exists
                | Operation::List
                | Operation::Watch
                | Operation::WatchTree
                | Operation::ListAt
                | Operation::WatchEvents
                | Operation::Put
                | Operation::NewLock
        )
    }
}

/// What a successful call wrote, for layers that track registrations.
// Read only by the metrics layer.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Wrote<'a> {
    /// A `put` or `atomic_put` of `key`; `keep_alive` when it is a registration.
    Put { key: &'a str, keep_alive: bool },
    /// A `delete` or `atomic_delete` of `key`.
    Delete { key: &'a str },
    /// A `delete_tree` of `dir`.
    DeleteTree { dir: &'a str },
    /// A committed transaction that wrote these keys.
    Txn { keys: Vec<&'a str> },
    /// The store was closed.
    Close,
}

/// What a call-wrapping layer does around each call.
pub(crate) trait Intercept: fmt::Debug + Send + Sync + 'static {
    /// Runs one call (`call`, already started) with this layer's concern around it.
    fn around_once<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        call: impl Future<Output = Result<T>> + Send + 'a,
    ) -> impl Future<Output = Result<T>> + Send + 'a;

    /// Runs a call that `make` can start again (for retries); by default once.
    fn around<'a, T: Send + 'a, Fut>(
        &'a self,
        op: Operation,
        mut make: impl FnMut() -> Fut + Send + 'a,
    ) -> impl Future<Output = Result<T>> + Send + 'a
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        self.around_once(op, make())
    }

    /// A successful call wrote something.
    fn wrote(&self, _wrote: Wrote<'_>) {}

    /// A lock was taken; `lost` resolves when the hold ends (lost or released).
    fn held(&self, _lost: &LockLost) {}

    /// A watch stream opened; the returned value is dropped with the stream.
    fn watch_opened(&self) -> Box<dyn Send + Sync> {
        Box::new(())
    }
}

/// A store whose every call goes through `hooks`.
pub(crate) struct Intercepted<I> {
    inner: Arc<dyn Store>,
    hooks: Arc<I>,
}

impl<I: Intercept> Intercepted<I> {
    pub(crate) fn wrap(inner: Arc<dyn Store>, hooks: I) -> Arc<dyn Store> {
        Arc::new(Intercepted {
            inner,
            hooks: Arc::new(hooks),
        })
    }
}

impl<I: fmt::Debug> fmt::Debug for Intercepted<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("layer", &self.hooks)
            .field("inner", &self.inner)
            .finish()
    }
}

fn keep_alive(opts: Option<&WriteOptions>) -> bool {
    opts.is_some_and(|o| o.keep_alive)
}

#[async_trait]
impl<I: Intercept> Store for Intercepted<I> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        let pair = (self.hooks)
            .around(Operation::Put, || self.inner.put(key, value, opts))
            .await?;
        let keep_alive = keep_alive(opts);
        self.hooks.wrote(Wrote::Put {
            key: &pair.key,
            keep_alive,
        });
        Ok(pair)
    }

    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        (self.hooks)
            .around(Operation::Get, || self.inner.get(key, opts))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        (self.hooks)
            .around(Operation::Delete, || self.inner.delete(key))
            .await?;
        self.hooks.wrote(Wrote::Delete { key });
        Ok(())
    }

    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        (self.hooks)
            .around(Operation::Exists, || self.inner.exists(key, opts))
            .await
    }

    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        (self.hooks)
            .around(Operation::List, || self.inner.list(dir, opts))
            .await
    }

    async fn delete_tree(&self, dir: &str) -> Result<()> {
        (self.hooks)
            .around(Operation::DeleteTree, || self.inner.delete_tree(dir))
            .await?;
        self.hooks.wrote(Wrote::DeleteTree { dir });
        Ok(())
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let pair = (self.hooks)
            .around(Operation::AtomicPut, || {
                self.inner.atomic_put(key, value, previous, opts)
            })
            .await?;
        self.hooks.wrote(Wrote::Put {
            key: &pair.key,
            keep_alive: keep_alive(opts),
        });
        Ok(pair)
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        (self.hooks)
            .around(Operation::AtomicDelete, || {
                self.inner.atomic_delete(key, previous)
            })
            .await?;
        self.hooks.wrote(Wrote::Delete { key });
        Ok(())
    }

    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        let stream = (self.hooks)
            .around(Operation::Watch, || self.inner.watch(key, opts))
            .await?;
        Ok(kept_open(stream, self.hooks.watch_opened()))
    }

    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        let stream = (self.hooks)
            .around(Operation::WatchTree, || self.inner.watch_tree(dir, opts))
            .await?;
        Ok(kept_open(stream, self.hooks.watch_opened()))
    }

    async fn list_at(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<(Vec<KvPair>, u64)> {
        (self.hooks)
            .around(Operation::ListAt, || self.inner.list_at(dir, opts))
            .await
    }

    async fn watch_events(&self, dir: &str, opts: Option<&WatchOptions>) -> Result<EventStream> {
        let stream = (self.hooks)
            .around(Operation::WatchEvents, || {
                self.inner.watch_events(dir, opts)
            })
            .await?;
        Ok(kept_open(stream, self.hooks.watch_opened()))
    }

    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        let inner = (self.hooks)
            .around(Operation::NewLock, || self.inner.new_lock(key, opts))
            .await?;
        Ok(Box::new(InterceptedLocker {
            inner,
            hooks: Arc::clone(&self.hooks),
        }))
    }

    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
        let results = (self.hooks)
            .around(Operation::Txn, || self.inner.txn(txn))
            .await?;
        let keys = txn
            .ops
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, .. } | TxnOp::Delete { key } => key.as_str(),
            })
            .collect();
        self.hooks.wrote(Wrote::Txn { keys });
        Ok(results)
    }

    async fn close(&self) -> Result<()> {
        let closed = (self.hooks)
            .around_once(Operation::Close, self.inner.close())
            .await;
        self.hooks.wrote(Wrote::Close);
        closed
    }
}

/// `stream`, holding `guard` until it is dropped.
fn kept_open<T: Send + 'static>(
    stream: futures::stream::BoxStream<'static, T>,
    guard: Box<dyn Send + Sync>,
) -> futures::stream::BoxStream<'static, T> {
    stream
        .map(move |item| {
            let _open = &guard;
            item
        })
        .boxed()
}

/// A lock of an [`Intercepted`] store: `lock` and `unlock` go through the same hooks.
struct InterceptedLocker<I> {
    inner: Box<dyn Locker>,
    hooks: Arc<I>,
}

impl<I: fmt::Debug> fmt::Debug for InterceptedLocker<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredLocker")
            .field("layer", &self.hooks)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl<I: Intercept> Locker for InterceptedLocker<I> {
    async fn lock(&mut self) -> Result<LockLost> {
        let lost = (self.hooks)
            .around_once(Operation::Lock, self.inner.lock())
            .await?;
        self.hooks.held(&lost);
        Ok(lost)
    }

    async fn unlock(&mut self) -> Result<()> {
        (self.hooks)
            .around_once(Operation::Unlock, self.inner.unlock())
            .await
    }

    fn fencing_token(&self) -> Option<u64> {
        self.inner.fencing_token()
    }
}
