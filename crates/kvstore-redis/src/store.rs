//! The [`Store`] implementation over one multiplexed, auto-reconnecting connection.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{
    Precondition, Registrations, Tasks, check_value_size, lock_arguments, write_ttl,
};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, Txn, WatchStream,
    WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::{CLOSE_TIMEOUT, Inner, KeyRegistrar, script_mode};
use crate::config::RedisConfig;
use crate::error::{from_redis, protocol};
use crate::lock::RedisLocker;
use crate::primary::{Node, Primary};
use crate::pubsub::Subscription;
use crate::scripts;
use crate::watch::watch_stream;

/// A kvstore [`Store`] on a Redis server (5 or later; tested on 7).
///
/// See the crate docs for the data layout and the behaviour on reconnects.
///
/// # Examples
///
/// ```no_run
/// use kvstore_core::Store;
/// use kvstore_redis::{RedisConfig, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = RedisStore::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// store.put("app/config", b"v1", None).await?;
/// # Ok(())
/// # }
/// ```
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Ends keep-alives, renewals and watches so their tasks release the connection.
        self.inner.cancel.cancel();
    }
}

impl RedisStore {
    /// Connects to the server and checks it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL the redis crate rejects, a TLS file that cannot be
    /// read or parsed, or a server in Redis Cluster mode (see the crate docs); [`Error::NotReachable`] when no server answers within `connect_timeout`;
    /// [`Error::PermissionDenied`] when the server refuses the user or password, or TLS fails
    /// (a server certificate the CA did not sign, a client certificate the server refuses).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "connect"))]
    pub async fn connect(config: RedisConfig) -> Result<Self> {
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
        let prefix = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let tasks = Tasks::new();
        let inner = Arc::new(Inner {
            primary: Primary::new(node, &config),
            config,
            prefix,
            db,
            cancel: tasks.cancel_token().clone(),
            registrations: Registrations::new(&tasks),
            tasks,
            notifications: AtomicU8::new(0),
            pubsub: crate::pubsub::PubSub::default(),
        });
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
        Ok(RedisStore { inner })
    }

    async fn write(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let (mode, expected) = script_mode(precondition);
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        check_value_size(key, value, self.inner.config.max_value_size)?;
        let ttl = write_ttl(BACKEND, opts)?;
        let sent = Instant::now();
        let pair = self.inner.write(key, value, ttl, mode, expected).await?;
        match ttl.filter(|_| opts.is_some_and(|o| o.keep_alive)) {
            Some(ttl) => self.inner.registrations.insert(
                key,
                pair.value.clone(),
                ttl,
                self.inner.key_lease(key, pair.last_index, ttl),
                sent,
                Arc::new(KeyRegistrar(self.inner.clone())),
            ),
            None => self.inner.registrations.remove(key),
        }
        Ok(pair)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Watches and locks ride on keyspace notifications (see `check_notifications`).
        let notifications = self.inner.notifications_on();
        Capabilities::all()
            .with_watch(notifications)
            .with_watch_tree(notifications)
            .with_lock(notifications)
            .with_max_value_size(self.inner.config.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "txn", ops = txn.ops.len()))]
    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
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
        self.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "get", key = %key))]
    async fn get(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner
            .read_key(key)
            .await?
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner.remove(key, Precondition::None).await?;
        self.inner.registrations.remove(key);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "exists", key = %key))]
    async fn exists(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<bool> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.inner.data_key(key))
            .query_async(&mut self.inner.conn())
            .await
            .map_err(from_redis)?;
        Ok(n == 1)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "list", key = %dir))]
    async fn list(&self, dir: &str, _opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        self.inner
            .read_tree(dir)
            .await?
            .ok_or_else(|| Error::not_found(dir))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        let foreign = self.inner.foreign_strings(dir).await?;
        let status: i64 = scripts::DELETE_TREE
            .key(self.inner.index_key())
            .arg(&self.inner.prefix)
            .arg(dir)
            .arg(&foreign)
            .invoke_async(&mut self.inner.write_conn())
            .await
            .map_err(from_redis)?;
        match status {
            scripts::OK => {
                self.inner.registrations.remove_tree(dir);
                Ok(())
            }
            scripts::NOT_FOUND => Err(Error::not_found(dir)),
            _ => Err(protocol("delete_tree status")),
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
        self.write(key, value, Precondition::of(previous), opts)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner
            .remove(key, Precondition::Index(previous.last_index))
            .await?;
        self.inner.registrations.remove(key);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch", key = %key))]
    async fn watch(&self, key: &str, _opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.inner.check_open()?;
        let key = normalize_key(key)?.to_owned();
        self.inner.check_notifications().await?;
        let sub = Subscription::Channel(self.inner.keyspace_channel(&self.inner.data_key(&key)));
        watch_stream(self.inner.clone(), sub, move |inner| {
            let key = key.clone();
            async move { inner.read_key(&key).await }
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, _opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        self.inner.check_notifications().await?;
        let sub = Subscription::Pattern(self.inner.keyspace_tree_pattern(&dir));
        watch_stream(self.inner.clone(), sub, move |inner| {
            let dir = dir.clone();
            async move { Ok(inner.read_tree(&dir).await?.unwrap_or_default()) }
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.inner.check_open()?;
        // Redis expiry has millisecond resolution (`SET PX`).
        let (key, opts) = lock_arguments(
            BACKEND,
            key,
            opts,
            Duration::from_millis(1),
            self.inner.config.max_value_size,
        )?;
        self.inner.check_notifications().await?;
        Ok(Box::new(RedisLocker::new(self.inner.clone(), key, opts)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops registrations (their keys expire with their TTL), ends watches, and releases
        // held locks; waits for the releases to be sent.
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        self.inner.pubsub.shut().await;
        Ok(())
    }
}
