//! [`Etcd`]: the etcd backend — reads, conditional writes and deletes as etcd transactions,
//! leases for TTLs, the shared watch stream for watches.

use kvstore_core::backend::prelude::*;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::BACKEND;
use crate::client::{EtcdLease, Inner, revision};
use crate::config::EtcdConfig;
use crate::error::from_etcd;
use crate::watch::{watch_key, watch_tree};

/// A store on an etcd cluster (v3 API): every call of [`Store`](kvstore_core::Store) with the
/// semantics of every backend. Open it with [`BackendStore::open`] and an [`EtcdConfig`].
pub type EtcdStore = BackendStore<Etcd>;

/// The etcd backend of [`EtcdStore`]: the client connection and the shared watch stream.
#[derive(Debug)]
pub struct Etcd {
    /// Dropped with the backend: ends the shared watch stream's task so it releases the client.
    inner: Owned<Inner>,
}

impl Open for Etcd {
    type Config = EtcdConfig;

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
    async fn open(config: EtcdConfig) -> Result<Self> {
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
        let prefix = format!(
            "{slash}{}",
            kvstore_core::backend::key_prefix(&config.prefix)
        );
        let tasks = Tasks::new();
        let inner = Inner {
            client,
            config,
            prefix,
            tasks: tasks.clone(),
            watch_hub: crate::mux::WatchHub::default(),
        };
        Ok(Etcd {
            inner: Owned::new(inner, &tasks),
        })
    }
}

/// The failed side of a conditional write or delete: which error the key's state means.
fn refused(key: &str, precondition: Precondition, resp: &etcd_client::TxnResponse) -> Error {
    let exists = resp
        .op_responses()
        .into_iter()
        .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
    match (precondition, exists) {
        (Precondition::Absent, _) => Error::KeyExists { key: key.into() },
        (_, false) => Error::not_found(key),
        (_, true) => Error::KeyModified { key: key.into() },
    }
}

#[async_trait]
impl Backend for Etcd {
    const NAME: &str = BACKEND;

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.inner.config.max_value_size)
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
    }

    async fn read(&self, key: &str, consistent: bool) -> Result<Option<KvPair>> {
        Ok(self.inner.read_key(key, consistent).await?.0)
    }

    async fn exists(&self, key: &str, consistent: bool) -> Result<bool> {
        let inner = &self.inner;
        let mut get = GetOptions::new().with_count_only();
        if !consistent {
            get = get.with_serializable();
        }
        let resp = inner
            .call(inner.client().get(inner.data_key(key), Some(get)))
            .await?;
        Ok(resp.count() > 0)
    }

    async fn list(&self, dir: &str, consistent: bool) -> Result<Option<Vec<KvPair>>> {
        Ok(self.inner.read_tree(dir, consistent).await?.0)
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let (inner, key, value, precondition) = (&self.inner, w.key, w.value, w.precondition);
        let lease = match w.expiry {
            Some(expiry) => Some(inner.grant(expiry.ttl).await?),
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
                    return Err(refused(key, precondition, &resp));
                }
                resp.header().map_or(0, |h| h.revision())
            }
        };
        let index =
            u64::try_from(revision).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
        Ok(Written {
            pair: KvPair::new(key, value.to_vec(), index),
            lease: lease
                .map(|id| Arc::new(EtcdLease::new(Arc::clone(inner), id, None)) as Arc<dyn Lease>),
        })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        let inner = &self.inner;
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
            return Ok(());
        }
        Err(refused(key, precondition, &resp))
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let inner = &self.inner;
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
        Ok(deleted > 0)
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.inner.txn(&txn).await
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        let inner = &self.inner;
        let id = inner.grant(ttl).await?;
        let etcd_key = inner.data_key(key);
        let put = || {
            TxnOp::put(
                etcd_key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(id)),
            )
        };
        // Written again only where the key still holds this value, or nothing.
        for compare in [
            Compare::value(etcd_key.clone(), CompareOp::Equal, value.to_vec()),
            Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
        ] {
            let txn = Txn::new().when([compare]).and_then([put()]);
            if inner.call(inner.client().txn(txn)).await?.succeeded() {
                return Ok(Some(Arc::new(EtcdLease::new(Arc::clone(inner), id, None))));
            }
        }
        let _ = inner.client().lease_revoke(id).await;
        Ok(None)
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        watch_key(self.inner.clone(), w).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        watch_tree(self.inner.clone(), w).await
    }

    async fn list_at(&self, dir: &str, consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        let (pairs, rev) = self.inner.read_tree(dir, consistent).await?;
        Ok((pairs.unwrap_or_default(), u64::try_from(rev).unwrap_or(0)))
    }

    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        Ok(crate::watch::watch_events(self.inner.clone(), w, since))
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.inner, lock, tasks).await
    }
}
