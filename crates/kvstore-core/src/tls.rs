//! TLS settings, the same on every network backend.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// TLS settings of a network backend: which certificate authorities to trust, the client
/// certificate to present (mutual TLS), and the name to verify the server's certificate
/// against.
///
/// Every file is PEM, read when the store connects (so a rotated file is picked up by the next
/// connect, and a missing or unreadable one fails the connect with [`Error::InvalidConfig`]
/// naming the path, never its contents). The server's certificate is always verified: against
/// the CA file when one is given, otherwise against the platform's trusted roots.
///
/// # URL options
///
/// The same query options on every network backend (`rediss://`, `etcd://`, `zk://`,
/// `consul://`); any of them turns TLS on:
///
/// | option | meaning |
/// | --- | --- |
/// | `tls=true` | TLS with the platform's trusted roots (Redis: the `rediss://` scheme) |
/// | `tls_ca=/path/ca.pem` | trust only the CA certificates in this file |
/// | `tls_cert=/path/client.pem` | present this client certificate (needs `tls_key`) |
/// | `tls_key=/path/client-key.pem` | the client certificate's private key |
/// | `tls_server_name=name` | verify the server's certificate against this DNS name instead of the URL's host |
///
/// # Examples
///
/// ```
/// use kvstore_core::TlsConfig;
///
/// let tls = TlsConfig::default()
///     .with_ca("/etc/kv/ca.pem")
///     .with_client_identity("/etc/kv/client.pem", "/etc/kv/client-key.pem");
/// assert!(tls.ca.is_some() && tls.cert.is_some());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust; `None`: the platform's trusted roots.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain, for servers that demand one.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
    /// DNS name to verify the server's certificate against; `None`: the host of the URL.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    // Paths only: key material is never read into this type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The contents of a [`TlsConfig`]'s files, read by [`load_tls`]. `Debug` hides the
/// private key.
#[derive(Clone)]
#[non_exhaustive]
pub struct TlsFiles {
    /// PEM CA certificates, when a CA file was given.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, when given.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The server name to verify, when given.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "***"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConfig {
    /// Trusts only the CA certificates in this PEM file.
    pub fn with_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM chain) and private key (PEM).
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Verifies the server's certificate against `name` instead of the URL's host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// Applies one URL query option (see the table above) to `tls`, turning TLS on. Returns
/// `Ok(false)` when `name` is not a TLS option, so the caller goes on with its own.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (for `backend`) for `tls=` other than `true`/`false` or an
/// empty path.
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::tls_url_option;
///
/// let mut tls = None;
/// assert!(tls_url_option(&mut tls, "etcd", "tls_ca", "/ca.pem")?);
/// assert!(!tls_url_option(&mut tls, "etcd", "prefix", "app")?);
/// assert_eq!(tls.unwrap().ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn tls_url_option(
    tls: &mut Option<TlsConfig>,
    backend: &'static str,
    name: &str,
    value: &str,
) -> Result<bool> {
    let path = || {
        if value.is_empty() {
            Err(Error::invalid_config(backend, format!("{name} is empty")))
        } else {
            Ok(PathBuf::from(value))
        }
    };
    match name {
        "tls" => match value {
            "true" => {
                tls.get_or_insert_with(TlsConfig::default);
            }
            "false" => *tls = None,
            _ => {
                return Err(Error::invalid_config(
                    backend,
                    format!("tls={value}: expected true or false"),
                ));
            }
        },
        "tls_ca" => tls.get_or_insert_with(TlsConfig::default).ca = Some(path()?),
        "tls_cert" => tls.get_or_insert_with(TlsConfig::default).cert = Some(path()?),
        "tls_key" => tls.get_or_insert_with(TlsConfig::default).key = Some(path()?),
        "tls_server_name" => {
            tls.get_or_insert_with(TlsConfig::default).server_name = Some(value.to_owned());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Checks a URL's query options as a whole, before [`tls_url_option`] applies
/// them one by one: `tls=false` together with any `tls_*` option is a contradiction that
/// must not be settled silently in either direction (dropping a CA the user named, or
/// turning TLS on that the user turned off), whatever their order.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (for `backend`) naming the options.
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::check_tls_url_options;
///
/// assert!(check_tls_url_options("etcd", [("tls", "true"), ("tls_ca", "/ca.pem")]).is_ok());
/// assert!(check_tls_url_options("etcd", [("tls", "false"), ("tls_ca", "/ca.pem")]).is_err());
/// ```
pub fn check_tls_url_options<'a>(
    backend: &'static str,
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let mut off = false;
    let mut files = Vec::new();
    for (name, value) in options {
        match name {
            "tls" if value == "false" => off = true,
            _ if name.starts_with("tls_") => files.push(name),
            _ => {}
        }
    }
    if off && !files.is_empty() {
        return Err(Error::invalid_config(
            backend,
            format!(
                "tls=false contradicts {}: remove tls=false to use TLS, or the TLS options to \
                 connect without it",
                files.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Reads the files of `tls`, checking that a client certificate comes with its key.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (for `backend`) naming the file that cannot be read, or saying
/// that `cert` and `key` must be given together.
pub fn load_tls(tls: &TlsConfig, backend: &'static str) -> Result<TlsFiles> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            Error::invalid_config(backend, format!("cannot read {}: {e}", path.display()))
        })
    };
    let identity = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => {
            return Err(Error::invalid_config(
                backend,
                "a TLS client certificate and its key must be given together (tls_cert and tls_key)",
            ));
        }
    };
    Ok(TlsFiles {
        ca: tls.ca.as_deref().map(read).transpose()?,
        identity,
        server_name: tls.server_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_turn_tls_on_and_off() {
        let mut tls = None;
        for (name, value) in [
            ("tls_cert", "/c.pem"),
            ("tls_key", "/k.pem"),
            ("tls_server_name", "kv.internal"),
        ] {
            assert!(tls_url_option(&mut tls, "zk", name, value).unwrap());
        }
        let tls_on = tls.clone().unwrap();
        assert_eq!(tls_on.server_name.as_deref(), Some("kv.internal"));
        assert!(tls_url_option(&mut tls, "zk", "tls", "false").unwrap());
        assert_eq!(tls, None);
        for (name, value) in [("tls", "yes"), ("tls_ca", "")] {
            assert!(matches!(
                tls_url_option(&mut tls, "zk", name, value),
                Err(Error::InvalidConfig { .. })
            ));
        }
    }

    #[test]
    fn tls_false_with_tls_options_is_refused_in_any_order() {
        for options in [
            [("tls", "false"), ("tls_ca", "/ca.pem")],
            [("tls_cert", "/c.pem"), ("tls", "false")],
        ] {
            let err = check_tls_url_options("zk", options).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }));
        }
        assert!(check_tls_url_options("zk", [("tls", "false"), ("prefix", "a")]).is_ok());
    }

    #[test]
    fn load_names_the_missing_file_and_pairs_cert_with_key() {
        let missing = TlsConfig::default().with_ca("/nonexistent/kvstore-ca.pem");
        let err = load_tls(&missing, "etcd").unwrap_err();
        let text = std::error::Error::source(&err).unwrap().to_string();
        assert!(text.contains("/nonexistent/kvstore-ca.pem"), "{text}");
        let half = TlsConfig {
            cert: Some("/c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(matches!(
            load_tls(&half, "etcd"),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
