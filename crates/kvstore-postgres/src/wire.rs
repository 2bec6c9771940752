//! What every connection of a store shares: the client configuration, TLS, the pool, and the
//! conversions between the crate's types and the columns'.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use kvstore_core::backend::{TlsFiles, load_tls};
use kvstore_core::{Error, Result, is_descendant};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::BACKEND;
use crate::config::{PostgresConfig, TargetSession};

/// The client configuration of `config`.
pub(crate) fn pg_config(config: &PostgresConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    for (host, port) in &config.hosts {
        pg.host(host).port(*port);
    }
    pg.user(&config.user)
        .dbname(&config.database)
        .application_name(&config.application_name)
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

/// Whether a change of `key` is one `watch_tree(dir)` sees.
pub(crate) fn under(key: &str, dir: &str) -> bool {
    dir.is_empty() || is_descendant(key, dir)
}
