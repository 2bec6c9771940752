//! The [`Store`] implementation over etcd's KV, lease and watch APIs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use kvstore_core::backend::{
    Precondition, Registrations, Tasks, check_value_size, lock_arguments, write_ttl,
};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, WatchStream,
    WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::{CLOSE_TIMEOUT, EtcdLease, EtcdRegistrar, Inner, revision};
use crate::config::EtcdConfig;
use crate::error::from_etcd;
use crate::lock::EtcdLocker;
use crate::watch::{watch_key, watch_tree};

/// A kvstore [`Store`] on an etcd v3 cluster (tested against etcd 3.4).
///
/// See the crate docs for the key layout and the mapping of each call.
///
/// # Examples
///
/// ```no_run
/// use kvstore_core::Store;
/// use kvstore_etcd::{EtcdConfig, EtcdStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = EtcdStore::connect(EtcdConfig::new(&["127.0.0.1:2379"])).await?;
/// store.put("app/config", b"v1", None).await?;
/// # Ok(())
/// # }
/// ```
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Ends keep-alives, renewals and watches so their tasks release the client.
        self.inner.cancel.cancel();
    }
}

impl EtcdStore {
    /// Connects and checks that a member answers (etcd-client's `connect` alone succeeds
    /// without any server).
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when no endpoint answers within `connect_timeout`;
    /// [`Error::InvalidConfig`] for malformed endpoints or a TLS file that cannot be read;
    /// [`Error::PermissionDenied`] for a refused user name or password, a client certificate
    /// the server refuses (or none where it demands one), or a server certificate the CA did
    /// not sign.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "connect"))]
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            // The server expires tokens (`--auth-token-ttl`, 300 s by default); etcd-client
            // then authenticates again and retries the call.
            opts = opts
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            opts = opts.with_tls(crate::client::tls_options(tls)?);
        }
        let unreachable = |e: Error| match e {
            Error::Timeout | Error::NotReachable { .. } => Error::not_reachable(BACKEND, e),
            other => other,
        };
        let probe = async {
            let mut client = Client::connect(&config.endpoints, Some(opts))
                .await
                .map_err(from_etcd)?;
            client.status().await.map_err(from_etcd)?;
            Ok::<_, Error>(client)
        };
        let client = tokio::time::timeout(config.connect_timeout, probe)
            .await
            .map_err(|_| {
                Error::not_reachable(
                    BACKEND,
                    format!("no endpoint answered within {:?}", config.connect_timeout),
                )
            })?
            .map_err(unreachable);
        let client = match client {
            Ok(client) => client,
            Err(err @ (Error::NotReachable { .. } | Error::Backend { .. }))
                if config.tls.is_some() =>
            {
                return Err(crate::client::diagnose_tls(&config, err).await);
            }
            Err(err) => return Err(err),
        };
        let slash = if config.leading_slash { "/" } else { "" };
        let prefix = if config.prefix.is_empty() {
            slash.to_owned()
        } else {
            format!("{slash}{}/", config.prefix)
        };
        let tasks = Tasks::new();
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                config,
                prefix,
                cancel: tasks.cancel_token().clone(),
                registrations: Registrations::new(&tasks),
                tasks,
                watch_hub: crate::mux::WatchHub::default(),
            }),
        })
    }

    /// Writes under a precondition. One round trip, plus one to grant a lease for a TTL.
    async fn write(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = normalize_key(key)?;
        check_value_size(key, value, inner.config.max_value_size)?;
        let ttl = write_ttl(BACKEND, opts)?;
        let sent = Instant::now();
        let lease = match ttl {
            Some(ttl) => Some(inner.grant(ttl).await?),
            None => None,
        };
        let put_opts = lease.map(|id| PutOptions::new().with_lease(id));
        let etcd_key = inner.data_key(key);
        let revision = match precondition {
            Precondition::None => {
                let resp = inner
                    .call(inner.client().put(etcd_key, value.to_vec(), put_opts))
                    .await?;
                resp.header().map_or(0, |h| h.revision())
            }
            Precondition::Absent | Precondition::Index(_) => {
                // Source: etcd docs, "KV API guarantees" / Txn — compare mod_revision (create:
                // create_revision == 0), else read the key to tell the failure apart.
                let compare = match precondition {
                    Precondition::Index(index) => {
                        Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, revision(index))
                    }
                    _ => Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(etcd_key.clone(), value.to_vec(), put_opts)])
                    .or_else([TxnOp::get(etcd_key, None)]);
                let resp = inner.call(inner.client().txn(txn)).await?;
                if !resp.succeeded() {
                    if let Some(id) = lease {
                        let _ = inner.client().lease_revoke(id).await;
                    }
                    let exists = resp
                        .op_responses()
                        .into_iter()
                        .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
                    return Err(match (precondition, exists) {
                        (Precondition::Absent, _) => Error::KeyExists { key: key.into() },
                        (_, false) => Error::not_found(key),
                        (_, true) => Error::KeyModified { key: key.into() },
                    });
                }
                resp.header().map_or(0, |h| h.revision())
            }
        };
        match (lease, ttl.filter(|_| opts.is_some_and(|o| o.keep_alive))) {
            (Some(id), Some(ttl)) => inner.registrations.insert(
                key,
                Bytes::copy_from_slice(value),
                ttl,
                Arc::new(EtcdLease::new(inner.clone(), id, None)),
                sent,
                Arc::new(EtcdRegistrar(inner.clone())),
            ),
            _ => inner.registrations.remove(key),
        }
        let index =
            u64::try_from(revision).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
        Ok(KvPair::new(key, value.to_vec(), index))
    }

    async fn remove(&self, key: &str, precondition: Precondition) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = normalize_key(key)?;
        let etcd_key = inner.data_key(key);
        let compare = match precondition {
            Precondition::Index(index) => {
                Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, revision(index))
            }
            _ => Compare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(etcd_key.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = inner.call(inner.client().txn(txn)).await?;
        if resp.succeeded() {
            inner.registrations.remove(key);
            return Ok(());
        }
        let exists = resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
        Err(if exists {
            Error::KeyModified { key: key.into() }
        } else {
            Error::not_found(key)
        })
    }
}

fn consistent(opts: Option<&ReadOptions>) -> bool {
    opts.is_none_or(|o| o.consistent)
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.inner.config.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
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
        self.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "get", key = %key))]
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner
            .read_key(key, consistent(opts))
            .await?
            .0
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key, Precondition::None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "exists", key = %key))]
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        let mut get = GetOptions::new().with_count_only();
        if !consistent(opts) {
            get = get.with_serializable();
        }
        let resp = self
            .inner
            .call(self.inner.client().get(self.inner.data_key(key), Some(get)))
            .await?;
        Ok(resp.count() > 0)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "list", key = %dir))]
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        self.inner
            .read_tree(dir, consistent(opts))
            .await?
            .0
            .ok_or_else(|| Error::not_found(dir))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let dir = normalize_dir(dir)?;
        let (start, end) = inner.tree_range(dir);
        let mut ops = vec![TxnOp::delete(
            start,
            Some(etcd_client::DeleteOptions::new().with_range(end)),
        )];
        if !dir.is_empty() {
            ops.push(TxnOp::delete(inner.data_key(dir), None));
        }
        let resp = inner
            .call(inner.client().txn(Txn::new().and_then(ops)))
            .await?;
        let deleted: i64 = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted(),
                _ => 0,
            })
            .sum();
        if deleted == 0 {
            Err(Error::not_found(dir))
        } else {
            inner.registrations.remove_tree(dir);
            Ok(())
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
        self.remove(key, Precondition::Index(previous.last_index))
            .await
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
        Ok(Box::new(EtcdLocker::new(self.inner.clone(), key, opts)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops registrations (their keys expire with their leases), ends watches, and revokes
        // held locks' leases; waits for the revokes to be sent.
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        Ok(())
    }
}
