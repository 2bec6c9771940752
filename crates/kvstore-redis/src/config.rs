//! Typed configuration for the Redis store, and its URL form.

use derive_setters::Setters;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{bool_option, duration_option, parse_multi_host_url, size_option};
use kvstore_core::{Error, Result, TlsConfig, normalize_dir};
use url::Url;

use crate::BACKEND;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default response timeout: 5 seconds. (The redis crate's own 500 ms default is too short for
/// a loaded server and for scripts over large directories.)
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest value: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;
/// Default time a write waits for its replicas with [`RedisConfig::wait_replicas`]: 1 second.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// The port a Sentinel listens on when its URL names none: 26379.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// How long a watch keeps trying to re-subscribe after losing its connection before it ends
/// with an error: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of a [`RedisStore`](crate::RedisStore).
///
/// # URL form
///
/// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS; or, for a primary that
/// Redis Sentinel monitors,
/// `redis+sentinel://[user:password@]sentinel1:port1[,sentinel2:port2…]/SERVICE[/db]`, where
/// SERVICE is the name the Sentinels monitor the primary under (`sentinel monitor SERVICE …`),
/// the Sentinels' port defaults to 26379, and the user and password are the Redis servers'
/// (see [`SentinelConfig`]). Options:
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `wait_replicas` | a write succeeds only once this many replicas confirm it (`WAIT`; see [`wait_replicas`](Self::wait_replicas)) | 0 |
/// | `wait_timeout` | how long a write waits for those replicas | 1 s |
/// | `sentinel_user`, `sentinel_password` | the Sentinels' own login (`redis+sentinel://` only), when they demand one | none |
/// | `tls_ca`, `tls_cert`, `tls_key` | TLS with a private CA and a client certificate ([`TlsConfig`]; turns `redis://` into `rediss://`) | the platform's roots, no client certificate |
/// | `prefix` | directory under which all keys live (`prefix=app1` → `app1/<key>`) | none |
/// | `timeout` | connect timeout | 5 s |
/// | `request_timeout` | per-command response timeout | 5 s |
/// | `max_value_size` | largest value in bytes | 16 MiB |
/// | `foreign_strings` | `true`: `list`, `watch_tree` and `delete_tree` also find plain strings written by other clients (`redis-cli SET`, valkeyrie, Traefik), with a `SCAN` of the database per call | `false` (single-key calls read such strings either way) |
///
/// # Examples
///
/// ```
/// use kvstore_redis::RedisConfig;
///
/// let config = "redis://:secret@127.0.0.1:6379/2?prefix=app1&timeout=2s".parse::<RedisConfig>()?;
/// assert_eq!(config.prefix, "app1");
/// assert_eq!(config.connect_timeout, std::time::Duration::from_secs(2));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone, Setters)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct RedisConfig {
    /// The server URL as the redis crate reads it (`redis://…` or `rediss://…`), with
    /// credentials and database number but without kvstore's options.
    pub server_url: String,
    /// Directory (normalized, without slashes at the ends) that holds every key; `""`: the
    /// root of the database.
    pub prefix: String,
    /// Connect timeout.
    #[setters(generate)]
    pub connect_timeout: Duration,
    /// Per-command response timeout.
    #[setters(generate)]
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    #[setters(generate)]
    pub max_value_size: usize,
    /// How long a watch retries after losing its connection.
    pub watch_reconnect_timeout: Duration,
    /// Whether `list`, `watch_tree` and `delete_tree` also find plain strings that other
    /// clients wrote (one `SCAN … TYPE string` pass over the database per call, so O(keys in
    /// the database)). `get`, `exists`, `delete`, `watch` and CAS read such strings either way.
    #[setters(generate)]
    pub foreign_strings: bool,
    /// How many replicas must confirm each write before it succeeds: after every mutating call
    /// (put, delete, CAS, txn, lock acquire, renew and release, `keep_alive` writes) the store
    /// sends `WAIT wait_replicas wait_timeout` in the same round trip. When fewer replicas
    /// confirm in time, the call fails with [`Error::Timeout`]: the primary applied the write
    /// but a failover may still lose it, so its outcome is unknown. With `0` (the default), a
    /// failover can lose writes the primary acknowledged but had not yet sent to the replica
    /// Sentinel promotes (Redis replication is asynchronous; source: Redis docs, "Redis
    /// replication" and "WAIT"). A write is lost anyway if the primary fails before the
    /// replica that confirmed it is promoted and that replica fails too.
    pub wait_replicas: u32,
    /// How long a write waits for `wait_replicas` confirmations; must be shorter than
    /// `request_timeout`.
    pub wait_timeout: Duration,
    /// `Some` for a primary found through Redis Sentinel (`redis+sentinel://`); then
    /// `server_url` is unused and the store follows the primary the Sentinels name.
    pub sentinel: Option<SentinelConfig>,
    /// TLS settings; `Some` exactly when `server_url` is `rediss://`. The server's certificate
    /// is verified against the URL's host (the redis client has no way to name another, so
    /// `tls_server_name` is refused).
    pub tls: Option<TlsConfig>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = Url::parse(&self.server_url).ok();
        if let Some(u) = shown.as_mut()
            && u.password().is_some()
        {
            let _ = u.set_password(Some("***"));
        }
        f.debug_struct("RedisConfig")
            .field(
                "server_url",
                &shown.map_or_else(|| "<unparsable>".to_owned(), |u| u.to_string()),
            )
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("foreign_strings", &self.foreign_strings)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("sentinel", &self.sentinel)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisConfig {
    /// A configuration for `server_url` (`redis://host:port`) with default settings.
    pub fn new(server_url: impl Into<String>) -> Self {
        let server_url: String = server_url.into();
        RedisConfig {
            tls: server_url.starts_with("rediss:").then(TlsConfig::default),
            server_url,
            prefix: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            watch_reconnect_timeout: DEFAULT_WATCH_RECONNECT_TIMEOUT,
            foreign_strings: false,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            sentinel: None,
        }
    }

    /// A configuration for the primary that the Sentinels of `sentinel` name, with default
    /// settings.
    pub fn sentinel(sentinel: SentinelConfig) -> Self {
        RedisConfig {
            sentinel: Some(sentinel),
            ..RedisConfig::new("redis://sentinel")
        }
    }

    /// Sets how many replicas must confirm each write, and for how long a write waits for
    /// them (see [`wait_replicas`](Self::wait_replicas)).
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    /// Checks the settings that `connect` relies on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `wait_timeout` is not shorter than `request_timeout` (the
    /// response to a write would time out before its `WAIT` ends), or a Sentinel configuration
    /// has TLS or names no Sentinel or service.
    pub(crate) fn check(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::invalid_config(BACKEND, msg));
        if self.wait_replicas > 0 && self.wait_timeout >= self.request_timeout {
            return invalid(format!(
                "wait_timeout ({:?}) must be shorter than request_timeout ({:?})",
                self.wait_timeout, self.request_timeout
            ));
        }
        if let Some(sentinel) = &self.sentinel {
            if self.tls.is_some() {
                return invalid("TLS through Redis Sentinel is not supported yet".to_owned());
            }
            if sentinel.sentinels.is_empty() || sentinel.service.is_empty() {
                return invalid(
                    "a Sentinel configuration needs Sentinels and a service name".to_owned(),
                );
            }
        }
        Ok(())
    }

    /// Sets the key prefix directory.
    ///
    /// # Errors
    ///
    /// `InvalidKey` when `prefix` breaks the key grammar.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        self.prefix = normalize_dir(prefix)?.to_owned();
        Ok(self)
    }

    /// Sets the TLS settings (a private CA, a client certificate) and switches the server URL
    /// to `rediss://`.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        if let Some(rest) = self.server_url.strip_prefix("redis:") {
            self.server_url = format!("rediss:{rest}");
        }
        self.tls = Some(tls);
        self
    }

    /// Applies one of the options every URL form shares; `false` for another name.
    fn common_option(&mut self, name: &str, value: &str) -> Result<bool> {
        let duration = || duration_option(BACKEND, name, value);
        match name {
            "prefix" => self.prefix = normalize_dir(value)?.to_owned(),
            "timeout" => self.connect_timeout = duration()?,
            "request_timeout" => self.request_timeout = duration()?,
            "max_value_size" => self.max_value_size = size_option(BACKEND, name, value)?,
            "foreign_strings" => self.foreign_strings = bool_option(BACKEND, name, value)?,
            "wait_replicas" => {
                self.wait_replicas = value.parse().map_err(|_| {
                    Error::invalid_config(
                        BACKEND,
                        format!("wait_replicas={value:?} is not a number of replicas"),
                    )
                })?;
            }
            "wait_timeout" => self.wait_timeout = duration()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `redis+sentinel://[user:password@]h1:p1,h2:p2/SERVICE[/db][?options]`.
    fn from_sentinel_url(url: &str) -> Result<Self> {
        let invalid = |msg: String| Error::invalid_config(BACKEND, msg);
        let parsed = parse_multi_host_url(BACKEND, "redis+sentinel", url)?;
        let mut path = parsed.path.split('/').filter(|p| !p.is_empty());
        let service = path
            .next()
            .ok_or_else(|| {
                invalid(
                    "a redis+sentinel:// URL names the service as its path (/SERVICE)".to_owned(),
                )
            })?
            .to_owned();
        let db = match path.next() {
            None => 0,
            Some(db) => db
                .parse()
                .map_err(|_| invalid(format!("database {db:?} is not a number")))?,
        };
        if let Some(extra) = path.next() {
            return Err(invalid(format!(
                "unexpected path segment {extra:?} after the database"
            )));
        }
        let (user, password) = match parsed.credentials {
            Some((user, password)) => (
                (!user.is_empty()).then_some(user),
                (!password.is_empty()).then_some(password),
            ),
            None => (None, None),
        };
        let mut sentinel = SentinelConfig {
            sentinels: parsed.hosts,
            service,
            user,
            password,
            db,
            sentinel_user: None,
            sentinel_password: None,
        };
        let mut common = Vec::new();
        for (name, value) in &parsed.query {
            let login = (!value.is_empty()).then(|| value.clone());
            match name.as_str() {
                "sentinel_user" => sentinel.sentinel_user = login,
                "sentinel_password" => sentinel.sentinel_password = login,
                _ if name.starts_with("tls") => {
                    return Err(invalid(
                        "TLS through Redis Sentinel is not supported yet".to_owned(),
                    ));
                }
                _ => common.push((name, value)),
            }
        }
        let mut config = RedisConfig::sentinel(sentinel);
        for (name, value) in common {
            if !config.common_option(name, value)? {
                return Err(invalid(format!("unknown option {name:?}")));
            }
        }
        config.check()?;
        Ok(config)
    }
}

impl FromStr for RedisConfig {
    type Err = Error;

    /// Parses a `redis://` or `rediss://` URL with kvstore's options (see above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, a missing host, an unknown option or an
    /// unparsable value; `InvalidKey` for a bad `prefix`.
    fn from_str(url: &str) -> Result<Self> {
        let invalid = |msg: String| Error::invalid_config(BACKEND, msg);
        if url.starts_with("redis+sentinel:") {
            return Self::from_sentinel_url(url);
        }
        // The redis client reads `#insecure` as "skip certificate verification".
        kvstore_core::backend::refuse_fragment(BACKEND, url)?;
        // The URL may hold a password: say what is wrong, never echo it.
        let url = Url::parse(url).map_err(|e| invalid(format!("not a Redis URL: {e}")))?;
        let url = &url;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(invalid(format!(
                "scheme {:?} is not redis or rediss",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".to_owned()));
        }
        let mut server = url.clone();
        server.set_query(None);
        let mut config = RedisConfig::new(server.to_string());
        let mut tls = config.tls.take();
        for (name, value) in url.query_pairs() {
            if name == "tls_server_name" {
                return Err(invalid(
                    "tls_server_name is not supported: the redis client verifies the URL's host"
                        .to_owned(),
                ));
            }
            if name == "tls" {
                return Err(invalid(
                    "use the rediss:// scheme for TLS instead of tls=".to_owned(),
                ));
            }
            if kvstore_core::backend::tls_url_option(&mut tls, BACKEND, &name, &value)? {
                continue;
            }
            if !config.common_option(&name, &value)? {
                return Err(invalid(format!("unknown option {name:?}")));
            }
        }
        if let Some(tls) = tls {
            config = config.with_tls(tls);
        }
        config.check()?;
        Ok(config)
    }
}

/// Where a store finds its primary through Redis Sentinel: it asks the Sentinels (in order,
/// the first that answers) for the primary of `service`, checks with `ROLE` that the server
/// named is a primary, and connects to it. While connected it asks again every second and
/// at once when a call fails in a way a failover explains (a lost connection, `READONLY`), and
/// moves every later call, watch and lock to the new primary. Source: Redis docs, "Sentinel
/// client spec" (`SENTINEL get-master-addr-by-name`, verify with `ROLE`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// `host:port` of each Sentinel (port 26379 when absent).
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under.
    pub service: String,
    /// The Redis servers' ACL user, if any.
    pub user: Option<String>,
    /// The Redis servers' password, if any (never shown by `Debug`).
    pub password: Option<String>,
    /// The database number on the primary.
    pub db: i64,
    /// The Sentinels' own ACL user, if they demand a login (`sentinel_user=`).
    pub sentinel_user: Option<String>,
    /// The Sentinels' own password (`requirepass` in `sentinel.conf`), if any
    /// (`sentinel_password=`; never shown by `Debug`).
    pub sentinel_password: Option<String>,
}

impl SentinelConfig {
    /// The Sentinels at `sentinels` (`host:port`) that monitor the primary as `service`.
    pub fn new<S: AsRef<str>>(sentinels: &[S], service: impl Into<String>) -> Self {
        SentinelConfig {
            sentinels: sentinels.iter().map(|s| s.as_ref().to_owned()).collect(),
            service: service.into(),
            user: None,
            password: None,
            db: 0,
            sentinel_user: None,
            sentinel_password: None,
        }
    }
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("sentinels", &self.sentinels)
            .field("service", &self.service)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("sentinel_user", &self.sentinel_user)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_split_from_the_server_url() {
        let c =
            RedisConfig::from_str("redis://u:p@h:1/3?prefix=/a/b/&request_timeout=250ms").unwrap();
        assert_eq!(c.server_url, "redis://u:p@h:1/3");
        assert_eq!(c.prefix, "a/b");
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert!(
            !format!("{c:?}").contains(":p@"),
            "Debug must hide the password"
        );
    }

    #[test]
    fn tls_options_switch_to_rediss() {
        let c = RedisConfig::from_str("redis://h:1?tls_ca=/ca.pem").unwrap();
        assert_eq!(c.server_url, "rediss://h:1");
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(RedisConfig::from_str("rediss://h:1").unwrap().tls.is_some());
        assert!(RedisConfig::from_str("redis://h:1").unwrap().tls.is_none());
    }

    #[test]
    fn sentinel_urls() {
        let c = RedisConfig::from_str(
            "redis+sentinel://u:p%40@10.0.0.1:26380,10.0.0.2/primary/3?wait_replicas=1&wait_timeout=500ms",
        )
        .unwrap();
        let s = c.sentinel.as_ref().unwrap();
        assert_eq!(s.sentinels, ["10.0.0.1:26380", "10.0.0.2"]);
        assert_eq!(s.service, "primary");
        assert_eq!(
            (s.user.as_deref(), s.password.as_deref(), s.db),
            (Some("u"), Some("p@"), 3)
        );
        assert_eq!(
            (s.sentinel_user.as_deref(), s.sentinel_password.as_deref()),
            (None, None)
        );
        let logged_in = RedisConfig::from_str(
            "redis+sentinel://h1/svc?sentinel_user=watcher&sentinel_password=s%26cret",
        )
        .unwrap();
        let login = logged_in.sentinel.as_ref().unwrap();
        assert_eq!(
            (
                login.sentinel_user.as_deref(),
                login.sentinel_password.as_deref()
            ),
            (Some("watcher"), Some("s&cret"))
        );
        assert!(
            !format!("{logged_in:?}").contains("s&cret"),
            "Debug must hide the Sentinels' password"
        );
        assert_eq!(
            (c.wait_replicas, c.wait_timeout),
            (1, Duration::from_millis(500))
        );
        assert!(
            !format!("{c:?}").contains("p@"),
            "Debug must hide the password"
        );
        kvstore_testutils::assert_invalid_urls::<RedisConfig>(&[
            "redis+sentinel://h1,h2",
            "redis+sentinel://h1/svc/notadb",
            "redis+sentinel://h1/svc/0/extra",
            "redis+sentinel://h1/svc?tls_ca=/ca.pem",
            "redis+sentinel://h1/svc?wait_replicas=1&wait_timeout=5s",
            "redis+sentinel://h1:notaport/svc",
        ]);
    }

    #[test]
    fn bad_urls_are_invalid_config() {
        kvstore_testutils::assert_invalid_urls::<RedisConfig>(&[
            "redis://h:1?x=1",
            "redis://h:1?timeout=never",
            "http://h:1",
            "redis://user:PW@127.0.0.1:notaport/0",
            "rediss://h:1?tls_server_name=x",
            "redis://h:1?tls=true",
        ]);
    }
}
