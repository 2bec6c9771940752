//! Typed configuration for the Redis store, and its URL form.

use std::time::Duration;

use kvstore_core::backend::{bool_option, duration_option, size_option};
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
/// How long a watch keeps trying to re-subscribe after losing its connection before it ends
/// with an error: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of a [`RedisStore`](crate::RedisStore).
///
/// # URL form
///
/// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS, with options:
///
/// | query option | meaning | default |
/// | --- | --- | --- |
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
/// let config = RedisConfig::from_url("redis://:secret@127.0.0.1:6379/2?prefix=app1&timeout=2s")?;
/// assert_eq!(config.prefix, "app1");
/// assert_eq!(config.connect_timeout, std::time::Duration::from_secs(2));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server URL as the redis crate reads it (`redis://…` or `rediss://…`), with
    /// credentials and database number but without kvstore's options.
    pub server_url: String,
    /// Directory (normalized, without slashes at the ends) that holds every key; `""`: the
    /// root of the database.
    pub prefix: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-command response timeout.
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    pub max_value_size: usize,
    /// How long a watch retries after losing its connection.
    pub watch_reconnect_timeout: Duration,
    /// Whether `list`, `watch_tree` and `delete_tree` also find plain strings that other
    /// clients wrote (one `SCAN … TYPE string` pass over the database per call, so O(keys in
    /// the database)). `get`, `exists`, `delete`, `watch` and CAS read such strings either way.
    pub foreign_strings: bool,
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
        }
    }

    /// Sets whether directory calls also find plain strings written by other clients (see
    /// [`foreign_strings`](Self::foreign_strings)).
    pub fn with_foreign_strings(mut self, foreign_strings: bool) -> Self {
        self.foreign_strings = foreign_strings;
        self
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

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Parses a `redis://` or `rediss://` URL with kvstore's options (see above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, a missing host, an unknown option or an
    /// unparsable value; `InvalidKey` for a bad `prefix`.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |msg: String| Error::invalid_config(BACKEND, msg);
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
            let duration = || duration_option(BACKEND, &name, &value);
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
            if TlsConfig::url_option(&mut tls, BACKEND, &name, &value)? {
                continue;
            }
            match name.as_ref() {
                "prefix" => config = config.with_prefix(&value)?,
                "timeout" => config.connect_timeout = duration()?,
                "request_timeout" => config.request_timeout = duration()?,
                "max_value_size" => config.max_value_size = size_option(BACKEND, &name, &value)?,
                "foreign_strings" => {
                    config.foreign_strings = bool_option(BACKEND, &name, &value)?;
                }
                _ => return Err(invalid(format!("unknown option {name:?}"))),
            }
        }
        if let Some(tls) = tls {
            config = config.with_tls(tls);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_split_from_the_server_url() {
        let c =
            RedisConfig::from_url("redis://u:p@h:1/3?prefix=/a/b/&request_timeout=250ms").unwrap();
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
        let c = RedisConfig::from_url("redis://h:1?tls_ca=/ca.pem").unwrap();
        assert_eq!(c.server_url, "rediss://h:1");
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(RedisConfig::from_url("rediss://h:1").unwrap().tls.is_some());
        assert!(RedisConfig::from_url("redis://h:1").unwrap().tls.is_none());
    }

    #[test]
    fn bad_urls_are_invalid_config() {
        for u in [
            "redis://h:1?x=1",
            "redis://h:1?timeout=never",
            "http://h:1",
            "redis://user:PW@127.0.0.1:notaport/0",
            "rediss://h:1?tls_server_name=x",
            "redis://h:1?tls=true",
        ] {
            assert!(
                matches!(RedisConfig::from_url(u), Err(Error::InvalidConfig { .. })),
                "{u}"
            );
        }
    }
}
