//! The shared state of one store: the connection pool, the statements, the listener, and the
//! reads every part of the backend makes.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kvstore_core::backend::prelude::*;
use kvstore_core::backend::{Since, TlsFiles, load_tls};
use kvstore_core::{Event, is_descendant};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::Row;
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::BACKEND;
use crate::config::{PostgresConfig, TargetSession};
use crate::error::{from_pg, from_pool};
use crate::hub::Hub;
use crate::schema::{Names, SCHEMA_VERSION, Sql};

/// The parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One store's connection to the server, shared by the backend, its leases and watches.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) config: PostgresConfig,
    pub(crate) names: Names,
    pub(crate) sql: Sql,
    pub(crate) hub: Hub,
    /// The backend's own tasks (listener, reaper), cancelled when it closes or drops.
    pub(crate) tasks: Tasks,
}

/// The client configuration of `config`.
pub(crate) fn pg_config(config: &PostgresConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    for (host, port) in &config.hosts {
        pg.host(host).port(*port);
    }
    pg.user(&config.user)
        .dbname(&config.database)
        .application_name("kvstore")
        .connect_timeout(config.connect_timeout)
        // Dead peers are noticed by TCP keepalives, not only when a request times out.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .ssl_mode(if config.tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        })
        .target_session_attrs(match config.target_session {
            TargetSession::Any => TargetSessionAttrs::Any,
            TargetSession::ReadWrite => TargetSessionAttrs::ReadWrite,
        });
    if let Some(password) = &config.password {
        pg.password(password);
    }
    pg
}

/// The TLS connector: the CA file's certificates (or the platform's roots) and the client
/// certificate, when given. Plain connections (`sslmode` disable) never use it.
pub(crate) fn tls_connector(config: &PostgresConfig) -> Result<Tls> {
    kvstore_core::backend::tls::install_crypto_provider();
    let files = match &config.tls {
        Some(tls) => load_tls(tls, BACKEND)?,
        None => {
            return Ok(Tls {
                connect: MakeRustlsConnect::new(no_tls()),
                server_name: None,
            });
        }
    };
    Ok(Tls {
        connect: MakeRustlsConnect::new(client_config(&files)?),
        server_name: files.server_name.clone(),
    })
}

/// rustls for tokio-postgres, verifying the server's certificate against `server_name` when
/// given (`tls_server_name`), else against the host connected to.
#[derive(Clone)]
pub(crate) struct Tls {
    connect: MakeRustlsConnect,
    server_name: Option<String>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for Tls
where
    MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let name = self.server_name.as_deref().unwrap_or(domain);
        self.connect.make_tls_connect(name)
    }
}

fn no_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid_config(BACKEND, format!("TLS {what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| invalid("CA file", &e))?;
                roots.add(cert).map_err(|e| invalid("CA file", &e))?;
            }
        }
        None => {
            // Source: rustls-native-certs docs — errors of single certificates are reported
            // beside those that loaded.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match &files.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The pool of `config`'s connections (none is made until one is asked for).
pub(crate) fn pool(config: &PostgresConfig) -> Result<Pool> {
    let manager = Manager::from_config(
        pg_config(config),
        tls_connector(config)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.request_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::invalid_config(BACKEND, e.to_string()))
}

/// The key range strictly under `dir`: from `dir/` to `dir0` (`'0'` follows `'/'` bytewise);
/// the whole keyspace for `""`.
pub(crate) fn range(dir: &str) -> (String, Option<String>) {
    if dir.is_empty() {
        (String::new(), None)
    } else {
        (format!("{dir}/"), Some(format!("{dir}0")))
    }
}

/// A `bigint` from the server as a revision (never negative).
pub(crate) fn revision(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A revision or `last_index` from the caller as a `bigint`.
pub(crate) fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A TTL in whole milliseconds (at least 1).
pub(crate) fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
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

    /// Runs `sql` on a pooled connection within the request timeout; returns how many rows it
    /// changed.
    pub(crate) async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        let run = async {
            let client = self.pool.get().await.map_err(from_pool)?;
            let statement = client.prepare_cached(sql).await.map_err(from_pg)?;
            client.execute(&statement, params).await.map_err(from_pg)
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
        let rows = self.query(&self.sql.list, &[&from, &to]).await?;
        Ok(rows.iter().map(|row| pair(row, 0)).collect())
    }

    /// Every live pair strictly under `dir` and the revision they were read at, in one
    /// statement (one snapshot).
    pub(crate) async fn read_tree_at(&self, dir: &str) -> Result<(Vec<KvPair>, u64)> {
        let (from, to) = range(dir);
        let rows = self.query(&self.sql.list_at, &[&from, &to]).await?;
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
            .query(&self.sql.since, &[&from, &to, &bigint(after)])
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

/// Whether a change of `key` is one `watch_tree(dir)` sees.
pub(crate) fn under(key: &str, dir: &str) -> bool {
    dir.is_empty() || is_descendant(key, dir)
}

/// Shared by leases and watches.
pub(crate) type Shared = Arc<Inner>;
