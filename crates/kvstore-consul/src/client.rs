//! The agent connection and the primitive reads, writes and lease steps every part of the
//! Consul backend shares: the key layout, reads of keys and trees, the one-transaction writes,
//! and the session lease and registrar for the lease engine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{Expiry, Lease, Precondition, Release, Renewal, Tasks};
use kvstore_core::{Error, KvPair, Result, normalize_key};
use serde_json::Value;

use crate::BACKEND;
use crate::api::{Api, Consistency, Entry, Txn, op, op_check_session, op_index, op_lock, op_value};

/// State shared by the store, its watches and its locks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) api: Api,
    /// `""` or `"<prefix>/"`.
    pub(crate) prefix: String,
    /// Background work (session renewals, releases, the watches' blocking queries); `close`
    /// waits for it.
    pub(crate) tasks: Tasks,
    /// The shared blocking queries of its watches.
    pub(crate) hub: crate::hub::Hub,
}

impl crate::hub::Owner for Inner {
    fn api(&self) -> &Api {
        &self.api
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn tasks(&self) -> &Tasks {
        &self.tasks
    }
}

/// The reserved top-level name under the store's prefix that holds the keys lock holders
/// acquire: outside every directory a user can delete, and hidden from `list`/`watch_tree`.
pub(crate) const LOCKS: &str = ".kvstore-locks";

/// Operations per `/v1/txn` request (Consul allows 64 before 1.14, 128 since).
pub(crate) const TXN_OPS: usize = 64;

/// A Consul session for the lease engine: renewed with `PUT /v1/session/renew` (404: gone);
/// released by destroying it, which with `Behavior=delete` deletes the key it holds.
/// Source: Consul docs, "Session - HTTP API" (renew, destroy) and "Sessions" (behaviors).
pub(crate) struct SessionLease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: String,
    /// The user key deleted before the destroy on `unlock` (a lock with `delete_on_unlock`).
    pub(crate) delete_on_unlock: Option<String>,
}

impl fmt::Debug for SessionLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionLease({})", self.id)
    }
}

impl SessionLease {
    pub(crate) fn new(inner: Arc<Inner>, id: String, delete_on_unlock: Option<String>) -> Self {
        SessionLease {
            inner,
            id,
            delete_on_unlock,
        }
    }
}

#[async_trait]
impl Lease for SessionLease {
    async fn renew(&self) -> Result<Renewal> {
        Ok(Renewal::held(self.inner.api.renew_session(&self.id).await?))
    }

    async fn release(&self, why: Release) -> Result<()> {
        // The value goes first, but a failed delete never keeps the lock held.
        let deleted = match (&self.delete_on_unlock, why) {
            // Only while this session still holds the lock key: once it has been invalidated
            // another client may hold the lock and have written the key.
            (Some(key), Release::Unlock) => {
                let lock_key = self.inner.lock_key(key);
                let ops = vec![
                    op_check_session(&lock_key, &self.id),
                    op("delete", &self.inner.consul_key(key)),
                ];
                match self.inner.api.txn(ops).await? {
                    Txn::Done(_) => Ok(()),
                    // Not held any more: nothing of ours to delete.
                    Txn::Failed { op: 0, .. } => Ok(()),
                    Txn::Failed { what, .. } => Err(crate::error::from_txn_failure(what)),
                }
            }
            _ => Ok(()),
        };
        self.inner.api.destroy_session(&self.id).await?;
        deleted
    }
}

/// The session TTL of a `keep_alive` registration of `ttl`: half of it in whole seconds (at
/// least 1 s), so that Consul, which invalidates a session between its TTL and twice its TTL
/// after the last renewal (source: Consul docs, "Sessions", TTL), removes a dead owner's key
/// within `ttl`; never below the server's `session_ttl_min` (then the bound is twice that).
pub(crate) fn registration_session_ttl(ttl: Duration, min: Duration) -> Duration {
    Duration::from_secs((ttl.as_secs() / 2).max(1)).max(min)
}

impl Inner {
    pub(crate) fn consul_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The Consul prefix holding every descendant of `dir`.
    pub(crate) fn tree_prefix(&self, dir: &str) -> String {
        if dir.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{dir}/", self.prefix)
        }
    }

    /// Key of the hidden entry that a lock's holder acquires: `<prefix>.kvstore-locks/<key>`,
    /// outside the lock key's own directory so that deleting the key or a directory above it
    /// (`delete_tree`) never ends the hold. (A control or private-use character would be the
    /// obvious marker, but Consul's HTTP server refuses non-printable characters in URLs.)
    pub(crate) fn lock_key(&self, key: &str) -> String {
        format!("{}{LOCKS}/{key}", self.prefix)
    }

    /// The pair of an entry, or `None` for lock bookkeeping, folders (`a/`) and foreign keys.
    pub(crate) fn pair(&self, entry: &Entry) -> Result<Option<KvPair>> {
        let Some(key) = entry.key.strip_prefix(self.prefix.as_str()) else {
            return Ok(None);
        };
        if key
            .strip_prefix(LOCKS)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Ok(None);
        }
        match normalize_key(key) {
            Ok(normalized) if normalized == key => {
                Ok(Some(KvPair::new(key, entry.value()?, entry.modify_index)))
            }
            _ => Ok(None),
        }
    }

    pub(crate) async fn read_key(
        &self,
        key: &str,
        consistency: Consistency,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvPair>, u64)> {
        let consul_key = self.consul_key(key);
        let (entries, index) = self.api.get(&consul_key, false, consistency, block).await?;
        let pair = match entries.iter().find(|e| e.key == consul_key) {
            Some(entry) => self.pair(entry)?,
            None => None,
        };
        Ok((pair, index))
    }

    /// The descendants of `dir`, sorted; with `block`, as a blocking query. Also returns the
    /// `X-Consul-Index` of the read.
    pub(crate) async fn read_tree(
        &self,
        dir: &str,
        consistency: Consistency,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvPair>, u64)> {
        let (entries, index) = self
            .api
            .get(&self.tree_prefix(dir), true, consistency, block)
            .await?;
        Ok((self.tree_pairs(entries.iter())?, index))
    }

    /// The pairs of a directory's entries, sorted (bookkeeping and foreign keys left out).
    pub(crate) fn tree_pairs<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> Result<Vec<KvPair>> {
        let mut pairs = Vec::new();
        for entry in entries {
            if let Some(pair) = self.pair(entry)? {
                pairs.push(pair);
            }
        }
        pairs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(pairs)
    }
}

impl Inner {
    /// The descendants of `dir`, and whether `dir` exists: it has descendants or is a key
    /// itself (read only when it has no descendants, so usually one request).
    pub(crate) async fn read_dir(
        &self,
        dir: &str,
        consistency: Consistency,
    ) -> Result<(Vec<KvPair>, bool)> {
        let (pairs, _) = self.read_tree(dir, consistency, None).await?;
        let exists = !pairs.is_empty()
            || (!dir.is_empty() && self.read_key(dir, consistency, None).await?.0.is_some());
        Ok((pairs, exists))
    }
}

impl Inner {
    /// Writes `value` at `key` under `condition` in one transaction, with `expiry` as a
    /// session that holds the key: returns the pair and that session.
    pub(crate) async fn write_with_session(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        condition: Precondition,
        expiry: Option<Expiry>,
    ) -> Result<(KvPair, Option<String>)> {
        let inner = self;
        let consul_key = inner.consul_key(key);
        let session = match expiry {
            // Source: Consul docs, "Sessions" — a session with Behavior=delete deletes the
            // keys it holds when it is invalidated (TTL passed without renewal).
            // A registration (renewed) asks for half its TTL, so that Consul's worst case —
            // invalidating up to twice the session TTL after the last renewal — still removes
            // a dead owner's key within the TTL. A plain TTL key (never renewed) asks for the
            // whole TTL: it must not go before it.
            Some(Expiry { ttl, keep_alive }) => {
                let session_ttl = if keep_alive {
                    registration_session_ttl(ttl, inner.api.min_session_ttl())
                } else {
                    ttl
                };
                Some(
                    inner
                        .api
                        .create_session(session_ttl, "delete", "kvstore ttl")
                        .await?,
                )
            }
            None => None,
        };
        let mut ops: Vec<Value> = Vec::with_capacity(4);
        match condition {
            Precondition::None => {}
            Precondition::Absent => ops.push(op("check-not-exists", &consul_key)),
            Precondition::Index(index) => {
                ops.push(op("get", &consul_key));
                ops.push(op_index("check-index", &consul_key, index));
            }
        }
        // Deleting first detaches a TTL session of an earlier write: a plain put clears the
        // TTL. The transaction is atomic, so readers never see the key missing.
        ops.push(op("delete", &consul_key));
        ops.push(match &session {
            Some(session) => op_lock(&consul_key, value, session),
            None => op_value("set", &consul_key, value),
        });
        let outcome = inner.api.txn(ops).await;
        let results = match outcome {
            Ok(Txn::Done(results)) => results,
            other => {
                if let Some(session) = &session {
                    let _ = inner.api.destroy_session(session).await;
                }
                return Err(match (other?, condition) {
                    (Txn::Failed { op: 0, .. }, Precondition::Absent) => {
                        Error::KeyExists { key: key.into() }
                    }
                    (Txn::Failed { op: 0, .. }, Precondition::Index(_)) => Error::not_found(key),
                    (Txn::Failed { op: 1, .. }, Precondition::Index(_)) => {
                        Error::KeyModified { key: key.into() }
                    }
                    (Txn::Failed { what, .. }, _) => crate::error::from_txn_failure(what),
                    (Txn::Done(_), _) => unreachable!("handled above"),
                });
            }
        };
        let index = written(&results, &consul_key)?;
        Ok((KvPair::new(key, value.to_vec(), index), session))
    }

    /// `delete` and `atomic_delete`: one transaction whose first operation fails for a
    /// missing key. Callers check that the store is open.
    pub(crate) async fn remove(&self, key: &str, expected: Option<u64>) -> Result<()> {
        let inner = self;
        let consul_key = inner.consul_key(key);
        let ops = vec![
            op("get", &consul_key),
            match expected {
                None => op("delete", &consul_key),
                Some(index) => op_index("delete-cas", &consul_key, index),
            },
        ];
        match inner.api.txn(ops).await? {
            Txn::Done(_) => Ok(()),
            Txn::Failed { op: 0, .. } => Err(Error::not_found(key)),
            Txn::Failed { op: 1, .. } if expected.is_some() => {
                Err(Error::KeyModified { key: key.into() })
            }
            Txn::Failed { what, .. } => Err(crate::error::from_txn_failure(what)),
        }
    }
}

/// The entry written for `consul_key` in a committed transaction.
pub(crate) fn written(results: &[Entry], consul_key: &str) -> Result<u64> {
    results
        .iter()
        .filter(|e| e.key == consul_key)
        .map(|e| e.modify_index)
        .max()
        .ok_or_else(|| Error::backend(BACKEND, "the transaction returned no entry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_session_is_half_its_ttl_in_whole_seconds() {
        let s = Duration::from_secs;
        assert_eq!(registration_session_ttl(s(20), s(1)), s(10));
        assert_eq!(registration_session_ttl(s(3), s(1)), s(1));
        assert_eq!(
            registration_session_ttl(Duration::from_millis(1500), s(1)),
            s(1)
        );
        assert_eq!(registration_session_ttl(s(20), s(10)), s(10));
        assert_eq!(
            registration_session_ttl(s(10), s(10)),
            s(10),
            "never under the minimum"
        );
    }
}
