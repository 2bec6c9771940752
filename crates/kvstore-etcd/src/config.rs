//! Typed configuration for the etcd store, and its URL form.

use derive_setters::Setters;
use derive_where::derive_where;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{
    bool_option, duration_option, parse_multi_host_url, size_option, url_options,
};
use kvstore_core::{Error, Result, TlsConfig, normalize_dir};

use crate::BACKEND;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout: 10 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest value: 1 MiB (etcd's default request limit is 1.5 MiB,
/// `--max-request-bytes`).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// How long a watch keeps trying to resume after losing its stream: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of an [`EtcdStore`](crate::EtcdStore).
///
/// # URL form
///
/// `etcd://[user:password@]host1:port1,host2:port2[?options]`
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `prefix` | directory under which all keys live | none |
/// | `leading_slash` | `true`: etcd keys start with `/` (`/app/a` for key `app/a`), as `etcdctl put /app/a` and other tools that use path-style keys write them | `false` (`app/a`, as valkeyrie and Traefik write them) |
/// | `timeout` | connect timeout | 5 s |
/// | `request_timeout` | per-request timeout | 10 s |
/// | `max_value_size` | largest value in bytes | 1 MiB |
/// | `tls`, `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name` | TLS (`https://` endpoints) with a private CA, a client certificate and another name to verify ([`TlsConfig`]) | plain HTTP/2 |
///
/// With a user name and password the store authenticates and refreshes its token whenever the
/// server says it expired (etcd `--auth-token-ttl`), so a long-lived store outlives any token.
///
/// # Examples
///
/// ```
/// use kvstore_etcd::EtcdConfig;
///
/// let config = "etcd://root:pw@10.0.0.1:2379,10.0.0.2:2379?prefix=app1".parse::<EtcdConfig>()?;
/// assert_eq!(config.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
/// assert_eq!(config.username.as_deref(), Some("root"));
/// assert_eq!(config.prefix, "app1");
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone, Setters)]
#[derive_where(Debug)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct EtcdConfig {
    /// Client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Directory (normalized) that holds every key; `""`: the whole keyspace.
    pub prefix: String,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication (hidden in `Debug`).
    #[derive_where(skip)]
    pub password: Option<String>,
    /// Connect timeout.
    #[setters(generate)]
    pub connect_timeout: Duration,
    /// Per-request timeout.
    #[setters(generate)]
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    #[setters(generate)]
    pub max_value_size: usize,
    /// Whether etcd keys carry a leading `/`: key `app/a` is the etcd key `/app/a` (with a
    /// prefix `p`, `/p/app/a`). For data written by tools that use path-style keys.
    #[setters(generate)]
    pub leading_slash: bool,
    /// How long a watch retries after losing its stream.
    pub watch_reconnect_timeout: Duration,
    /// TLS settings; `Some` makes every endpoint `https://`.
    pub tls: Option<TlsConfig>,
}

impl EtcdConfig {
    /// A configuration for these endpoints (`host:port` or `http://host:port`).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Self {
        EtcdConfig {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let e = e.as_ref();
                    if e.contains("://") {
                        e.to_owned()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
            prefix: String::new(),
            username: None,
            password: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            leading_slash: false,
            watch_reconnect_timeout: DEFAULT_WATCH_RECONNECT_TIMEOUT,
            tls: None,
        }
    }

    /// Sets the TLS settings and makes every `http://` endpoint `https://`.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        for endpoint in &mut self.endpoints {
            if let Some(rest) = endpoint.strip_prefix("http://") {
                *endpoint = format!("https://{rest}");
            }
        }
        self.tls = Some(tls);
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

    /// Sets user name and password.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }
}

impl FromStr for EtcdConfig {
    type Err = Error;

    /// Parses an `etcd://` URL (see above). Several hosts are separated by commas, which is
    /// why this takes the URL as text rather than a parsed `Url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, no host, an unknown option or an unparsable
    /// value; `InvalidKey` for a bad `prefix`.
    fn from_str(url: &str) -> Result<Self> {
        let parsed = parse_multi_host_url(BACKEND, crate::SCHEME, url)?;
        if !parsed.path.is_empty() {
            return Err(Error::invalid_config(
                BACKEND,
                format!(
                    "{:?}: etcd URLs have no path; use ?prefix=",
                    kvstore_core::backend::redact_url(url)
                ),
            ));
        }
        let mut config = EtcdConfig::new(&parsed.hosts);
        if let Some((user, password)) = parsed.credentials {
            config = config.with_credentials(user, password);
        }
        let query = parsed.query.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let option = |config: &mut Self, name: &str, value: &str| {
            match name {
                "prefix" => config.prefix = normalize_dir(value)?.to_owned(),
                "leading_slash" => config.leading_slash = bool_option(BACKEND, name, value)?,
                "timeout" => config.connect_timeout = duration_option(BACKEND, name, value)?,
                "request_timeout" => {
                    config.request_timeout = duration_option(BACKEND, name, value)?;
                }
                "max_value_size" => config.max_value_size = size_option(BACKEND, name, value)?,
                _ => return Ok(false),
            }
            Ok(true)
        };
        url_options(BACKEND, config, query, EtcdConfig::with_tls, option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_credentials_and_options() {
        let c = EtcdConfig::from_str("etcd://u%40x:p%3Aw@h1:1,h2:2?timeout=2s&prefix=/a/").unwrap();
        assert_eq!(c.endpoints, ["http://h1:1", "http://h2:2"]);
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u@x"), Some("p:w"))
        );
        assert_eq!(
            (c.connect_timeout, c.prefix.as_str()),
            (Duration::from_secs(2), "a")
        );
        assert!(
            !format!("{c:?}").contains("p:w"),
            "Debug hides the password"
        );
    }

    #[test]
    fn tls_options_make_endpoints_https() {
        let c =
            EtcdConfig::from_str("etcd://h1:1,h2:2?tls_ca=/ca.pem&tls_server_name=etcd").unwrap();
        assert_eq!(c.endpoints, ["https://h1:1", "https://h2:2"]);
        assert_eq!(c.tls.unwrap().server_name.as_deref(), Some("etcd"));
    }

    #[test]
    fn rejects_bad_urls() {
        kvstore_testutils::assert_invalid_urls::<EtcdConfig>(&[
            "etcd://",
            "redis://h:1",
            "etcd://h:1?x=1",
            "etcd://h:1/path",
            "etcd://h:1?timeout=x",
            "etcd://u:PW@127.0.0.1:notaport",
            "etcd://h:1?tls=maybe",
        ]);
    }
}
