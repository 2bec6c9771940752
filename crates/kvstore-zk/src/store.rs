//! [`Zk`]: the ZooKeeper backend — keys as znodes, hidden parents, TTL nodes and pins.

use kvstore_core::backend::prelude::*;
use std::sync::{Arc, RwLock};

use zookeeper_client::{self as zk, Client, CreateMode};

use crate::BACKEND;
use crate::client::Inner;
use crate::config::ZkConfig;
use crate::error::from_zk;
use crate::node::LOCKS;
use crate::session::{connect, create_options, timed};
use crate::watch::{watch_key, watch_tree};

/// A store on a ZooKeeper ensemble: every call of [`Store`](kvstore_core::Store) with the
/// semantics of every backend. Open it with [`BackendStore::open`] and a [`ZkConfig`].
pub type ZkStore = BackendStore<Zk>;

/// The ZooKeeper backend of [`ZkStore`]: the store's session and the sessions of its locks and
/// registrations (one per TTL).
#[derive(Debug)]
pub struct Zk {
    inner: Arc<Inner>,
}

impl Drop for Zk {
    fn drop(&mut self) {
        // Ends watches and the sessions.
        self.inner.shut();
    }
}

impl Open for Zk {
    type Config = ZkConfig;

    /// Opens a session on the ensemble. Cancel-safe: a session opened by a dropped call is
    /// closed.
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when no server answers within `connect_timeout`;
    /// [`Error::InvalidConfig`] for an invalid configuration or refused credentials.
    async fn open(config: ZkConfig) -> Result<Self> {
        config.validate()?;
        let client = connect(&config, config.session_timeout).await?;
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", config.prefix)
        };
        let ttl_nodes = probe_ttl_nodes(&client, &root, &config).await?;
        let client = Arc::new(client);
        let syncs = crate::sync::SyncBatcher::default();
        syncs
            .learn(&client, config.hosts.len(), config.request_timeout)
            .await;
        Ok(Zk {
            inner: Arc::new(Inner {
                config,
                root,
                session: RwLock::new(Some(client)),
                reconnecting: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
                lock_sessions: tokio::sync::Mutex::default(),
                syncs,
                ttl_nodes,
            }),
        })
    }
}

impl Zk {
    /// The session timeout the server granted, which bounds how long the ephemeral pins of
    /// `keep_alive` keys outlive a crashed process.
    ///
    /// # Errors
    ///
    /// `Closed` after [`close`](kvstore_core::Store::close).
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

#[async_trait]
impl Backend for Zk {
    const NAME: &str = BACKEND;

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
            .with_ttl(self.inner.ttl_nodes)
            .with_keep_alive(self.inner.ttl_nodes)
            .with_max_value_size(self.inner.config.max_value_size)
    }

    async fn read(&self, key: &str, consistent: bool) -> Result<Option<KvPair>> {
        let client = self.inner.client().await?;
        self.inner.read_key(&client, key, consistent).await
    }

    async fn list(&self, dir: &str, consistent: bool) -> Result<Option<Vec<KvPair>>> {
        let client = self.inner.client().await?;
        crate::tree::list(&self.inner, &client, dir, consistent).await
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        self.inner
            .write_key(w.key, w.value, w.precondition, w.expiry)
            .await
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        let expected = match precondition {
            Precondition::Index(index) => Some(index),
            Precondition::None | Precondition::Absent => None,
        };
        self.inner.delete_key(key, expected).await
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let client = self.inner.client().await?;
        let deleted = crate::tree::delete_tree(&self.inner, &client, dir).await?;
        Ok(!deleted.is_empty())
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.inner.txn(&txn).await
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        self.inner.register_again(key, value, ttl).await
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        watch_key(self.inner.clone(), w).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        watch_tree(self.inner.clone(), w).await
    }

    /// A consistent read of the directory under a persistent recursive watch (see the crate
    /// docs, "Watch events").
    async fn list_at(&self, dir: &str, _consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        crate::events::list_at(self.inner.clone(), dir).await
    }

    /// The znodes a persistent recursive watch names, read back (see the crate docs).
    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        crate::events::watch_events(self.inner.clone(), w, since).await
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.inner, lock, tasks).await
    }

    /// Closing the session deletes the store's ephemeral pins at once; their TTL znodes are
    /// then reaped once their TTL has passed since their last write.
    async fn close(&self) -> Result<()> {
        self.inner.shut();
        Ok(())
    }
}
