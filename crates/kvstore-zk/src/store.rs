//! The [`Store`] implementation: keys as znodes, hidden parents, TTL nodes and pins.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{Precondition, Registrations, Tasks, lock_arguments};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, WatchStream,
    WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};
use zookeeper_client::{self as zk, Client, CreateMode};

use crate::BACKEND;
use crate::client::{CLOSE_TIMEOUT, Inner};
use crate::config::ZkConfig;
use crate::error::from_zk;
use crate::lock::ZkLocker;
use crate::node::LOCKS;
use crate::session::{connect, create_options, timed};
use crate::watch::{watch_key, watch_tree};

/// A kvstore [`Store`] on a ZooKeeper ensemble (3.6 or later; tested against 3.8).
///
/// See the crate docs for the znode layout and the mapping of each call.
///
/// # Examples
///
/// ```no_run
/// use kvstore_core::Store;
/// use kvstore_zk::{ZkConfig, ZkStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = ZkStore::connect(ZkConfig::new(&["127.0.0.1:2181"])).await?;
/// store.put("app/config", b"v1", None).await?;
/// # Ok(())
/// # }
/// ```
pub struct ZkStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for ZkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkStore")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for ZkStore {
    fn drop(&mut self) {
        // Ends watches and lock sessions; the main session closes with its last handle.
        self.inner.shut();
    }
}

impl ZkStore {
    /// Opens a session on the ensemble.
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when no server answers within `connect_timeout`;
    /// [`Error::InvalidConfig`] for an invalid configuration or refused credentials.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a session opened by a dropped call is closed.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "connect"))]
    pub async fn connect(config: ZkConfig) -> Result<Self> {
        config.validate()?;
        let client = connect(&config, config.session_timeout).await?;
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", config.prefix)
        };
        let ttl_nodes = probe_ttl_nodes(&client, &root, &config).await?;
        let tasks = Tasks::new();
        Ok(ZkStore {
            inner: Arc::new(Inner {
                config,
                root,
                session: RwLock::new(Some(Arc::new(client))),
                reconnecting: tokio::sync::Mutex::new(()),
                registrations: Registrations::new(&tasks),
                cancel: tasks.cancel_token().clone(),
                tasks,
                lock_sessions: tokio::sync::Mutex::default(),
                syncs: crate::sync::SyncBatcher::default(),
                ttl_nodes,
            }),
        })
    }

    /// The session timeout the server granted, which bounds how long the ephemeral pins of
    /// `keep_alive` keys outlive a crashed process.
    ///
    /// # Errors
    ///
    /// `Closed` after [`close`](Store::close).
    pub fn session_timeout(&self) -> Result<Duration> {
        Ok(self.inner.current()?.session_timeout())
    }
}

/// Whether the server creates TTL nodes, learnt with one request that never writes: a TTL
/// create below a parent that does not exist. The server refuses a TTL create with
/// `Unimplemented` before it looks at the parent when extended types are off, and answers
/// `NoNode` when they are on.
/// Source: ZooKeeper Administrator's Guide, "zookeeper.extendedTypesEnabled" (TTL nodes are off
/// by default); `PrepRequestProcessor.validateCreateRequest` checks the mode before the parent.
async fn probe_ttl_nodes(client: &Client, root: &str, config: &ZkConfig) -> Result<bool> {
    // The reserved lock directory never has a `.ttl-probe` child, so nothing is ever created.
    let path = format!("{root}/{LOCKS}/.ttl-probe/probe");
    let options =
        create_options(CreateMode::Persistent, config.acl).with_ttl(Duration::from_secs(1));
    match timed(config.request_timeout, client.create(&path, b"", &options)).await {
        Err(zk::Error::Unimplemented) => {
            tracing::warn!(
                "ZooKeeper TTL nodes are disabled; writes with a TTL fail with CallNotSupported \
                 (start the server with -Dzookeeper.extendedTypesEnabled=true)"
            );
            Ok(false)
        }
        Err(zk::Error::NoNode) => Ok(true),
        Ok(_) => {
            // Someone created the probe's parent: remove what was made; TTL nodes work.
            let _ = client.delete(&path, None).await;
            Ok(true)
        }
        // Not allowed to look (ACL) or another refusal: assume they are on, as before.
        Err(zk::Error::NoAuth | zk::Error::InvalidAcl) => Ok(true),
        Err(err) => Err(from_zk(err)),
    }
}

fn consistent(opts: Option<&ReadOptions>) -> bool {
    opts.is_none_or(|o| o.consistent)
}

#[async_trait]
impl Store for ZkStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
            .with_ttl(self.inner.ttl_nodes)
            .with_keep_alive(self.inner.ttl_nodes)
            .with_max_value_size(self.inner.config.max_value_size)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "txn", ops = txn.ops.len()))]
    async fn txn(&self, txn: &kvstore_core::Txn) -> Result<Vec<Option<KvPair>>> {
        self.inner.check_open()?;
        let inner = self.inner.clone();
        kvstore_core::backend::run_txn(
            txn,
            crate::txn::MAX_TXN_OPS,
            self.inner.config.max_value_size,
            &self.inner.registrations,
            |txn| async move { inner.txn(&txn).await },
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.inner.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "get", key = %key))]
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        let client = self.inner.client().await?;
        self.inner
            .read_key(&client, key, consistent(opts))
            .await?
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete_key(key, None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "exists", key = %key))]
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        let client = self.inner.client().await?;
        Ok(self
            .inner
            .read_key(&client, key, consistent(opts))
            .await?
            .is_some())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "list", key = %dir))]
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        let client = self.inner.client().await?;
        crate::tree::list(&self.inner, &client, dir, consistent(opts))
            .await?
            .ok_or_else(|| Error::not_found(dir))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        let client = self.inner.client().await?;
        let deleted = crate::tree::delete_tree(&self.inner, &client, dir).await?;
        self.inner.registrations.remove_tree(dir);
        if deleted.is_empty() {
            return Err(Error::not_found(dir));
        }
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
        self.inner.write(key, value, condition, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.delete_key(key, Some(previous.last_index)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch", key = %key))]
    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.inner.check_open()?;
        let key = normalize_key(key)?.to_owned();
        watch_key(self.inner.clone(), key, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        watch_tree(self.inner.clone(), dir, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.inner.check_open()?;
        let (key, opts) = lock_arguments(
            BACKEND,
            key,
            opts,
            Duration::ZERO,
            self.inner.config.max_value_size,
        )?;
        Ok(Box::new(ZkLocker::new(self.inner.clone(), key, opts)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Closing the session deletes this store's ephemeral pins at once; their TTL znodes
        // are then reaped once their TTL has passed since their last write. Held locks delete
        // their waiters; `close` waits for that.
        self.inner.shut();
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        Ok(())
    }
}
