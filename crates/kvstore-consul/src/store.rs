//! The [`Store`] implementation over Consul's KV, transaction and session endpoints.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{Precondition, Registrations, Tasks, lock_arguments};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, Txn as KvTxn,
    WatchStream, WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};

use crate::BACKEND;
use crate::api::{Api, Consistency, Txn, op};
use crate::client::{CLOSE_TIMEOUT, Inner, TXN_OPS};
use crate::config::ConsulConfig;
use crate::lock::ConsulLocker;
use crate::watch::{watch_key, watch_tree};

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
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "connect"))]
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
        let tasks = Tasks::new();
        Ok(ConsulStore {
            inner: Arc::new(Inner {
                api,
                prefix,
                cancel: tasks.cancel_token().clone(),
                registrations: Registrations::new(&tasks),
                hub: crate::hub::Hub::default(),
                tasks,
            }),
        })
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
            .with_max_value_size(self.inner.api.config.max_value_size)
            .with_min_ttl(self.inner.api.min_session_ttl())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "txn", ops = txn.ops.len()))]
    async fn txn(&self, txn: &KvTxn) -> Result<Vec<Option<KvPair>>> {
        self.inner.check_open()?;
        let inner = self.inner.clone();
        kvstore_core::backend::run_txn(
            txn,
            crate::txn::MAX_TXN_OPS,
            self.inner.api.config.max_value_size,
            &self.inner.registrations,
            |txn| async move { inner.txn(&txn).await },
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        self.inner.write(key, value, Precondition::None, opts).await
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
        let (pairs, exists) = inner.read_dir(dir, Consistency::Consistent).await?;
        if !exists {
            return Err(Error::not_found(dir));
        }
        let ops = if dir.is_empty() {
            // Everything but the held locks, which live in a top-level directory of their own:
            // each top-level name goes, as a key and as a tree.
            let names: BTreeSet<&str> = pairs
                .iter()
                .map(|p| p.key.split('/').next().unwrap_or(&p.key))
                .collect();
            names
                .into_iter()
                .flat_map(|name| {
                    [
                        op("delete", &inner.consul_key(name)),
                        op("delete-tree", &inner.tree_prefix(name)),
                    ]
                })
                .collect()
        } else {
            vec![
                op("delete-tree", &inner.tree_prefix(dir)),
                op("delete", &inner.consul_key(dir)),
            ]
        };
        for chunk in ops.chunks(TXN_OPS) {
            if let Txn::Failed { what, .. } = inner.api.txn(chunk.to_vec()).await? {
                return Err(crate::error::from_txn_failure(what));
            }
        }
        inner.registrations.remove_tree(dir);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_put", key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let condition =
            previous.map_or(Precondition::Absent, |p| Precondition::Index(p.last_index));
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
        // Stops registrations (their keys expire with their sessions), ends watches, and
        // destroys held locks' sessions; waits for the destroys to be sent.
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        Ok(())
    }
}
