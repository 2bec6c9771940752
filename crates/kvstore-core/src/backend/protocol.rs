//! The backend trait: the protocol steps of one server, and nothing else.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{CheckedTxn, HeldLease, Lease, Precondition, Tasks};
use crate::{
    Capabilities, Error, EventStream, KvPair, LockOptions, Result, WatchStream, WatchTreeStream,
};

/// The expiry a write asks for: the key is removed `ttl` after the write unless renewed, and
/// with `keep_alive` the store renews it (a registration) for as long as it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// How long the key lives without a renewal. Checked against [`MAX_TTL`](crate::MAX_TTL)
    /// before the backend sees it.
    pub ttl: Duration,
    /// The store renews the key; [`Written::lease`] must then be the lease it renews.
    pub keep_alive: bool,
}

/// What [`Backend::write`] is asked to store: `value` at the normalized `key` when
/// `precondition` holds, expiring by `expiry` when given. Value size and TTL are checked.
#[derive(Debug, Clone, Copy)]
pub struct WriteRequest<'a> {
    /// The key, normalized.
    pub key: &'a str,
    /// The value, within the backend's size limit.
    pub value: &'a [u8],
    /// What must hold of the key's current state for the write to happen.
    pub precondition: Precondition,
    /// The TTL, and whether the store renews it; `None`: the key never expires.
    pub expiry: Option<Expiry>,
}

/// A `keep_alive` key whose lease was lost, which [`Backend::register_again`] writes again:
/// `value` at the normalized `key`, with a new lease of `ttl`.
#[derive(Debug, Clone, Copy)]
pub struct LostRegistration<'a> {
    /// The key, normalized.
    pub key: &'a str,
    /// The value the registration wrote.
    pub value: &'a Bytes,
    /// The registration's TTL.
    pub ttl: Duration,
}

/// A watch [`Backend::watch`] and [`Backend::watch_tree`] are asked to start.
#[derive(Debug, Clone)]
pub struct WatchRequest<'a> {
    /// The key (normalized), or for `watch_tree` the directory (`""`: the whole keyspace).
    pub key: &'a str,
    /// `false` allows the first read from a follower or replica.
    pub consistent: bool,
    /// Fires when the store closes; the stream then ends.
    pub cancel: CancellationToken,
}

/// What a [`Backend::write`] stored.
#[derive(Debug)]
pub struct Written {
    /// The stored pair, with the `last_index` the server gave it.
    pub pair: KvPair,
    /// The key's lease, which the store renews under the loss rule: required when the write
    /// asked for [`Expiry::keep_alive`] (the store fails the call with `Backend` without it),
    /// ignored otherwise.
    pub lease: Option<Arc<dyn Lease>>,
}

impl Written {
    /// A write without a lease to renew.
    pub fn pair(pair: KvPair) -> Self {
        Written { pair, lease: None }
    }
}

/// A lock the store asks a backend to acquire: the key (normalized) and the checked options
/// (TTL within the backend's minimum and [`MAX_TTL`](crate::MAX_TTL), value within its size
/// limit).
#[derive(Debug, Clone)]
pub struct LockSpec {
    /// The lock's key, normalized.
    pub key: String,
    /// The options, checked.
    pub opts: LockOptions,
}

/// The protocol steps a key/value server needs, which
/// [`BackendStore`](crate::BackendStore) turns into a whole [`Store`](crate::Store).
///
/// A backend knows nothing of spans, key grammar, registrations or the loss rule: the store
/// normalizes every key (`""` is the root directory; a key never ends in `/`) and checks every
/// value, TTL and transaction before a method here runs, stops calling once closed, keeps the
/// `keep_alive` registrations, stamps when each lease-taking request was sent and holds the
/// locks. Every method maps the server's answers to the crate's [`Error`] variants the same way
/// on every backend (`KeyNotFound`, `KeyExists`, `KeyModified`; `NotReachable` or `Timeout`
/// for an unknown outcome; `InvalidConfig` for a refusal no retry fixes).
///
/// # Which to implement: `Backend` or `Store`
///
/// Implement `Backend` and wrap it in [`BackendStore`](crate::BackendStore): the semantics
/// above then hold without code of yours, and the conformance suite checks what remains.
/// Implement [`Store`](crate::Store) directly only for a store that cannot map onto these steps
/// (for example a read-through cache over another `Store`); it then owns all of the above.
///
/// A backend cleans up its connection in [`close`](Self::close), called when the last store
/// over it closes ([`BackendStore::new_handle`](crate::BackendStore::new_handle) shares one),
/// or when it is dropped.
///
/// # Example
///
/// A complete backend over a `Mutex<BTreeMap>` — reads, conditional writes, TTLs,
/// registrations, watches, locks and transactions in about 430 lines, passing the whole
/// conformance suite — is `crates/kvstore/examples/map_backend.rs` in the repository
/// (`cargo run -p kvstore-any --example map_backend`). Its shape:
///
/// ```text
/// #[async_trait]
/// impl Backend for MapBackend {
///     const NAME: &'static str = "map";
///     fn capabilities(&self) -> Capabilities { Capabilities::all() }
///     async fn read(&self, key: &str, consistent: bool) -> Result<Option<KvPair>> { ... }
///     // list, write, delete, delete_tree, txn, register_again, watch, watch_tree, acquire
/// }
/// let store = BackendStore::new(MapBackend::default()); // a whole `Store`
/// ```
#[async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// The backend family's name (`redb` for redb's `memory://` as well): the `backend` field
    /// of the connect span, and what [`name`](Self::name) returns unless overridden.
    const NAME: &'static str;

    /// The backend's name: what [`Store::backend`](crate::Store::backend) returns and errors
    /// carry. [`NAME`](Self::NAME) by default.
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// What the backend supports, and its limits (value size, transaction size, minimum TTL);
    /// the store checks input against them before calling.
    fn capabilities(&self) -> Capabilities;

    /// The shortest lock TTL the server can enforce; a shorter one is refused with
    /// `InvalidConfig` before any I/O. Zero by default.
    fn min_lock_ttl(&self) -> Duration {
        Duration::ZERO
    }

    /// Reads `key`: `None` when absent. `consistent: false` allows a stale read from a
    /// follower or replica.
    async fn read(&self, key: &str, consistent: bool) -> Result<Option<KvPair>>;

    /// Whether `key` exists. By default, a [`read`](Self::read).
    async fn exists(&self, key: &str, consistent: bool) -> Result<bool> {
        Ok(self.read(key, consistent).await?.is_some())
    }

    /// Every key strictly under the directory `dir` (`""`: the whole keyspace), as
    /// `Store::list` describes; `None` when there is neither such a key nor a key `dir`.
    async fn list(&self, dir: &str, consistent: bool) -> Result<Option<Vec<KvPair>>>;

    /// Writes the request's `value` at its `key` when its `precondition` holds, with its
    /// `expiry` when given.
    ///
    /// # Errors
    ///
    /// `KeyExists` (`Precondition::Absent` and the key exists), `KeyNotFound` (an index and no
    /// key), `KeyModified` (an index and another one), and the backend's errors.
    async fn write(&self, request: WriteRequest<'_>) -> Result<Written>;

    /// Deletes `key` when `precondition` holds (`Precondition::None` or an index).
    ///
    /// # Errors
    ///
    /// `KeyNotFound` when there is no key; `KeyModified` when its index differs.
    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()>;

    /// Deletes `dir` and every key under it (`""`: everything); `Ok(false)` when nothing was
    /// there, which the store answers with `KeyNotFound` (a `KeyNotFound` error from the
    /// backend reaches the caller unchanged too).
    async fn delete_tree(&self, dir: &str) -> Result<bool>;

    /// Applies a checked transaction atomically; returns what
    /// [`CheckedTxn::written`] describes. By default: `CallNotSupported`.
    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        let _ = txn;
        Err(Error::CallNotSupported {
            backend: self.name(),
            operation: "txn",
        })
    }

    /// Writes a lost registration again, with a new lease of its `ttl`: unless another client
    /// wrote a different value at its `key` meanwhile (then `Ok(None)`).
    /// [`write_again`](super::write_again) is the usual body.
    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>>;

    /// A watch of the request's `key`, as `Store::watch` describes, which ends when its
    /// `cancel` fires (the store closed). [`watch_stream`](super::watch_stream) drives a
    /// [`WatchSource`](super::WatchSource) to one.
    async fn watch(&self, watch: WatchRequest<'_>) -> Result<WatchStream>;

    /// A watch of the directory the request's `key` names, as `Store::watch_tree` describes.
    async fn watch_tree(&self, watch: WatchRequest<'_>) -> Result<WatchTreeStream>;

    /// Every pair under `dir` and the revision they were read at, in one consistent read, as
    /// `Store::list_at` describes (a missing directory: an empty list). By default:
    /// `CallNotSupported`.
    async fn list_at(&self, dir: &str, consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        let _ = (dir, consistent);
        Err(Error::CallNotSupported {
            backend: self.name(),
            operation: "list_at",
        })
    }

    /// Per-key events under the directory the request's `key` names, from a `Snapshot` or
    /// after `since`, as `Store::watch_events` describes; the stream ends when the request's
    /// `cancel` fires. By default: `CallNotSupported`.
    async fn watch_events(
        &self,
        watch: WatchRequest<'_>,
        since: Option<u64>,
    ) -> Result<EventStream> {
        let _ = (watch, since);
        Err(Error::CallNotSupported {
            backend: self.name(),
            operation: "watch_events",
        })
    }

    /// `Store::increment` on the normalized `key`: the new value, or `None` (the default)
    /// where the backend has no atomic step for it and nothing was written.
    async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        let _ = (key, delta);
        Ok(None)
    }

    /// Called when the last store over this backend closes (after its tasks ended: renewals
    /// stopped, held locks released), to end what the connection keeps on the server at once
    /// (ZooKeeper: the session, and with it the ephemeral znodes). Nothing by default; a
    /// backend dropped without it cleans up in `Drop`.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Called by `Store::new_lock` before it makes a `Locker`: a backend that cannot lock at
    /// all (Redis without keyspace notifications) says why here. Nothing by default.
    async fn prepare_lock(&self) -> Result<()> {
        Ok(())
    }

    /// Acquires `lock`, waiting while another holder has it, and returns the hold: the lease
    /// started with [`HeldLease::start`](super::HeldLease::start) on `tasks` (the store's,
    /// where the renewals run and where what must outlive a cancelled call, such as giving back
    /// a lock taken for a caller that went away, is spawned), from the moment the request that
    /// took it (or the lease it rides on) was sent, and with its fencing token — larger than
    /// every token handed out for the key before. A backend whose waiting needs the lease
    /// renewed starts it before it waits and sets the token once it holds the lock.
    ///
    /// The store ends the wait with `Closed` when it closes.
    ///
    /// Cancel safety: dropping the future must leave no hold behind, or give it back through
    /// `tasks`.
    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease>;
}

/// A [`Backend`] opened from its typed configuration, so that
/// [`BackendStore::open`](crate::BackendStore::open) builds a store from it, and from a URL of
/// the backend's scheme (`etcd://h1:2379,h2:2379`, options in the query string) through the
/// configuration's [`FromStr`].
pub trait Open: Backend + Sized {
    /// The backend's typed configuration, parsed from a URL by its `FromStr` (`InvalidConfig`
    /// for a malformed URL or option, naming neither password nor token).
    type Config: Send + FromStr<Err = Error>;

    /// Connects to (or opens) the server the configuration names.
    /// [`BackendStore::open`](crate::BackendStore::open) runs it in a `debug` span with fields
    /// `backend` and `op = "connect"`.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for configuration no retry fixes; `NotReachable` when the server did
    /// not answer.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel-safe: a dropped call leaves no connection or session behind.
    fn open(config: Self::Config) -> impl Future<Output = Result<Self>> + Send;
}
