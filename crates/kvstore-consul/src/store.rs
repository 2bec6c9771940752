//! The [`Store`] implementation over Consul's KV, transaction and session endpoints.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, WatchStream,
    WatchTreeStream, WriteOptions, check_value_size, lock_arguments, normalize_dir, normalize_key,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::BACKEND;
use crate::api::{Api, Consistency, Entry, Txn, op, op_index, op_lock, op_value};
use crate::config::ConsulConfig;
use crate::lock::ConsulLocker;
use crate::watch::{watch_key, watch_tree};

/// State shared by the store, its watches and its locks.
pub(crate) struct Inner {
    pub(crate) api: Api,
    /// `""` or `"<prefix>/"`.
    prefix: String,
    pub(crate) cancel: CancellationToken,
    /// Session id → renewal task, for keys written with `keep_alive`.
    keep_alives: Mutex<HashMap<String, AbortOnDropHandle<()>>>,
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }

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

    /// Key of the hidden entry that a lock's holder acquires: the lock's key with a trailing
    /// `/` (a Consul "folder" key). No normalized key ends with `/`, so `list` and
    /// `watch_tree` never show it. (A control or private-use character would be the obvious
    /// marker, but Consul's HTTP server refuses non-printable characters in URLs, and watching
    /// the key needs a blocking `GET` on its URL.)
    pub(crate) fn lock_key(&self, key: &str) -> String {
        format!("{}{key}/", self.prefix)
    }

    /// The pair of an entry, or `None` for bookkeeping, folders (`a/`) and foreign keys.
    pub(crate) fn pair(&self, entry: &Entry) -> Result<Option<KvPair>> {
        let Some(key) = entry.key.strip_prefix(self.prefix.as_str()) else {
            return Ok(None);
        };
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
        let mut pairs = Vec::with_capacity(entries.len());
        for entry in &entries {
            if let Some(pair) = self.pair(entry)? {
                pairs.push(pair);
            }
        }
        pairs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((pairs, index))
    }
}

impl Inner {
    /// The descendants of `dir`, and whether `dir` exists: it has descendants or is a key
    /// itself (read only when it has no descendants, so usually one request).
    async fn read_dir(&self, dir: &str, consistency: Consistency) -> Result<(Vec<KvPair>, bool)> {
        let (pairs, _) = self.read_tree(dir, consistency, None).await?;
        let exists = !pairs.is_empty()
            || (!dir.is_empty() && self.read_key(dir, consistency, None).await?.0.is_some());
        Ok((pairs, exists))
    }
}

/// Renews a session at a third of its TTL until cancelled or the session is gone.
pub(crate) async fn renew_session(
    inner: Arc<Inner>,
    session: String,
    ttl: Duration,
    cancel: CancellationToken,
) -> Result<()> {
    let period = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
        match inner.api.renew_session(&session).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("session {session} is gone"),
                ));
            }
            // One failed renewal is not fatal: Consul keeps a session for TTL..2×TTL.
            Err(err) if err.is_transient() => {
                tracing::debug!(backend = BACKEND, error = %err, "session renewal failed; retrying");
            }
            Err(err) => return Err(err),
        }
    }
}

/// A kvstore [`Store`] on a Consul agent's HTTP API (tested against Consul 1.21).
///
/// See the crate docs for the key layout and the mapping of each call.
///
/// # Examples
///
/// ```no_run
/// use kvstore_consul::{ConsulConfig, ConsulStore};
/// use kvstore_core::Store;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = ConsulStore::connect(ConsulConfig::new("127.0.0.1:8500")?).await?;
/// store.put("app/config", b"v1", None).await?;
/// # Ok(())
/// # }
/// ```
pub struct ConsulStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulStore")
            .field("config", &self.inner.api.config)
            .field("closed", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for ConsulStore {
    fn drop(&mut self) {
        // Ends keep-alives, lock renewals and watches.
        self.inner.cancel.cancel();
    }
}

fn consistency(opts: Option<&ReadOptions>) -> Consistency {
    if opts.is_none_or(|o| o.consistent) {
        Consistency::Consistent
    } else {
        Consistency::Stale
    }
}

/// The entry written for `consul_key` in a committed transaction.
fn written(results: &[Entry], consul_key: &str) -> Result<u64> {
    results
        .iter()
        .filter(|e| e.key == consul_key)
        .map(|e| e.modify_index)
        .max()
        .ok_or_else(|| Error::backend(BACKEND, "the transaction returned no entry"))
}

/// What an atomic write compares.
#[derive(Clone, Copy)]
pub(crate) enum Condition {
    None,
    Absent,
    Index(u64),
}

impl ConsulStore {
    /// Checks that the agent answers and its cluster has a leader.
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when the agent does not answer within `connect_timeout` or has
    /// no leader; [`Error::InvalidConfig`] when the HTTP client cannot be built.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn connect(config: ConsulConfig) -> Result<Self> {
        let prefix = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let api = Api::new(config)?;
        api.leader().await.map_err(|e| match e {
            Error::Timeout => Error::not_reachable(BACKEND, "the agent did not answer in time"),
            other => other,
        })?;
        Ok(ConsulStore {
            inner: Arc::new(Inner {
                api,
                prefix,
                cancel: CancellationToken::new(),
                keep_alives: Mutex::default(),
            }),
        })
    }
}

impl Inner {
    /// One transaction per write (two requests with a TTL: the session, then the write).
    /// Callers check that the store is open (a lock writes its value through here too).
    pub(crate) async fn write(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        condition: Condition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let inner = self;
        let key = normalize_key(key)?;
        check_value_size(key, value, inner.api.config.max_value_size)?;
        let consul_key = inner.consul_key(key);
        let ttl = opts.and_then(|o| o.ttl);
        let keep_alive = opts.is_some_and(|o| o.keep_alive);
        let session = match ttl {
            // Source: Consul docs, "Sessions" — a session with Behavior=delete deletes the
            // keys it holds when it is invalidated (TTL passed without renewal).
            Some(ttl) => Some(
                inner
                    .api
                    .create_session(ttl, "delete", "kvstore ttl")
                    .await?,
            ),
            None => None,
        };
        let mut ops: Vec<Value> = Vec::with_capacity(4);
        match condition {
            Condition::None => {}
            Condition::Absent => ops.push(op("check-not-exists", &consul_key)),
            Condition::Index(index) => {
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
                    (Txn::Failed { op: 0, .. }, Condition::Absent) => {
                        Error::KeyExists { key: key.into() }
                    }
                    (Txn::Failed { op: 0, .. }, Condition::Index(_)) => Error::not_found(key),
                    (Txn::Failed { op: 1, .. }, Condition::Index(_)) => {
                        Error::KeyModified { key: key.into() }
                    }
                    (Txn::Failed { what, .. }, _) => Error::backend(BACKEND, what),
                    (Txn::Done(_), _) => unreachable!("handled above"),
                });
            }
        };
        let index = written(&results, &consul_key)?;
        if let (Some(session), Some(ttl), true) = (session, ttl, keep_alive) {
            let task = tokio::spawn({
                let (inner, cancel, session) =
                    (inner.clone(), inner.cancel.clone(), session.clone());
                async move {
                    if let Err(err) = renew_session(inner, session, ttl, cancel).await {
                        tracing::warn!(backend = BACKEND, error = %err, "keep-alive stopped");
                    }
                }
            });
            inner
                .keep_alives
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(session, AbortOnDropHandle::new(task));
        }
        Ok(KvPair::new(key, value.to_vec(), index))
    }

    /// `delete` and `atomic_delete`: one transaction whose first operation fails for a
    /// missing key. Callers check that the store is open.
    pub(crate) async fn remove(&self, key: &str, expected: Option<u64>) -> Result<()> {
        let inner = self;
        let key = normalize_key(key)?;
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
            Txn::Failed { what, .. } => Err(Error::backend(BACKEND, what)),
        }
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.inner.api.config.max_value_size)
            .with_min_ttl(self.inner.api.min_session_ttl())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        self.inner.write(key, value, Condition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "get", key = %key))]
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner
            .read_key(key, consistency(opts), None)
            .await?
            .0
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.check_open()?;
        self.inner.remove(key, None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "exists", key = %key))]
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        Ok(self
            .inner
            .read_key(key, consistency(opts), None)
            .await?
            .0
            .is_some())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "list", key = %dir))]
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        match self.inner.read_dir(dir, consistency(opts)).await? {
            (pairs, true) => Ok(pairs),
            // The whole keyspace always exists, even empty.
            (pairs, false) if dir.is_empty() => Ok(pairs),
            (_, false) => Err(Error::not_found(dir)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let dir = normalize_dir(dir)?;
        if !inner.read_dir(dir, Consistency::Consistent).await?.1 {
            return Err(Error::not_found(dir));
        }
        let mut ops = vec![op("delete-tree", &inner.tree_prefix(dir))];
        if !dir.is_empty() {
            ops.push(op("delete", &inner.consul_key(dir)));
        }
        match inner.api.txn(ops).await? {
            Txn::Done(_) => Ok(()),
            Txn::Failed { what, .. } => Err(Error::backend(BACKEND, what)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_put", key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let condition = previous.map_or(Condition::Absent, |p| Condition::Index(p.last_index));
        self.inner.check_open()?;
        self.inner.write(key, value, condition, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.check_open()?;
        self.inner.remove(key, Some(previous.last_index)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch", key = %key))]
    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.inner.check_open()?;
        let key = normalize_key(key)?.to_owned();
        watch_key(self.inner.clone(), key, consistency(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        watch_tree(self.inner.clone(), dir, consistency(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.inner.check_open()?;
        let (key, opts) = lock_arguments(
            BACKEND,
            key,
            opts,
            Duration::ZERO,
            self.inner.api.config.max_value_size,
        )?;
        Ok(Box::new(ConsulLocker::new(self.inner.clone(), key, opts)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops keep-alives (their keys expire with their sessions), ends watches, and makes
        // held locks release.
        self.inner.cancel.cancel();
        self.inner
            .keep_alives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}
