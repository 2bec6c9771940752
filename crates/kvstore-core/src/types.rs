//! Plain data: pairs, per-call options and backend capabilities.

use std::time::Duration;

use bytes::Bytes;

/// A key, its value and the index of the write that produced it.
///
/// # Examples
///
/// ```
/// use kvstore_core::KvPair;
///
/// let pair = KvPair::new("app/config", "v1", 7);
/// assert_eq!(pair.value_str(), Some("v1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    /// The normalized key (no leading or trailing `/`).
    pub key: String,
    /// The value, byte for byte as written.
    pub value: Bytes,
    /// The backend's index of the last write of this key: non-zero, changed by every write,
    /// monotonic per key. This is what `atomic_put` and `atomic_delete` compare.
    pub last_index: u64,
}

impl KvPair {
    /// Builds a pair.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>, last_index: u64) -> Self {
        KvPair {
            key: key.into(),
            value: value.into(),
            last_index,
        }
    }

    /// The value as UTF-8, or `None` if it is not valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// Options for `put` and `atomic_put`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::WriteOptions;
///
/// let opts = WriteOptions::default().with_ttl(Duration::from_secs(10)).with_keep_alive(true);
/// assert_eq!(opts.ttl, Some(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Time to live. The key never disappears before `ttl` has passed, and disappears within
    /// `ttl` plus a backend-specific slack once no client keeps it alive. `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Keep the key alive (renew its TTL) for as long as the writing store is open. Only
    /// meaningful with `ttl`; typical for service registration.
    pub keep_alive: bool,
}

impl WriteOptions {
    /// Sets the time to live.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets whether the store keeps the key alive while it is open.
    pub fn with_keep_alive(mut self, keep_alive: bool) -> Self {
        self.keep_alive = keep_alive;
        self
    }
}

/// Options for reads (`get`, `exists`, `list`, `watch`, `watch_tree`).
///
/// # Examples
///
/// ```
/// use kvstore_core::ReadOptions;
///
/// assert!(ReadOptions::default().consistent);
/// let stale_ok = ReadOptions::default().with_consistent(false);
/// assert!(!stale_ok.consistent);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Read through the leader / quorum (`true`, the default) or accept a possibly stale local
    /// read (`false`). Backends without the distinction ignore it.
    pub consistent: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { consistent: true }
    }
}

impl ReadOptions {
    /// Sets the consistency mode.
    pub fn with_consistent(mut self, consistent: bool) -> Self {
        self.consistent = consistent;
        self
    }
}

/// The default lock TTL: 20 seconds.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(20);

/// The longest TTL accepted, on every backend: 24 hours, the longest session TTL Consul
/// allows (source: Consul HTTP API docs, "Create Session": `TTL` between 10s and 86400s). A
/// longer `WriteOptions::ttl`, `LockOptions::ttl` or `ElectionOptions::ttl` fails with
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming this maximum, before anything
/// is written.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Options for `new_lock`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::LockOptions;
///
/// let opts = LockOptions::default().with_value("node-1").with_ttl(Duration::from_secs(5));
/// assert_eq!(opts.ttl, Duration::from_secs(5));
/// assert_eq!(LockOptions::default().ttl, Duration::from_secs(20));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LockOptions {
    /// Value stored under the lock's key while it is held (readable with `get`), written as
    /// the lock is taken with a `last_index` equal to the hold's fencing token. `None`: no
    /// value is written.
    pub value: Option<bytes::Bytes>,
    /// How long the lock survives its holder going silent. The holder renews it well inside
    /// this; default [`DEFAULT_LOCK_TTL`] (20 s).
    pub ttl: Duration,
    /// Make the value live only as long as the hold: the key is deleted on `unlock`, when the
    /// `Locker` is dropped or the store closed, and — by the server, within the TTL plus the
    /// backend's slack — when the hold is lost (the holder died, paused or lost its server).
    /// Leader election relies on this. `false` (the default): the value stays in place after
    /// the hold ends. A write by anyone else to the key detaches it from the hold.
    pub delete_on_unlock: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            value: None,
            ttl: DEFAULT_LOCK_TTL,
            delete_on_unlock: false,
        }
    }
}

impl LockOptions {
    /// Sets the value written under the key while the lock is held.
    pub fn with_value(mut self, value: impl Into<bytes::Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the lock TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets whether the value lives only as long as the hold (see [`delete_on_unlock`](Self::delete_on_unlock)).
    pub fn with_delete_on_unlock(mut self, delete_on_unlock: bool) -> Self {
        self.delete_on_unlock = delete_on_unlock;
        self
    }
}

/// What a backend can do. A call a store cannot perform returns
/// [`Error::CallNotSupported`](crate::Error::CallNotSupported); the conformance suite checks
/// exactly that for every capability reported `false`.
///
/// # Examples
///
/// ```
/// use kvstore_core::Capabilities;
///
/// let caps = Capabilities::all().with_max_value_size(512 * 1024);
/// assert!(caps.watch && caps.lock);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `WriteOptions::ttl` is honoured.
    pub ttl: bool,
    /// `WriteOptions::keep_alive` is honoured.
    pub keep_alive: bool,
    /// `watch` works.
    pub watch: bool,
    /// `watch_tree` works.
    pub watch_tree: bool,
    /// `new_lock` works.
    pub lock: bool,
    /// `watch_events` and `list_at` work.
    pub events: bool,
    /// Largest value accepted, in bytes; larger values fail with `ValueTooLarge`.
    pub max_value_size: usize,
    /// Shortest TTL the server accepts for `WriteOptions::ttl` and `LockOptions::ttl`
    /// (`Duration::ZERO`: no minimum known). A shorter TTL fails with `InvalidConfig` naming
    /// this minimum. Consul reports its `session_ttl_min` here once the store has learnt it.
    pub min_ttl: Duration,
    /// Most conditions plus operations in one `Store::txn` (0: no transactions). Every
    /// built-in backend allows at least 64, the portable minimum.
    pub max_txn_ops: usize,
}

impl Capabilities {
    /// Every capability, with a 1 MiB value limit.
    pub const fn all() -> Self {
        Capabilities {
            ttl: true,
            keep_alive: true,
            watch: true,
            watch_tree: true,
            lock: true,
            events: true,
            max_value_size: 1024 * 1024,
            min_ttl: Duration::ZERO,
            max_txn_ops: 64,
        }
    }

    /// No optional capability, with a 1 MiB value limit.
    pub const fn none() -> Self {
        Capabilities {
            ttl: false,
            keep_alive: false,
            watch: false,
            watch_tree: false,
            lock: false,
            events: false,
            max_value_size: 1024 * 1024,
            min_ttl: Duration::ZERO,
            max_txn_ops: 0,
        }
    }

    /// Sets `max_txn_ops` (0: no transactions).
    pub const fn with_max_txn_ops(mut self, ops: usize) -> Self {
        self.max_txn_ops = ops;
        self
    }

    /// Sets `ttl`.
    pub const fn with_ttl(mut self, on: bool) -> Self {
        self.ttl = on;
        self
    }

    /// Sets `keep_alive`.
    pub const fn with_keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }

    /// Sets `watch`.
    pub const fn with_watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// Sets `watch_tree`.
    pub const fn with_watch_tree(mut self, on: bool) -> Self {
        self.watch_tree = on;
        self
    }

    /// Sets `lock`.
    pub const fn with_lock(mut self, on: bool) -> Self {
        self.lock = on;
        self
    }

    /// Sets `events`.
    pub const fn with_events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Sets `max_value_size` (bytes).
    pub const fn with_max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Sets `min_ttl`.
    pub const fn with_min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = min_ttl;
        self
    }
}
