//! Typed configuration for the Consul store, and its URL form.

use derive_setters::Setters;
use derive_where::derive_where;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{duration_option, size_option, url_options};
use kvstore_core::{Error, Result, TlsConfig, normalize_dir};

use crate::BACKEND;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout (blocking queries get their wait time on top): 10 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest value: 384,000 bytes. Writes go through `/v1/txn`, whose body Consul
/// limits to `txn_max_req_len` (512 KiB by default) with the value base64-encoded (4/3 of
/// its size); this leaves room for the key and the JSON around it.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 384_000;
/// Default wait of one blocking query: 60 seconds (Consul caps it at 10 minutes).
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(60);
/// How long a watch keeps retrying after errors: 60 seconds.
pub const DEFAULT_WATCH_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests in flight at once by default, blocking queries aside.
pub const DEFAULT_MAX_REQUESTS: usize = 64;

/// Blocking queries in flight at once by default.
pub const DEFAULT_MAX_WATCH_QUERIES: usize = 64;

/// A budget option: a whole number of at least 1.
fn budget(name: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::invalid_config(
            BACKEND,
            format!("{name}={value:?}: expected a whole number of at least 1"),
        )),
    }
}

/// Configuration of a [`ConsulStore`](crate::ConsulStore).
///
/// # URL form
///
/// `consul://host:port[?options]` (HTTP) — with `tls=true` the agent is reached over HTTPS,
/// verified against the system's roots.
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `prefix` | directory under which all keys live | none |
/// | `token` | ACL token (`X-Consul-Token`) | none |
/// | `dc` | datacenter | the agent's |
/// | `ns` | namespace (Consul Enterprise) | none |
/// | `tls`, `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name` | HTTPS, with a private CA, a client certificate and another name to verify ([`TlsConfig`]) | HTTP |
/// | `timeout` | connect timeout | 5 s |
/// | `request_timeout` | per-request timeout | 10 s |
/// | `watch_wait` | wait of one blocking query | 60 s |
/// | `max_value_size` | largest value in bytes | 384,000 |
/// | `max_requests` | requests in flight at once, blocking queries aside; more are queued | 64 |
/// | `max_watch_queries` | blocking queries in flight at once (watches, lock waits); more are queued | 64 |
///
/// # Connections
///
/// Every request holds one HTTP connection to the agent, and the agent refuses a client's
/// connections past `limits.http_max_conns_per_client` (200 by default) — refused ones fail,
/// and the agent answers `429 Too Many Requests` for a while after. A store keeps its requests
/// under `max_requests + max_watch_queries` (128 by default, well under 200): calls beyond the
/// budget wait for a slot instead of failing, and a `429` is retried with backoff (then
/// reported as `Timeout`, never `NotReachable`). Watches of one key or one directory share one
/// blocking query; when distinct watched keys would need more than half the watch budget, new
/// key watches are served by a blocking query on their directory (more data per wake-up, far
/// fewer connections).
///
/// # Examples
///
/// ```
/// use kvstore_consul::ConsulConfig;
///
/// let config = "consul://10.0.0.1:8500?prefix=app1&token=s3cr3t&dc=eu1".parse::<ConsulConfig>()?;
/// assert_eq!(config.address.as_str(), "http://10.0.0.1:8500/");
/// assert_eq!(config.prefix, "app1");
/// assert_eq!(config.datacenter.as_deref(), Some("eu1"));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone, Setters)]
#[derive_where(Debug)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct ConsulConfig {
    /// Base URL of the agent's HTTP API (`http://host:port/`).
    pub address: url::Url,
    /// Directory (normalized) that holds every key; `""`: the whole keyspace.
    pub prefix: String,
    /// ACL token sent as `X-Consul-Token` (hidden in `Debug`).
    #[derive_where(skip)]
    #[setters(generate, strip_option, into)]
    pub token: Option<String>,
    /// Datacenter (`?dc=`); `None`: the agent's own.
    pub datacenter: Option<String>,
    /// Namespace (`?ns=`, Consul Enterprise); `None`: the default.
    pub namespace: Option<String>,
    /// Connect timeout.
    #[setters(generate)]
    pub connect_timeout: Duration,
    /// Per-request timeout.
    #[setters(generate)]
    pub request_timeout: Duration,
    /// Wait of one blocking query.
    pub watch_wait: Duration,
    /// How long a watch retries after errors before it ends with one.
    pub watch_reconnect_timeout: Duration,
    /// Largest value accepted, in bytes.
    #[setters(generate)]
    pub max_value_size: usize,
    /// Requests in flight at once, blocking queries aside; more are queued. Default 64.
    pub max_requests: usize,
    /// Blocking queries in flight at once (shared watches, lock waits); more are queued.
    /// Default 64.
    pub max_watch_queries: usize,
    /// TLS settings; `Some` exactly when `address` is `https://`.
    pub tls: Option<TlsConfig>,
}

impl ConsulConfig {
    /// A configuration for the agent at `host:port` over HTTP.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `host:port` is not a valid address.
    pub fn new(host_port: &str) -> Result<Self> {
        let address = url::Url::parse(&format!("http://{host_port}/"))
            .map_err(|e| Error::invalid_config(BACKEND, format!("{host_port:?}: {e}")))?;
        Ok(ConsulConfig {
            address,
            prefix: String::new(),
            token: None,
            datacenter: None,
            namespace: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            watch_wait: DEFAULT_WATCH_WAIT,
            watch_reconnect_timeout: DEFAULT_WATCH_RECONNECT_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_watch_queries: DEFAULT_MAX_WATCH_QUERIES,
            tls: None,
        })
    }

    /// Sets the TLS settings and reaches the agent over HTTPS.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        // Only http → https, which `Url::set_scheme` always allows.
        let _ = self.address.set_scheme("https");
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
}

impl FromStr for ConsulConfig {
    type Err = Error;

    /// Parses a `consul://` URL (see above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, no host, a path, an unknown option or an
    /// unparsable value; `InvalidKey` for a bad `prefix`.
    fn from_str(url: &str) -> Result<Self> {
        let invalid = |msg: String| Error::invalid_config(BACKEND, msg);
        // Every message names the URL with its token hidden.
        let shown = kvstore_core::backend::redact_url(url);
        kvstore_core::backend::refuse_fragment(BACKEND, url)?;
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("{shown:?}: {e}")))?;
        if parsed.scheme() != crate::SCHEME {
            return Err(invalid(format!("{shown:?} is not a consul:// URL")));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(format!("{shown:?} names no host")))?;
        if !matches!(parsed.path(), "" | "/") {
            return Err(invalid(format!(
                "{shown:?}: consul URLs have no path; use ?prefix="
            )));
        }
        let port = parsed.port().unwrap_or(8500);
        let config = ConsulConfig::new(&format!("{host}:{port}"))?;
        let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let query = query.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let option = |config: &mut Self, name: &str, value: &str| {
            let duration = || duration_option(BACKEND, name, value);
            match name {
                "prefix" => config.prefix = normalize_dir(value)?.to_owned(),
                "token" => config.token = Some(value.to_owned()),
                "dc" => config.datacenter = Some(value.to_owned()),
                "ns" => config.namespace = Some(value.to_owned()),
                "timeout" => config.connect_timeout = duration()?,
                "request_timeout" => config.request_timeout = duration()?,
                "watch_wait" => config.watch_wait = duration()?,
                "max_value_size" => config.max_value_size = size_option(BACKEND, name, value)?,
                "max_requests" => config.max_requests = budget(name, value)?,
                "max_watch_queries" => config.max_watch_queries = budget(name, value)?,
                _ => return Ok(false),
            }
            Ok(true)
        };
        url_options(BACKEND, config, query, Self::with_tls, option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let c = ConsulConfig::from_str(
            "consul://127.0.0.1:8501?prefix=/a/&token=t0k&ns=team&tls=true&watch_wait=30s",
        )
        .unwrap();
        assert_eq!(c.address.as_str(), "https://127.0.0.1:8501/");
        assert_eq!(c.prefix, "a");
        assert_eq!(c.token.as_deref(), Some("t0k"));
        assert_eq!(c.namespace.as_deref(), Some("team"));
        assert_eq!(c.watch_wait, Duration::from_secs(30));
        assert!(!format!("{c:?}").contains("t0k"), "Debug hides the token");
        let default_port = ConsulConfig::from_str("consul://agent").unwrap();
        assert_eq!(default_port.address.as_str(), "http://agent:8500/");
    }

    #[test]
    fn rejects_bad_urls() {
        kvstore_testutils::assert_invalid_urls::<ConsulConfig>(&[
            "consul://",
            "etcd://h:1",
            "consul://h:1?x=1",
            "consul://h:1/path",
            "consul://h:1?timeout=x",
            "consul://h:1?tls=maybe",
        ]);
    }
}
