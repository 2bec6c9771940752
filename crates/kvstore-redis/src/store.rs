//! [`Redis`]: the Redis backend — Lua scripts over one multiplexed, auto-reconnecting
//! connection; keyspace notifications for watches and locks.

use kvstore_core::backend::prelude::*;
use std::sync::atomic::AtomicU8;

use crate::BACKEND;
use crate::client::{Inner, script_mode};
use crate::config::RedisConfig;
use crate::error::{from_redis, protocol};
use crate::primary::{Node, Primary};
use crate::pubsub::Subscription;
use crate::scripts;
use crate::watch::watch_stream;

/// A store on a Redis server (standalone, or a primary found through Sentinel): every call
/// of [`Store`](kvstore_core::Store) with the semantics of every backend. Open it with
/// [`BackendStore::open`] and a [`RedisConfig`].
pub type RedisStore = BackendStore<Redis>;

/// The Redis backend of [`RedisStore`]: the connection to the primary and the shared pub/sub
/// connection of the watches and lock waiters.
#[derive(Debug)]
pub struct Redis {
    /// Dropped with the backend: ends the Sentinel follower and the pub/sub tasks so they
    /// release the connections.
    inner: Owned<Inner>,
}

impl Open for Redis {
    type Config = RedisConfig;

    /// Connects to the server and checks it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL the redis crate rejects, a TLS file that cannot be
    /// read or parsed, or a server in Redis Cluster mode (see the crate docs); [`Error::NotReachable`] when no server answers within `connect_timeout`;
    /// [`Error::PermissionDenied`] when the server refuses the user or password, or TLS fails
    /// (a server certificate the CA did not sign, a client certificate the server refuses).
    async fn open(config: RedisConfig) -> Result<Self> {
        config.check()?;
        let (client, sentinel) = match &config.sentinel {
            Some(sentinel) => {
                let mut sentinel = crate::primary::sentinel_client(sentinel)?;
                let client = crate::primary::find_primary(&mut sentinel, &config).await?;
                (client, Some(sentinel))
            }
            None => (crate::client::open_client(&config)?, None),
        };
        // The Sentinel client gives the primary's client the configured database too.
        let db = client.get_connection_info().redis_settings().db();
        let node = Node::connect(client, &config).await?;
        let prefix = kvstore_core::backend::key_prefix(&config.prefix);
        let tasks = Tasks::new();
        let inner = Inner {
            primary: Primary::new(node, &config),
            config,
            prefix,
            db,
            tasks: tasks.clone(),
            notifications: AtomicU8::new(0),
            pubsub: crate::pubsub::PubSub::default(),
        };
        let inner = Owned::new(inner, &tasks);
        let _: String = redis::cmd("PING")
            .query_async(&mut inner.conn())
            .await
            .map_err(from_redis)?;
        inner.refuse_cluster().await?;
        // Learn now whether watches and locks can work, so `capabilities()` says so; the
        // error itself is returned by the first watch or lock.
        match inner.check_notifications().await {
            Ok(()) | Err(Error::InvalidConfig { .. }) => {}
            Err(err) => return Err(err),
        }
        if let Some(sentinel) = sentinel {
            inner.tasks.spawn(crate::client::follow_primary(
                Arc::downgrade(&inner),
                sentinel,
            ));
        }
        Ok(Redis { inner })
    }
}

#[async_trait]
impl Backend for Redis {
    const NAME: &str = BACKEND;

    fn capabilities(&self) -> Capabilities {
        // Watches and locks ride on keyspace notifications (see `check_notifications`).
        let notifications = self.inner.notifications_on();
        Capabilities::all()
            .with_events(notifications)
            .with_watch(notifications)
            .with_watch_tree(notifications)
            .with_lock(notifications)
            .with_max_value_size(self.inner.config.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
    }

    /// Redis expiry has millisecond resolution (`SET PX`).
    fn min_lock_ttl(&self) -> Duration {
        Duration::from_millis(1)
    }

    async fn read(&self, key: &str, _consistent: bool) -> Result<Option<KvPair>> {
        self.inner.read_key(key).await
    }

    async fn exists(&self, key: &str, _consistent: bool) -> Result<bool> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.inner.data_key(key))
            .query_async(&mut self.inner.conn())
            .await
            .map_err(from_redis)?;
        Ok(n == 1)
    }

    async fn list(&self, dir: &str, _consistent: bool) -> Result<Option<Vec<KvPair>>> {
        self.inner.read_tree(dir).await
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let (mode, expected) = script_mode(w.precondition);
        let ttl = w.expiry.map(|e| e.ttl);
        let pair = self
            .inner
            .write(w.key, w.value, ttl, mode, expected)
            .await?;
        let lease = ttl.map(|ttl| self.inner.key_lease(w.key, pair.last_index, ttl));
        Ok(Written { pair, lease })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        self.inner.remove(key, precondition).await
    }

    /// `DELETE_TREE` runs of at most 1,000 descendants each (`TREE_CHUNK`), until none is
    /// left: the server is never blocked for a whole large directory, so the tree is not
    /// deleted at one revision (watchers may see it emptied in steps, as on ZooKeeper).
    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let mut foreign = self.inner.foreign_strings(dir).await?;
        let mut deleted = 0;
        loop {
            let (count, more): (i64, i64) = scripts::DELETE_TREE
                .key(self.inner.index_key())
                .key(self.inner.rev_key())
                .arg(&self.inner.prefix)
                .arg(dir)
                .arg(scripts::TREE_CHUNK)
                .arg(std::mem::take(&mut foreign))
                .invoke_async(&mut self.inner.write_conn())
                .await
                .map_err(from_redis)?;
            deleted += count;
            if more == 0 {
                break;
            }
        }
        Ok(deleted > 0)
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.inner.txn(&txn).await
    }

    /// The `PUT` script in mode `same`: written again where the key is absent or still holds
    /// the value.
    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        match self.inner.write(key, value, Some(ttl), "same", 0).await {
            Ok(pair) => Ok(Some(self.inner.key_lease(key, pair.last_index, ttl))),
            Err(Error::KeyModified { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        let (key, cancel) = (w.key, w.cancel);
        self.inner.check_notifications().await?;
        let key = key.to_owned();
        let sub = Subscription::Channel(self.inner.keyspace_channel(&self.inner.data_key(&key)));
        let read = move |inner: Arc<Inner>| {
            let key = key.clone();
            async move { inner.read_key(&key).await }
        };
        watch_stream(self.inner.clone(), sub, read, cancel).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        let (dir, cancel) = (w.key, w.cancel);
        self.inner.check_notifications().await?;
        let dir = dir.to_owned();
        let sub = Subscription::Pattern(self.inner.keyspace_tree_pattern(&dir));
        let read = move |inner: Arc<Inner>| {
            let dir = dir.clone();
            async move { Ok(inner.read_tree(&dir).await?.unwrap_or_default()) }
        };
        watch_stream(self.inner.clone(), sub, read, cancel).await
    }

    /// The `INCREMENT` script: `HINCRBY` under a new revision, logged.
    async fn increment(&self, key: &str, delta: i64) -> Result<Option<i64>> {
        let reply: Vec<redis::Value> = scripts::INCREMENT
            .key(self.inner.data_key(key))
            .key(self.inner.rev_key())
            .key(self.inner.index_key())
            .arg(delta)
            .arg(key)
            .invoke_async(&mut self.inner.write_conn())
            .await
            .map_err(from_redis)?;
        let mut items = reply.into_iter();
        match items.next() {
            Some(redis::Value::Int(scripts::OK)) => {}
            Some(redis::Value::Int(scripts::NOT_NATIVE)) => return Ok(None),
            _ => return Err(protocol("increment status")),
        }
        let text: String = items
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| protocol("increment value"))?;
        text.parse()
            .map(Some)
            .map_err(|_| protocol("increment value"))
    }

    /// `LIST` with the revision: expiries are logged first (see the crate docs).
    async fn list_at(&self, dir: &str, _consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        let (pairs, at) = self.inner.read_tree_at(dir).await?;
        Ok((pairs, at.revision))
    }

    /// The change log the scripts append to, read after each keyspace notification.
    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        crate::watch::watch_events(&self.inner, w, since).await
    }

    async fn prepare_lock(&self) -> Result<()> {
        self.inner.check_notifications().await
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.inner, lock, tasks).await
    }
}
