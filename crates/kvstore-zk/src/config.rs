//! Typed configuration for the ZooKeeper store, and its URL form.

use derive_setters::Setters;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{
    choice_option, duration_option, parse_multi_host_url, size_option, url_options,
};
use kvstore_core::{Error, Result, TlsConfig, normalize_dir};

use crate::BACKEND;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout: 10 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default session timeout asked of the server: 10 seconds (the server clamps it to its
/// `minSessionTimeout`..`maxSessionTimeout`, by default 2..20 ticks).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest value: 1,000,000 bytes. ZooKeeper refuses packets over `jute.maxbuffer`
/// (1 MiB − 1 by default); this leaves room for the path, the request framing and the 16-byte
/// escape of values that start with kvstore's marker.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1_000_000;

/// Which ACL kvstore puts on the znodes it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZkAcl {
    /// `world:anyone` with every permission (ZooKeeper's `OPEN_ACL_UNSAFE`).
    Open,
    /// Every permission for the authenticated creator only (`CREATOR_ALL_ACL`); needs
    /// credentials.
    Creator,
    /// Every permission for the creator, read for everyone else.
    CreatorWorldRead,
}

/// How the session proves the credentials of [`ZkConfig::digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ZkAuth {
    /// The `digest` scheme (`addauth digest user:password`); needs no server configuration.
    /// The session's identity is `digest:user:<hash>`.
    #[default]
    Digest,
    /// SASL with DIGEST-MD5, checked by the server's `SASLAuthenticationProvider` against its
    /// JAAS `Server` section; a wrong password fails the connect. The session's identity is
    /// `sasl:user`.
    SaslDigestMd5,
}

/// The values of the `auth` URL option.
const AUTH_CHOICES: [(&str, ZkAuth); 2] =
    [("digest", ZkAuth::Digest), ("sasl", ZkAuth::SaslDigestMd5)];

/// The values of the `acl` URL option.
const ACL_CHOICES: [(&str, ZkAcl); 3] = [
    ("open", ZkAcl::Open),
    ("creator", ZkAcl::Creator),
    ("creator_read", ZkAcl::CreatorWorldRead),
];

/// Configuration of a [`ZkStore`](crate::ZkStore).
///
/// # URL form
///
/// `zk://[user:password@]host1:port1,host2:port2[/chroot][?options]`
///
/// The chroot is the znode under which every key lives (`zk://h:2181/app` stores key `a/b` at
/// `/app/a/b`); it is created on demand. With `user:password`, the session authenticates with
/// the `digest` scheme and nodes are created with the `creator` ACL unless `acl` says otherwise.
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `prefix` | directory under the chroot that holds every key | none |
/// | `timeout` | connect timeout | 5 s |
/// | `session_timeout` | session timeout asked of the server | 10 s |
/// | `request_timeout` | per-request timeout | 10 s |
/// | `max_value_size` | largest value in bytes | 1,000,000 |
/// | `acl` | ACL of created nodes: `open`, `creator`, `creator_read` | `open`, or `creator` with credentials |
/// | `auth` | how the credentials authenticate: `digest` or `sasl` (SASL DIGEST-MD5, see [`ZkAuth`]) | `digest` |
/// | `tls_ca`, `tls_cert`, `tls_key` | TLS to the servers' `secureClientPort` with this CA and client certificate ([`TlsConfig`]; `tls_ca` is required) | plain TCP |
///
/// # Examples
///
/// ```
/// use kvstore_zk::{ZkAcl, ZkConfig};
///
/// let config = "zk://app:secret@10.0.0.1:2181,10.0.0.2:2181/services?session_timeout=6s".parse::<ZkConfig>()?;
/// assert_eq!(config.hosts, ["10.0.0.1:2181", "10.0.0.2:2181"]);
/// assert_eq!(config.prefix, "services");
/// assert_eq!(config.acl, ZkAcl::Creator);
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Clone, Setters)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct ZkConfig {
    /// Servers, `host:port`.
    pub hosts: Vec<String>,
    /// Directory (normalized, without leading `/`) holding every key: chroot and prefix
    /// joined; `""` is the znode root. (The same knob as every backend's `prefix`.)
    pub prefix: String,
    /// `digest` credentials (`user`, `password`); the password is hidden in `Debug`.
    pub digest: Option<(String, String)>,
    /// ACL put on created znodes.
    #[setters(generate)]
    pub acl: ZkAcl,
    /// How the credentials authenticate.
    pub auth: ZkAuth,
    /// Connect timeout.
    #[setters(generate)]
    pub connect_timeout: Duration,
    /// Session timeout asked of the server.
    #[setters(generate)]
    pub session_timeout: Duration,
    /// Per-request timeout.
    #[setters(generate)]
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    #[setters(generate)]
    pub max_value_size: usize,
    /// TLS settings (ZooKeeper's `secureClientPort`). ZooKeeper TLS needs a CA file
    /// (`tls_ca`); the server's certificate is verified against the host of each server in
    /// the connect string (zookeeper-client cannot name another, so `tls_server_name` is
    /// refused).
    #[setters(generate, strip_option)]
    pub tls: Option<TlsConfig>,
}

impl std::fmt::Debug for ZkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkConfig")
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("user", &self.digest.as_ref().map(|(u, _)| u))
            .field("acl", &self.acl)
            .field("auth", &self.auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ZkConfig {
    /// A configuration for these servers (`host:port`), keys at the znode root.
    pub fn new<S: AsRef<str>>(hosts: &[S]) -> Self {
        ZkConfig {
            hosts: hosts.iter().map(|h| h.as_ref().to_owned()).collect(),
            prefix: String::new(),
            digest: None,
            acl: ZkAcl::Open,
            auth: ZkAuth::Digest,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            tls: None,
        }
    }

    /// Sets the directory that holds every key (the chroot of a URL, joined with its
    /// `prefix`).
    ///
    /// # Errors
    ///
    /// `InvalidKey` when `prefix` breaks the key grammar.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        self.prefix = normalize_dir(prefix)?.to_owned();
        Ok(self)
    }

    /// Authenticates with the `digest` scheme and creates nodes with the `creator` ACL.
    pub fn with_digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), password.into()));
        self.acl = ZkAcl::Creator;
        self
    }

    /// `host1:port1,host2:port2`, the connect string of the ZooKeeper client.
    pub(crate) fn connect_string(&self) -> String {
        self.hosts.join(",")
    }

    /// Checks the settings that cannot be checked field by field.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |msg: &str| Err(Error::invalid_config(BACKEND, msg.to_owned()));
        if self.hosts.is_empty() {
            return invalid("no ZooKeeper server given");
        }
        if self.auth == ZkAuth::SaslDigestMd5 && self.digest.is_none() {
            return invalid("auth=sasl needs credentials (zk://user:password@...)");
        }
        if self.acl != ZkAcl::Open && self.digest.is_none() {
            return invalid("the creator ACLs need digest credentials (zk://user:password@...)");
        }
        if self.session_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("timeouts must be greater than zero");
        }
        if let Some(tls) = &self.tls {
            if tls.ca.is_none() {
                return invalid(
                    "ZooKeeper TLS needs the CA file that signed the server's certificate (tls_ca)",
                );
            }
            if tls.server_name.is_some() {
                return invalid(
                    "tls_server_name is not supported: zookeeper-client verifies each server's host",
                );
            }
        }
        Ok(())
    }
}

impl FromStr for ZkConfig {
    type Err = Error;

    /// Parses a `zk://` URL (see above). Several hosts are separated by commas, which is why
    /// this takes the URL as text rather than a parsed `Url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, no host, an unknown option or an unparsable
    /// value; `InvalidKey` for a bad chroot or `prefix`.
    fn from_str(url: &str) -> Result<Self> {
        let parsed = parse_multi_host_url(BACKEND, crate::SCHEME, url)?;
        let mut config = ZkConfig::new(&parsed.hosts).with_prefix(&parsed.path)?;
        if let Some((user, password)) = parsed.credentials {
            config = config.with_digest(user, password);
        }
        let mut prefix = None;
        let query = parsed.query.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let option = |config: &mut Self, name: &str, value: &str| {
            let duration = || duration_option(BACKEND, name, value);
            match name {
                "prefix" => prefix = Some(normalize_dir(value)?.to_owned()),
                "timeout" => config.connect_timeout = duration()?,
                "session_timeout" => config.session_timeout = duration()?,
                "request_timeout" => config.request_timeout = duration()?,
                "max_value_size" => config.max_value_size = size_option(BACKEND, name, value)?,
                "auth" => config.auth = choice_option(BACKEND, name, value, &AUTH_CHOICES)?,
                "acl" => config.acl = choice_option(BACKEND, name, value, &ACL_CHOICES)?,
                _ => return Ok(false),
            }
            Ok(true)
        };
        let mut config = url_options(BACKEND, config, query, Self::with_tls, option)?;
        if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
            config.prefix = if config.prefix.is_empty() {
                prefix
            } else {
                format!("{}/{prefix}", config.prefix)
            };
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_chroot_credentials_and_options() {
        let c = ZkConfig::from_str(
            "zk://u%40x:p%3Aw@h1:1,h2:2/app/?prefix=/svc/&timeout=2s&acl=creator_read",
        )
        .unwrap();
        assert_eq!(c.hosts, ["h1:1", "h2:2"]);
        assert_eq!(c.connect_string(), "h1:1,h2:2");
        assert_eq!(c.prefix, "app/svc");
        assert_eq!(
            c.digest,
            Some(("u@x".to_owned(), "p:w".to_owned())),
            "credentials are percent-decoded"
        );
        assert_eq!(c.acl, ZkAcl::CreatorWorldRead);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(
            !format!("{c:?}").contains("p:w"),
            "Debug hides the password"
        );
        let plain = ZkConfig::from_str("zk://h:1").unwrap();
        assert_eq!((plain.prefix.as_str(), plain.acl), ("", ZkAcl::Open));
    }

    #[test]
    fn rejects_bad_urls() {
        kvstore_testutils::assert_invalid_urls::<ZkConfig>(&[
            "zk://",
            "etcd://h:1",
            "zk://h:1?x=1",
            "zk://h:1?timeout=x",
            "zk://h:1?acl=creator",
            "zk://h:1?acl=nobody",
            "zk://h:1?auth=sasl",
            "zk://u:SECRET@h:1?auth=kerberos",
            "zk://u:PW@127.0.0.1:notaport",
            "zk://h:1?tls=true",
            "zk://h:1?tls_ca=/ca.pem&tls_server_name=zk",
        ]);
        assert!(matches!(
            ZkConfig::from_str("zk://h:1/a//b"),
            Err(Error::InvalidKey { .. })
        ));
    }
}
