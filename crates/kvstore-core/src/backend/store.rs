//! [`BackendStore`]: the one [`Store`] over any [`Backend`], and its [`Locker`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::protocol::{
    Backend, Expiry, LockSpec, LostRegistration, Open, WatchRequest, WriteRequest,
};
use super::{
    HeldLease, Lease, Precondition, Registrar, Registrations, Release, Tasks, check_value_size,
    lock_arguments, run_txn, write_ttl,
};
use crate::{
    Capabilities, Error, EventStream, KvPair, LockLost, LockOptions, Locker, ReadOptions, Result,
    Store, Txn, WatchOptions, WatchStream, WatchTreeStream, WriteOptions, normalize_dir,
    normalize_key,
};

/// How long `close` waits for the store's background tasks (lock releases, the last
/// renewals) before it returns; leases left behind run out with their TTL.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The store's own state: what it renews and the tasks it runs. Dropping it cancels them.
struct Session {
    /// Set by the first `close`.
    closed: AtomicBool,
    tasks: Tasks,
    registrations: Arc<Registrations>,
}

impl Session {
    fn new() -> Self {
        let tasks = Tasks::new();
        Session {
            closed: AtomicBool::new(false),
            registrations: Arc::new(Registrations::new(&tasks)),
            tasks,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tasks.cancel_token().cancel();
    }
}

/// A [`Store`] over a [`Backend`]: every backend of this crate family is one
/// (`RedbStore` is `BackendStore<Redb>`, `EtcdStore` is `BackendStore<Etcd>`, …).
///
/// It does, once for every backend: key, value, TTL and transaction checks before any I/O; a
/// `debug` span per call (fields `backend`, `op`, `key`); `Closed` after
/// [`close`](Store::close); the `keep_alive` registrations; the loss rule's send timestamps;
/// the only [`Locker`] (renewal, `LockLost`, release on unlock, close and drop).
///
/// Each store (and each [`new_handle`](Self::new_handle)) has its own registrations, locks
/// and watches, which its `close` or drop ends; the connection to the server is the backend's
/// and lives as long as the last handle.
///
/// # Example
///
/// ```
/// use kvstore_core::backend::Backend;
/// use kvstore_core::{BackendStore, Store};
///
/// async fn configure<B: Backend>(store: &BackendStore<B>) -> kvstore_core::Result<()> {
///     store.put("app/config", b"on", None).await?;
///     assert_eq!(store.get("app/config", None).await?.value, "on");
///     Ok(())
/// }
/// ```
pub struct BackendStore<B: Backend> {
    backend: Arc<B>,
    /// How many open stores share `backend`: the last `close` closes it.
    open_handles: Arc<AtomicUsize>,
    session: Session,
}

impl<B: Backend> fmt::Debug for BackendStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendStore")
            .field("backend", &self.backend)
            .field("closed", &self.session.tasks.is_closed())
            .field("registrations", &self.session.registrations.len())
            .finish()
    }
}

impl<B: Backend> Drop for BackendStore<B> {
    fn drop(&mut self) {
        // A handle dropped open no longer keeps the backend open for the others' last `close`.
        if !self.session.closed.swap(true, Ordering::AcqRel) {
            self.open_handles.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: Open> BackendStore<B> {
    /// Opens the backend from its configuration ([`Open::open`], in a `debug` span with fields
    /// `backend` and `op = "connect"`) and wraps it.
    ///
    /// # Errors
    ///
    /// The backend's: `InvalidConfig` for a configuration no retry fixes, `NotReachable` when
    /// the server does not answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped call leaves no connection behind.
    pub async fn open(config: B::Config) -> Result<Self> {
        let span = tracing::debug_span!("open", backend = B::NAME, op = "connect");
        Ok(Self::new(B::open(config).instrument(span).await?))
    }

    /// Opens the store a URL of the backend's scheme names (parsed by the configuration's
    /// `FromStr`, then [`open`](Self::open)): the one URL opener that `kvstore::open`,
    /// `kvctl`, the benchmark and the tests share.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for a malformed URL; then as [`open`](Self::open).
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::open(url.parse()?).await
    }
}

impl<B: Backend> BackendStore<B> {
    /// A store over `backend`.
    pub fn new(backend: B) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// A store over a backend other stores share: each has its own registrations, locks
    /// and watches.
    pub fn from_arc(backend: Arc<B>) -> Self {
        BackendStore {
            backend,
            open_handles: Arc::new(AtomicUsize::new(1)),
            session: Session::new(),
        }
    }

    /// Another store over the same backend (the same connection, or the same open database
    /// file), with registrations, locks and watches of its own: closing or dropping one handle
    /// does not end the other's.
    pub fn new_handle(&self) -> Self {
        self.open_handles.fetch_add(1, Ordering::AcqRel);
        BackendStore {
            backend: self.backend.clone(),
            open_handles: self.open_handles.clone(),
            session: Session::new(),
        }
    }

    /// The backend, for its own methods.
    pub fn backend_ref(&self) -> &Arc<B> {
        &self.backend
    }

    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn check_open(&self) -> Result<()> {
        if self.session.tasks.is_closed() {
            return Err(Error::Closed {
                backend: self.name(),
            });
        }
        Ok(())
    }

    async fn write(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.check_open()?;
        let key = normalize_key(key)?;
        check_value_size(key, value, self.backend.capabilities().max_value_size)?;
        let keep_alive = opts.is_some_and(|o| o.keep_alive);
        let expiry = write_ttl(self.name(), opts)?.map(|ttl| Expiry { ttl, keep_alive });
        // The loss rule's clock for a registration starts before the write is sent.
        let sent = Instant::now();
        let written = self
            .backend
            .write(WriteRequest {
                key,
                value,
                precondition,
                expiry,
            })
            .await?;
        match (expiry, written.lease) {
            (
                Some(Expiry {
                    ttl,
                    keep_alive: true,
                }),
                Some(lease),
            ) => {
                self.session.registrations.insert(
                    key,
                    Bytes::copy_from_slice(value),
                    ttl,
                    lease,
                    sent,
                    Arc::new(Again(self.backend.clone())),
                );
            }
            (
                Some(Expiry {
                    keep_alive: true, ..
                }),
                None,
            ) => {
                self.session.registrations.remove(key);
                return Err(Error::backend(
                    self.name(),
                    "the backend wrote a keep_alive key without a lease to renew",
                ));
            }
            _ => self.session.registrations.remove(key),
        }
        Ok(written.pair)
    }

    async fn remove(&self, key: &str, precondition: Precondition) -> Result<()> {
        self.check_open()?;
        let key = normalize_key(key)?;
        self.backend.delete(key, precondition).await?;
        self.session.registrations.remove(key);
        Ok(())
    }
}

fn consistent(opts: Option<&ReadOptions>) -> bool {
    opts.is_none_or(|o| o.consistent)
}

/// The registrar of a [`BackendStore`]'s registrations: [`Backend::register_again`], with
/// the send timestamp taken here.
struct Again<B>(Arc<B>);

#[async_trait]
impl<B: Backend> Registrar for Again<B> {
    async fn register_again(
        &self,
        lost: LostRegistration<'_>,
    ) -> Result<Option<(Arc<dyn Lease>, Instant)>> {
        let sent = Instant::now();
        Ok(self
            .0
            .register_again(lost)
            .await?
            .map(|lease| (lease, sent)))
    }
}

#[async_trait]
impl<B: Backend> Store for BackendStore<B> {
    fn backend(&self) -> &'static str {
        self.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "get", key = %key))]
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.check_open()?;
        let key = normalize_key(key)?;
        self.backend
            .read(key, consistent(opts))
            .await?
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key, Precondition::None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "exists", key = %key))]
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        self.check_open()?;
        let key = normalize_key(key)?;
        self.backend.exists(key, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "list", key = %dir))]
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.check_open()?;
        let dir = normalize_dir(dir)?;
        self.backend
            .list(dir, consistent(opts))
            .await?
            .ok_or_else(|| Error::not_found(dir))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        self.check_open()?;
        let dir = normalize_dir(dir)?;
        if !self.backend.delete_tree(dir).await? {
            return Err(Error::not_found(dir));
        }
        self.session.registrations.remove_tree(dir);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "atomic_put", key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.write(key, value, Precondition::of(previous), opts)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.remove(key, Precondition::Index(previous.last_index))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "watch", key = %key))]
    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.check_open()?;
        let key = normalize_key(key)?;
        let cancel = self.session.tasks.cancel_token().clone();
        let consistent = consistent(opts);
        (self.backend)
            .watch(WatchRequest {
                key,
                consistent,
                cancel,
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.check_open()?;
        let dir = normalize_dir(dir)?;
        let cancel = self.session.tasks.cancel_token().clone();
        let (key, consistent) = (dir, consistent(opts));
        (self.backend)
            .watch_tree(WatchRequest {
                key,
                consistent,
                cancel,
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "list_at", key = %dir))]
    async fn list_at(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<(Vec<KvPair>, u64)> {
        self.check_open()?;
        let dir = normalize_dir(dir)?;
        self.backend.list_at(dir, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "watch_events", key = %dir))]
    async fn watch_events(&self, dir: &str, opts: Option<&WatchOptions>) -> Result<EventStream> {
        self.check_open()?;
        let key = normalize_dir(dir)?;
        let cancel = self.session.tasks.cancel_token().clone();
        let since = opts.and_then(|o| o.since);
        (self.backend)
            .watch_events(
                WatchRequest {
                    key,
                    consistent: true,
                    cancel,
                },
                since,
            )
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "increment", key = %key))]
    async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        self.check_open()?;
        let key = normalize_key(key)?;
        self.backend.increment(key, delta).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.check_open()?;
        let (key, opts) = lock_arguments(
            self.name(),
            key,
            opts,
            self.backend.min_lock_ttl(),
            self.backend.capabilities().max_value_size,
        )?;
        self.backend.prepare_lock().await?;
        Ok(Box::new(BackendLocker {
            backend: self.backend.clone(),
            tasks: self.session.tasks.clone(),
            registrations: self.session.registrations.clone(),
            spec: LockSpec { key, opts },
            held: None,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "txn", ops = txn.ops.len()))]
    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
        self.check_open()?;
        let caps = self.backend.capabilities();
        let registrations = &self.session.registrations;
        run_txn(
            txn,
            caps.max_txn_ops,
            caps.max_value_size,
            registrations,
            |checked| self.backend.txn(checked),
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops registrations (their keys expire with their TTL), ends watches, and releases
        // held locks; waits for the releases.
        let first = !self.session.closed.swap(true, Ordering::AcqRel);
        self.session.tasks.close(CLOSE_TIMEOUT).await;
        if first && self.open_handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            return self.backend.close().await;
        }
        Ok(())
    }
}

/// The [`Locker`] of every [`BackendStore`]: [`Backend::acquire`] takes the lock and returns
/// the [`HeldLease`] that holds it under the loss rule.
struct BackendLocker<B> {
    backend: Arc<B>,
    tasks: Tasks,
    registrations: Arc<Registrations>,
    spec: LockSpec,
    held: Option<HeldLease>,
}

impl<B: Backend> fmt::Debug for BackendLocker<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.backend.name())
            .field("key", &self.spec.key)
            .field("ttl", &self.spec.opts.ttl)
            .field("fencing_token", &self.fencing_token())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: Backend> Locker for BackendLocker<B> {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend.name(), op = "lock", key = %self.spec.key))]
    async fn lock(&mut self) -> Result<LockLost> {
        if let Some(held) = &self.held
            && held.token().is_some()
        {
            return Ok(held.lost());
        }
        // A hold that was lost is over; its lease was given back when it was lost.
        self.held = None;
        let closed = || Error::Closed {
            backend: self.backend.name(),
        };
        if self.tasks.is_closed() {
            return Err(closed());
        }
        let held = tokio::select! {
            () = self.tasks.cancel_token().cancelled() => return Err(closed()),
            held = self.backend.acquire(&self.spec, &self.tasks) => held?,
        };
        if self.spec.opts.value.is_some() {
            // The lock wrote its value without keep_alive, which ends a registration.
            self.registrations.remove(&self.spec.key);
        }
        let lost = held.lost();
        self.held = Some(held);
        Ok(lost)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend.name(), op = "unlock", key = %self.spec.key))]
    async fn unlock(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        held.release(Release::Unlock).await?;
        if self.spec.opts.delete_on_unlock {
            // The unlock deleted the lock's value, which ends a registration of its key.
            self.registrations.remove(&self.spec.key);
        }
        Ok(())
    }

    fn fencing_token(&self) -> Option<u64> {
        self.held.as_ref().and_then(HeldLease::token)
    }
}
