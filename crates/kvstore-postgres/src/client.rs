//! The shared state of one store: the connection pool, the statements, the listener, and the
//! reads every part of the backend makes.

use std::sync::Arc;

use deadpool_postgres::Pool;
use kvstore_core::Event;
use kvstore_core::backend::Since;
use kvstore_core::backend::prelude::*;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::BACKEND;
use crate::config::PostgresConfig;
use crate::error::{from_pg, from_pool};
use crate::hub::Hub;
use crate::schema::{Names, SCHEMA_VERSION, Sql};
use crate::wire::{bigint, range, revision};

/// The parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One store's connection to the server, shared by the backend, its leases and watches.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) config: PostgresConfig,
    pub(crate) names: Names,
    pub(crate) sql: Sql,
    pub(crate) hub: Arc<Hub>,
    /// The backend's own tasks (listener, reaper), cancelled when it closes or drops.
    pub(crate) tasks: Tasks,
}

fn pair(row: &Row, key: usize) -> KvPair {
    let value: Vec<u8> = row.get(key + 1);
    KvPair::new(row.get::<_, String>(key), value, revision(row.get(key + 2)))
}

impl Inner {
    /// Runs `sql` on a pooled connection within the request timeout.
    pub(crate) async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let run = async {
            let client = self.pool.get().await.map_err(from_pool)?;
            let statement = client.prepare_cached(sql).await.map_err(from_pg)?;
            client.query(&statement, params).await.map_err(from_pg)
        };
        tokio::time::timeout(self.config.request_timeout, run)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// As [`query`](Self::query), for a statement that returns exactly one row.
    pub(crate) async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row> {
        self.query(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::backend(BACKEND, "a statement returned no row"))
    }

    /// The live pair at `key`.
    pub(crate) async fn read_key(&self, key: &str) -> Result<Option<KvPair>> {
        let rows = self.query(&self.sql.read, &[&key]).await?;
        Ok(rows.first().map(|row| {
            let value: Vec<u8> = row.get(0);
            KvPair::new(key, value, revision(row.get(1)))
        }))
    }

    /// Every live pair strictly under `dir`, in key order.
    pub(crate) async fn read_tree(&self, dir: &str) -> Result<Vec<KvPair>> {
        let (from, to) = range(dir);
        let rows = self
            .query(self.sql.list.pick(to.as_deref()), &[&from, &to])
            .await?;
        Ok(rows.iter().map(|row| pair(row, 0)).collect())
    }

    /// Every live pair strictly under `dir` and the revision they were read at, in one
    /// statement (one snapshot).
    pub(crate) async fn read_tree_at(&self, dir: &str) -> Result<(Vec<KvPair>, u64)> {
        let (from, to) = range(dir);
        let rows = self
            .query(self.sql.list_at.pick(to.as_deref()), &[&from, &to])
            .await?;
        let at = rows.first().map_or(0, |row| revision(row.get(0)));
        let pairs = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .map(|row| pair(row, 1))
            .collect();
        Ok((pairs, at))
    }

    /// The change log's events strictly under `dir` after revision `after`, in one statement.
    pub(crate) async fn read_since(&self, dir: &str, after: u64) -> Result<Since> {
        let (from, to) = range(dir);
        let rows = self
            .query(
                self.sql.since.pick(to.as_deref()),
                &[&from, &to, &bigint(after)],
            )
            .await?;
        let Some(first) = rows.first() else {
            return Err(Error::backend(BACKEND, "the meta row is missing"));
        };
        let (current, floor) = (revision(first.get(0)), revision(first.get(1)));
        // The log no longer holds every change after `after`, or `after` is in the future.
        if after < floor || after > current {
            return Ok(Since::Unknown);
        }
        let events = rows
            .iter()
            .filter_map(|row| {
                let rev = revision(row.get::<_, Option<i64>>(2)?);
                let key: String = row.get(3);
                Some(match row.get::<_, Option<Vec<u8>>>(4) {
                    Some(value) => Event::put(key, value, rev),
                    None => Event::delete(key, rev),
                })
            })
            .collect();
        Ok(Since::Events(events, current))
    }

    /// Creates the schema when missing; refuses one of a newer version.
    pub(crate) async fn ensure_schema(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(from_pool)?;
        let known = match client.query_opt(&self.sql.version, &[]).await {
            Ok(row) => row.map(|r| r.get::<_, i32>(0)),
            Err(err) if missing_table(&err) => None,
            Err(err) => return Err(from_pg(err)),
        };
        let version = match known {
            Some(version) => version,
            None => {
                let tx = client.transaction().await.map_err(from_pg)?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    &[&format!("kvstore:{}", self.names.channel)],
                )
                .await
                .map_err(from_pg)?;
                let create_schema = self.config.schema != crate::config::DEFAULT_SCHEMA;
                let ddl = crate::schema::create(&self.names, create_schema);
                tx.batch_execute(&ddl).await.map_err(from_pg)?;
                let row = tx
                    .query_one(&self.sql.version, &[])
                    .await
                    .map_err(from_pg)?;
                tx.commit().await.map_err(from_pg)?;
                row.get(0)
            }
        };
        if version > SCHEMA_VERSION {
            return Err(Error::invalid_config(
                BACKEND,
                format!(
                    "{}: schema version {version} is newer than this kvstore's ({SCHEMA_VERSION})",
                    self.names.pairs
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `err` says the meta table (or its schema) does not exist yet.
fn missing_table(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code()
        .is_some_and(|c| *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME)
}

/// Shared by leases and watches.
pub(crate) type Shared = Arc<Inner>;
