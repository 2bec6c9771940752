//! Multi-key transactions: [`Txn`], its [`Condition`]s and [`TxnOp`]s.

use bytes::Bytes;

/// An all-or-nothing write over several keys, with conditions: every condition holds and every
/// operation is applied, or nothing is applied. Run it with `Store::txn`.
///
/// Keys are normalized and validated by `Store::txn`, before any I/O. The portable subset is
/// puts and deletes of plain keys (no TTL, no range delete, no read inside the transaction);
/// `Capabilities::max_txn_ops` bounds the number of conditions plus operations (at least 64 on
/// every built-in backend).
///
/// # Examples
///
/// ```
/// use kvstore_core::{Condition, Txn, TxnOp};
///
/// // Move a registration from one path to another, only if the old one is unchanged.
/// let txn = Txn::new()
///     .when_index("services/web/old", 42)
///     .when_missing("services/web/new")
///     .delete("services/web/old")
///     .put("services/web/new", "10.0.0.1:80");
/// assert_eq!(txn.conditions.len(), 2);
/// assert_eq!(txn.ops[1], TxnOp::Put { key: "services/web/new".into(), value: "10.0.0.1:80".into() });
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Txn {
    /// The conditions, checked in order; the first that fails names the error.
    pub conditions: Vec<Condition>,
    /// The operations, applied in order when every condition holds.
    pub ops: Vec<TxnOp>,
}

/// A condition of a [`Txn`], checked by the server in the same atomic step as the writes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// The key is present with this `last_index` (else `KeyModified`, or `KeyNotFound` when it
    /// is absent).
    IndexIs {
        /// The key.
        key: String,
        /// Its expected `last_index`.
        last_index: u64,
    },
    /// The key is present (else `KeyNotFound`).
    Exists {
        /// The key.
        key: String,
    },
    /// The key is absent (else `KeyExists`).
    Missing {
        /// The key.
        key: String,
    },
    /// The lock on `lock_key` is still held with this fencing token (else `LockNotHeld`).
    Held {
        /// The lock's key (as given to `Store::new_lock`).
        lock_key: String,
        /// The fencing token of the hold (`Locker::fencing_token`).
        fencing_token: u64,
    },
}

/// An operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxnOp {
    /// Writes `value` under `key` (without TTL; it ends a `keep_alive` registration of the key).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Deletes `key`; a missing key is not an error inside a transaction.
    Delete {
        /// The key.
        key: String,
    },
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds the condition that `key` is present with this `last_index`.
    pub fn when_index(mut self, key: &str, last_index: u64) -> Self {
        self.conditions.push(Condition::IndexIs {
            key: key.to_owned(),
            last_index,
        });
        self
    }

    /// Adds the condition that `key` is present.
    pub fn when_exists(mut self, key: &str) -> Self {
        self.conditions.push(Condition::Exists {
            key: key.to_owned(),
        });
        self
    }

    /// Adds the condition that `key` is absent.
    pub fn when_missing(mut self, key: &str) -> Self {
        self.conditions.push(Condition::Missing {
            key: key.to_owned(),
        });
        self
    }

    /// Adds the condition that the lock on `lock_key` is still held with `fencing_token`, so a
    /// holder that has lost its lock (paused, cut off) cannot overwrite its successor's work.
    pub fn when_held(mut self, lock_key: &str, fencing_token: u64) -> Self {
        self.conditions.push(Condition::Held {
            lock_key: lock_key.to_owned(),
            fencing_token,
        });
        self
    }

    /// Adds a put of `value` under `key`.
    pub fn put(mut self, key: &str, value: impl Into<Bytes>) -> Self {
        self.ops.push(TxnOp::Put {
            key: key.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete of `key` (a missing key is not an error inside a transaction).
    pub fn delete(mut self, key: &str) -> Self {
        self.ops.push(TxnOp::Delete {
            key: key.to_owned(),
        });
        self
    }
}

impl Condition {
    /// The key this condition reads (the lock's key for `Held`).
    pub fn key(&self) -> &str {
        match self {
            Condition::IndexIs { key, .. }
            | Condition::Exists { key }
            | Condition::Missing { key } => key,
            Condition::Held { lock_key, .. } => lock_key,
        }
    }
}

impl TxnOp {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}
