//! [`Postgres`]: the PostgreSQL backend — every write one call of a PL/pgSQL function of the
//! schema, reads from the pairs table, watches woken by the listener.

use kvstore_core::backend::CLOSE_TIMEOUT;
use kvstore_core::backend::prelude::*;
use tokio_postgres::types::ToSql;

use crate::BACKEND;
use crate::client::Inner;
use crate::config::PostgresConfig;
use crate::schema::{Names, Sql};
use crate::wire::{bigint, millis, range, revision};

/// A store on a PostgreSQL database: every call of [`Store`](kvstore_core::Store) with the
/// semantics of every backend. Open it with [`BackendStore::open`] and a [`PostgresConfig`].
pub type PostgresStore = BackendStore<Postgres>;

/// The PostgreSQL backend of [`PostgresStore`]: the pool, the listener (which also reaps).
#[derive(Debug)]
pub struct Postgres {
    /// Dropped with the backend: ends the listener (which also reaps).
    inner: Owned<Inner>,
}

impl Open for Postgres {
    type Config = PostgresConfig;

    /// Connects, creates the schema when missing (or checks its version), and starts the
    /// listener (which also reaps).
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when no server answers within `connect_timeout`;
    /// [`Error::PermissionDenied`] for a refused login or certificate, or a role that may not
    /// create the missing schema; [`Error::InvalidConfig`] for a database that does not exist,
    /// a TLS file that cannot be read, or tables of a newer schema version.
    async fn open(config: PostgresConfig) -> Result<Self> {
        let names = Names::new(&config.schema, &config.table);
        let tasks = Tasks::new();
        let inner = Inner {
            pool: crate::wire::pool(&config)?,
            sql: Sql::new(&names),
            names,
            config,
            hub: Arc::default(),
            tasks: tasks.clone(),
        };
        let inner = Owned::new(inner, &tasks);
        let connect_timeout = inner.config.connect_timeout;
        let unreachable = || {
            Error::not_reachable(
                BACKEND,
                format!("no server answered within {connect_timeout:?}"),
            )
        };
        tokio::time::timeout(connect_timeout * 2, inner.ensure_schema())
            .await
            .map_err(|_| unreachable())??;
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let listener = crate::hub::Listener {
            hub: inner.hub.clone(),
            config: inner.config.clone(),
            channel: inner.names.channel.clone(),
            changed_keys: inner.sql.changed_keys.clone(),
            revision: inner.sql.revision.clone(),
            reap: inner.sql.reap.clone(),
            trim: inner.sql.trim.clone(),
        };
        tasks.spawn(crate::hub::run(
            listener,
            tasks.cancel_token().clone(),
            ready_tx,
        ));
        tokio::time::timeout(connect_timeout * 2, ready)
            .await
            .map_err(|_| unreachable())?
            .map_err(|_| Error::Closed { backend: BACKEND })??;
        Ok(Postgres { inner })
    }
}

/// The error a function's status code means for `key`.
fn refused(key: &str, status: i16) -> Result<()> {
    match status {
        0 => Ok(()),
        1 => Err(Error::KeyExists { key: key.into() }),
        2 => Err(Error::not_found(key)),
        3 => Err(Error::KeyModified { key: key.into() }),
        other => Err(Error::backend(BACKEND, format!("unknown status {other}"))),
    }
}

/// A precondition as the functions' `(cond, index)` arguments.
fn condition(precondition: Precondition) -> (i16, Option<i64>) {
    match precondition {
        Precondition::None => (0, None),
        Precondition::Absent => (1, None),
        Precondition::Index(index) => (2, Some(bigint(index))),
    }
}

#[async_trait]
impl Backend for Postgres {
    const NAME: &str = BACKEND;

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
            .with_max_value_size(self.inner.config.max_value_size)
            .with_max_txn_ops(MAX_TXN_OPS)
    }

    async fn read(&self, key: &str, _consistent: bool) -> Result<Option<KvPair>> {
        self.inner.read_key(key).await
    }

    async fn list(&self, dir: &str, _consistent: bool) -> Result<Option<Vec<KvPair>>> {
        let pairs = self.inner.read_tree(dir).await?;
        let exists =
            dir.is_empty() || !pairs.is_empty() || self.inner.read_key(dir).await?.is_some();
        Ok(exists.then_some(pairs))
    }

    async fn write(&self, w: WriteRequest<'_>) -> Result<Written> {
        let inner = &self.inner;
        let (cond, index) = condition(w.precondition);
        let ttl = w.expiry.map(|e| millis(e.ttl));
        let params: [&(dyn ToSql + Sync); 5] = [&w.key, &w.value, &cond, &index, &ttl];
        let row = inner.query_one(&inner.sql.write, &params).await?;
        refused(w.key, row.get(0))?;
        let index = revision(row.get(1));
        let lease = w
            .expiry
            .filter(|e| e.keep_alive)
            .map(|e| KeyLease::shared(Arc::clone(inner), w.key, index, e.ttl));
        Ok(Written {
            pair: KvPair::new(w.key, w.value.to_vec(), index),
            lease,
        })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<()> {
        let inner = &self.inner;
        let (cond, index) = condition(precondition);
        let params: [&(dyn ToSql + Sync); 3] = [&key, &cond, &index];
        let row = inner.query_one(&inner.sql.delete, &params).await?;
        refused(key, row.get(0))
    }

    async fn delete_tree(&self, dir: &str) -> Result<bool> {
        let inner = &self.inner;
        let (from, to) = range(dir);
        let own = (!dir.is_empty()).then_some(dir);
        let params: [&(dyn ToSql + Sync); 3] = [&own, &from, &to];
        let row = inner.query_one(&inner.sql.delete_tree, &params).await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn txn(&self, txn: Arc<CheckedTxn>) -> Result<Vec<Option<KvPair>>> {
        let inner = &self.inner;
        let mut kinds = Vec::with_capacity(txn.checks.len());
        let mut keys = Vec::with_capacity(txn.checks.len());
        let mut index = Vec::with_capacity(txn.checks.len());
        for check in &txn.checks {
            let (kind, at) = match check {
                Check::IndexIs { last_index, .. } => (0i16, Some(bigint(*last_index))),
                Check::Exists { .. } => (1, None),
                Check::Missing { .. } => (2, None),
                Check::Held { fencing_token, .. } => (3, Some(bigint(*fencing_token))),
            };
            kinds.push(kind);
            keys.push(check.key());
            index.push(at);
        }
        let w_keys: Vec<&str> = txn.writes.iter().map(Write::key).collect();
        let w_values: Vec<Option<&[u8]>> = txn
            .writes
            .iter()
            .map(|w| match w {
                Write::Put { value, .. } => Some(&value[..]),
                Write::Delete { .. } => None,
            })
            .collect();
        let params: [&(dyn ToSql + Sync); 5] = [&kinds, &keys, &index, &w_keys, &w_values];
        let row = inner.query_one(&inner.sql.txn, &params).await?;
        if !row.get::<_, bool>(0) {
            let found: Vec<Option<i64>> = row.get(1);
            // `first_failure` looks at the checks in order, each once.
            let mut at = 0;
            let failed = first_failure(&txn.checks, |check| {
                let value = found.get(at).copied().flatten();
                at += 1;
                match check {
                    Check::Held { .. } => Found::Held(value.is_some()),
                    _ => Found::Key(value.map(revision)),
                }
            });
            return Err(failed.unwrap_or_else(|| {
                Error::backend(BACKEND, "a transaction failed without a failed condition")
            }));
        }
        Ok(txn.written(revision(row.get(2))))
    }

    async fn register_again(&self, lost: LostRegistration<'_>) -> Result<Option<Arc<dyn Lease>>> {
        let LostRegistration { key, value, ttl } = lost;
        let inner = &self.inner;
        let params: [&(dyn ToSql + Sync); 3] = [&key, &&value[..], &millis(ttl)];
        let row = inner.query_one(&inner.sql.register, &params).await?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|index| KeyLease::shared(Arc::clone(inner), key, revision(index), ttl)))
    }

    async fn watch(&self, w: WatchRequest<'_>) -> Result<WatchStream> {
        crate::watch::watch_key(&self.inner, w).await
    }

    async fn watch_tree(&self, w: WatchRequest<'_>) -> Result<WatchTreeStream> {
        crate::watch::watch_tree(&self.inner, w).await
    }

    async fn list_at(&self, dir: &str, _consistent: bool) -> Result<(Vec<KvPair>, u64)> {
        self.inner.read_tree_at(dir).await
    }

    async fn watch_events(&self, w: WatchRequest<'_>, since: Option<u64>) -> Result<EventStream> {
        Ok(crate::watch::watch_events(&self.inner, w, since))
    }

    async fn close(&self) -> Result<()> {
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        self.inner.pool.close();
        Ok(())
    }

    async fn acquire(&self, lock: &LockSpec, tasks: &Tasks) -> Result<HeldLease> {
        crate::lock::acquire(&self.inner, lock, tasks).await
    }
}

/// The most conditions plus operations in one transaction: 1,024 (each is an array element
/// of one function call; the limit keeps a transaction's row locks and reply small).
pub const MAX_TXN_OPS: usize = 1024;
