//! The one TLS stack of kvstore (rustls with the aws-lc-rs provider), for the network backends.
//!
//! Every client crate kvstore uses reaches rustls: etcd-client through tonic (`tls-aws-lc`),
//! reqwest (`rustls`, aws-lc-rs), zookeeper-client (`tls`, aws-lc-rs) and redis
//! (`tokio-rustls-comp`, which picks no provider). rustls then takes its process-wide default
//! provider, and panics at the first handshake when none is installed and none or several are
//! compiled in (rustls docs, `CryptoProvider::get_default`). [`install_crypto_provider`] makes
//! that default aws-lc-rs before any backend builds a TLS client.

use std::error::Error as StdError;
use std::sync::Arc;

/// Installs rustls' aws-lc-rs provider as the process default, unless the application already
/// installed one (which is then kept). Cheap and idempotent; every network backend calls it
/// before it builds a TLS client.
pub fn install_crypto_provider() {
    // `Err` only when a default is already installed: the application's choice stands.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The TLS error (a certificate the client does not trust, an alert from a server that refused
/// the client's certificate or the lack of one) anywhere in `err`'s source chain, including
/// inside `std::io::Error`s and `Arc`-shared errors (the redis crate keeps its I/O errors as
/// `Arc<dyn Error>`, whose `source()` skips the I/O error's payload). Backends report such errors as `Error::PermissionDenied`: no retry
/// fixes them.
pub fn tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(shared) = err.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            return tls_error(&**shared);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = tls_error(inner)
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_rustls_error_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(tls);
        let wrapped = crate::Error::not_reachable("redis", io);
        assert!(matches!(
            tls_error(&wrapped),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let shared: Arc<dyn StdError + Send + Sync> = Arc::new(std::io::Error::other(
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        ));
        assert!(tls_error(&shared).is_some());
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(tls_error(&plain).is_none());
    }

    #[test]
    fn installing_twice_keeps_the_first_provider() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
