//! [`Consul`]: the Consul backend — the KV, transaction and session endpoints of an agent.

use kvstore_core::backend::prelude::*;
use std::collections::BTreeSet;

use crate::BACKEND;
use crate::api::{Api, Consistency, Txn, op};
use crate::client::{Inner, SessionLease, TXN_OPS};
use crate::config::ConsulConfig;
use crate::watch::{watch_key, watch_tree};

/// A store on a Consul agent: every call of [`Store`](kvstore_core::Store) with the semantics
/// of every backend. Open it with [`BackendStore::open`] and a [`ConsulConfig`].
pub type ConsulStore = BackendStore<Consul>;

/// The Consul backend of [`ConsulStore`]: the agent's HTTP client and the shared blocking
/// queries of the watches.
#[derive(Debug)]
pub struct Consul {
    /// Dropped with the backend: ends the shared blocking queries.
    inner: Owned<Inner>,
}

impl Open for Consul {
    type Config = ConsulConfig;

    /// Checks that the agent answers and its cluster has a leader.
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when the agent does not answer within `connect_timeout` or has
    /// no leader; [`Error::InvalidConfig`] when the HTTP client cannot be built.
    async fn open(config: ConsulConfig) -> Result<Self> {
        let prefix = kvstore_core::backend::key_prefix(&config.prefix);
        let api = Api::new(config)?;
        api.leader().await.map_err(|e| match e {
            Error::Timeout => Error::not_reachable(BACKEND, "the agent did not answer in time"),
            other => other,
        })?;
        let tasks = Tasks::new();
        let inner = Inner {
            api,
            prefix,
            hub: crate::hub::Hub::default(),
            tasks: tasks.clone(),
        };
        Ok(Consul {
            inner: Owned::new(inner, &tasks),
        })
    }
}

#[async_trait]
impl Backend for Consul {
    const NAME: &str = BACKEND;

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_txn_ops(crate::txn::MAX_TXN_OPS)
            .with_max_value_size(self.inner.api.config.max_value_size)
            .with_min_ttl(self.inner.api.min_session_ttl())
    }

    async fn read(&self, key: &str, consistent: bool) -> Result<Option<KvPair>> {
        Ok(self
            .inner
            .read_key(key, Consistency::of(consistent), None)
            .await?
            .0)
    }

    async fn list(&self, dir: &str, consistent: bool) -> Result<Option<Vec<KvPair>>> {
        let (pairs, exists) = self
            .inner
            .read_dir(dir, Consistency::of(consistent))
            .await?;
        // The whole keyspace always exists, even empty.
        Ok((exists || dir.is_empty()).then_some(pairs))
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let (pair, session) = self
            .inner
            .write_with_session(w.key, w.value, w.precondition, w.expiry)
            .await?;
        let lease = session.map(|id| self.session_lease(id));
        Ok(Written { pair, lease })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        let expected = match precondition {
            Precondition::Index(index) => Some(index),
            Precondition::None | Precondition::Absent => None,
        };
        self.inner.remove(key, expected).await
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let inner = &self.inner;
        let (pairs, exists) = inner.read_dir(dir, Consistency::Consistent).await?;
        if !exists {
            return Ok(false);
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
        Ok(true)
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        self.inner.txn(&txn).await
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        let inner = &self.inner;
        let expiry = Some(Expiry {
            ttl,
            keep_alive: true,
        });
        let read = || async { Ok(inner.read_key(key, Consistency::Consistent, None).await?.0) };
        let write = |condition| inner.write_with_session(key, value, condition, expiry);
        match write_again(value, read, write).await? {
            Some((_, Some(session))) => Ok(Some(self.session_lease(session))),
            Some((_, None)) => Err(Error::backend(BACKEND, "a TTL write made no session")),
            None => Ok(None),
        }
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        watch_key(self.inner.clone(), w).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        watch_tree(self.inner.clone(), w).await
    }

    async fn list_at(&self, dir: &str, consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        let consistency = Consistency::of(consistent);
        self.inner.read_tree(dir, consistency, None).await
    }

    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        Ok(crate::watch::watch_events(self.inner.clone(), w, since))
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.inner, lock, tasks).await
    }
}

impl Consul {
    fn session_lease(&self, session: String) -> Arc<dyn Lease> {
        Arc::new(SessionLease::new(self.inner.clone(), session, None))
    }
}
