//! Typed configuration for the PostgreSQL store, and its URL form.

use derive_setters::Setters;
use derive_where::derive_where;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{
    choice_option, duration_option, parse_multi_host_url, redact_url, size_option, url_options,
};
use kvstore_core::{Error, Result, TlsConfig};

use crate::BACKEND;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout: 10 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest value: 1 MiB (a `bytea` holds up to 1 GiB; large values in a key/value
/// store slow every watcher that reads them).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// Default number of pooled connections per store: 16 (plus one for `LISTEN`).
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default time between two looks for expired keys and holds: 250 ms. A key or hold whose TTL
/// ran out is invisible to every read at once; this bounds when watches hear of it.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_millis(250);
/// Default number of revisions the change log keeps for `watch_events` resumes: 100,000.
pub const DEFAULT_LOG_RETENTION: u64 = 100_000;
/// How long a watch keeps trying to resume after losing its connection: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default schema: `public`.
pub const DEFAULT_SCHEMA: &str = "public";
/// The default table name: `kvstore`.
pub const DEFAULT_TABLE: &str = "kvstore";

/// Which server of several a store connects to (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetSession {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// The first server that accepts writes: after a replica is promoted, new connections
    /// go to it.
    ReadWrite,
}

/// Configuration of a [`PostgresStore`](crate::PostgresStore).
///
/// # URL form
///
/// `postgres://[user[:password]@]host1[:port1][,host2[:port2]][/database][?options]`
/// (`postgresql://` too; the port defaults to 5432, the database to the user name, the user
/// to `postgres`)
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `schema` | the schema that holds the store's tables (created when missing) | `public` |
/// | `table` | the name of the pairs table; the others are named after it (`<table>_meta`, `<table>_log`, `<table>_locks`), so several stores share a schema | `kvstore` |
/// | `timeout` | connect timeout | 5 s |
/// | `request_timeout` | per-request timeout | 10 s |
/// | `max_value_size` | largest value in bytes | 1 MiB |
/// | `pool_size` | pooled connections | 16 |
/// | `reap_interval` | time between looks for expired keys and holds | 250 ms |
/// | `log_retention` | revisions the change log keeps | 100,000 |
/// | `application_name` | the name the store's sessions show in `pg_stat_activity` | `kvstore` |
/// | `target_session_attrs` | `any`, or `read-write` to pick the primary of several hosts | `any` |
/// | `sslmode` | `disable`, or `require`/`verify-ca`/`verify-full` (all verify the server's certificate, as `verify-full` does) | `disable` |
/// | `tls`, `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name` | TLS with a private CA, a client certificate and another name to verify ([`TlsConfig`]) | no TLS |
///
/// Schema and table names are lowercase identifiers (`[a-z_][a-z0-9_]*`), at most 30 and 24
/// bytes, so every name derived from them fits PostgreSQL's 63-byte limit unquoted.
///
/// # Examples
///
/// ```
/// use kvstore_postgres::PostgresConfig;
///
/// let config = "postgres://app:pw@db1,db2:5433/services?table=kv&target_session_attrs=read-write"
///     .parse::<PostgresConfig>()?;
/// assert_eq!(config.hosts, [("db1".to_owned(), 5432), ("db2".to_owned(), 5433)]);
/// assert_eq!((config.database.as_str(), config.table.as_str()), ("services", "kv"));
/// assert!(!format!("{config:?}").contains("pw"));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone, Setters)]
#[derive_where(Debug)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct PostgresConfig {
    /// `(host, port)` of each server, tried in order.
    pub hosts: Vec<(String, u16)>,
    /// The database user.
    pub user: String,
    /// The password (hidden in `Debug`).
    #[derive_where(skip)]
    pub password: Option<String>,
    /// The database.
    #[setters(generate, into)]
    pub database: String,
    /// The schema of the store's tables.
    pub schema: String,
    /// The pairs table's name.
    pub table: String,
    /// Connect timeout.
    #[setters(generate)]
    pub connect_timeout: Duration,
    /// Per-request timeout.
    #[setters(generate)]
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    #[setters(generate)]
    pub max_value_size: usize,
    /// Pooled connections.
    pub pool_size: usize,
    /// Time between two looks for expired keys and holds.
    pub reap_interval: Duration,
    /// Revisions the change log keeps.
    pub log_retention: u64,
    /// How long a watch retries after losing its connection.
    pub watch_reconnect_timeout: Duration,
    /// Which of several hosts to connect to.
    pub target_session: TargetSession,
    /// The name the store's sessions show in `pg_stat_activity`.
    pub application_name: String,
    /// TLS settings; `None`: plain TCP.
    #[setters(generate, strip_option)]
    pub tls: Option<TlsConfig>,
}

impl PostgresConfig {
    /// A configuration for one server, as user `postgres` on database `postgres`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        PostgresConfig {
            hosts: vec![(host.into(), port)],
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            schema: DEFAULT_SCHEMA.into(),
            table: DEFAULT_TABLE.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            pool_size: DEFAULT_POOL_SIZE,
            reap_interval: DEFAULT_REAP_INTERVAL,
            log_retention: DEFAULT_LOG_RETENTION,
            watch_reconnect_timeout: DEFAULT_WATCH_RECONNECT_TIMEOUT,
            target_session: TargetSession::Any,
            application_name: "kvstore".into(),
            tls: None,
        }
    }

    /// Sets user name and password.
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = user.into();
        self.password = Some(password.into());
        self
    }

    /// Sets the schema and table name.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` when either is not a lowercase identifier within its length limit.
    pub fn with_table(mut self, schema: &str, table: &str) -> Result<Self> {
        self.schema = identifier("schema", schema, 30)?;
        self.table = identifier("table", table, 24)?;
        Ok(self)
    }
}

/// `name` when it is a lowercase identifier of at most `max` bytes.
fn identifier(what: &str, name: &str, max: usize) -> Result<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= max {
        return Ok(name.to_owned());
    }
    Err(Error::invalid_config(
        BACKEND,
        format!(
            "{what} {name:?}: expected a lowercase identifier ([a-z_][a-z0-9_]*) of at most {max} bytes"
        ),
    ))
}

/// `host[:port]` (IPv6 in brackets) as `(host, port)`.
fn host_port(url: &str, host: &str) -> Result<(String, u16)> {
    let bad =
        || Error::invalid_config(BACKEND, format!("{:?}: bad host {host:?}", redact_url(url)));
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.starts_with('[') || name.ends_with(']') => {
            (name, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (host, 5432),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name.to_owned(), port))
}

impl FromStr for PostgresConfig {
    type Err = Error;

    /// Parses a `postgres://` or `postgresql://` URL (see above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, no host, a bad port, an unknown option or
    /// an unparsable value, naming the URL without its password.
    fn from_str(url: &str) -> Result<Self> {
        let scheme = crate::SCHEMES
            .iter()
            .find(|s| url.starts_with(&format!("{s}://")))
            .copied()
            .unwrap_or(crate::SCHEMES[0]);
        let parsed = parse_multi_host_url(BACKEND, scheme, url)?;
        let hosts = parsed
            .hosts
            .iter()
            .map(|h| host_port(url, h))
            .collect::<Result<Vec<_>>>()?;
        let mut config = PostgresConfig::new("", 0);
        config.hosts = hosts;
        if let Some((user, password)) = parsed.credentials {
            config.user = user;
            config.password = (!password.is_empty()).then_some(password);
        }
        config.database = if parsed.path.is_empty() {
            config.user.clone()
        } else {
            parsed.path.clone()
        };
        let (mut schema, mut table) = (config.schema.clone(), config.table.clone());
        let mut ssl = false;
        let query = parsed.query.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let option = |config: &mut Self, name: &str, value: &str| {
            match name {
                "schema" => schema = value.to_owned(),
                "table" => table = value.to_owned(),
                "timeout" => config.connect_timeout = duration_option(BACKEND, name, value)?,
                "request_timeout" => {
                    config.request_timeout = duration_option(BACKEND, name, value)?;
                }
                "max_value_size" => config.max_value_size = size_option(BACKEND, name, value)?,
                "pool_size" => {
                    config.pool_size = size_option(BACKEND, name, value)?;
                    if config.pool_size == 0 {
                        return Err(Error::invalid_config(
                            BACKEND,
                            "pool_size must be at least 1",
                        ));
                    }
                }
                "reap_interval" => config.reap_interval = duration_option(BACKEND, name, value)?,
                "log_retention" => {
                    config.log_retention = size_option(BACKEND, name, value)? as u64;
                }
                "watch_reconnect_timeout" => {
                    config.watch_reconnect_timeout = duration_option(BACKEND, name, value)?;
                }
                "application_name" => config.application_name = value.to_owned(),
                "target_session_attrs" => {
                    config.target_session = choice_option(
                        BACKEND,
                        name,
                        value,
                        &[
                            ("any", TargetSession::Any),
                            ("read-write", TargetSession::ReadWrite),
                        ],
                    )?;
                }
                "sslmode" => {
                    ssl = choice_option(
                        BACKEND,
                        name,
                        value,
                        &[
                            ("disable", false),
                            ("require", true),
                            ("verify-ca", true),
                            ("verify-full", true),
                        ],
                    )?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let config = url_options(BACKEND, config, query, Self::with_tls, option)?;
        let config = config.with_table(&schema, &table)?;
        Ok(if ssl && config.tls.is_none() {
            config.with_tls(TlsConfig::default())
        } else {
            config
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_credentials_and_options() {
        let c = PostgresConfig::from_str(
            "postgresql://u%40x:p%3Aw@h1,[::1]:6000/db?timeout=2s&schema=apps&table=kv_1",
        )
        .unwrap();
        assert_eq!(c.hosts, [("h1".into(), 5432), ("::1".into(), 6000)]);
        assert_eq!(
            (c.user.as_str(), c.password.as_deref()),
            ("u@x", Some("p:w"))
        );
        assert_eq!(
            (c.database.as_str(), c.schema.as_str(), c.table.as_str()),
            ("db", "apps", "kv_1")
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(
            !format!("{c:?}").contains("p:w"),
            "Debug hides the password"
        );
    }

    #[test]
    fn database_defaults_to_the_user() {
        let c = PostgresConfig::from_str("postgres://svc@h").unwrap();
        assert_eq!(
            (c.user.as_str(), c.database.as_str(), c.password),
            ("svc", "svc", None)
        );
        let c = PostgresConfig::from_str("postgres://h?sslmode=require").unwrap();
        assert_eq!(
            (c.user.as_str(), c.database.as_str()),
            ("postgres", "postgres")
        );
        assert!(c.tls.is_some());
    }

    #[test]
    fn rejects_bad_urls() {
        kvstore_testutils::assert_invalid_urls::<PostgresConfig>(&[
            "postgres://",
            "redis://h:1",
            "postgres://h?x=1",
            "postgres://h:notaport",
            "postgres://h?table=Kv",
            "postgres://h?table=a-b",
            "postgres://h?schema=x%22y",
            "postgres://h?table=aaaaaaaaaaaaaaaaaaaaaaaaa",
            "postgres://h?pool_size=0",
            "postgres://h?sslmode=maybe",
            "postgres://h?target_session_attrs=primary",
            "postgres://u:SECRET@h?timeout=x",
        ]);
    }
}
