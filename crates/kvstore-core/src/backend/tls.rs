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
    super::find_source(err)
}

/// `PermissionDenied` (for `backend`) when a TLS connection to `addr` (`host:port`) with `tls`
/// is refused by TLS itself (one handshake and one read, below) within `connect_timeout` (at most
/// 2 s); `None` when TLS shows no refusal, the files cannot be read, or nothing answers.
///
/// For backends whose client library reports a refused certificate only as a lost or closed
/// connection: they call this when a TLS connect fails, or runs long, to tell a permanent
/// refusal from a server that is away.
pub async fn refusal(
    backend: &'static str,
    tls: &crate::TlsConfig,
    addr: &str,
    connect_timeout: std::time::Duration,
) -> Option<crate::Error> {
    let files = crate::tls::load_tls(tls, backend).ok()?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let timeout = connect_timeout.min(std::time::Duration::from_secs(2));
    let refused = diagnose_handshake(addr, host, &files, timeout).await?;
    Some(crate::Error::permission_denied(backend, refused))
}

/// Why a TLS connection to `addr` (`host:port`) with these settings fails, when TLS is the
/// reason: the client refuses the server's certificate, or the server refuses the client's
/// (or its absence) with an alert. `None` when the handshake and the server's first answer
/// show no TLS refusal, or when `files` names no CA (the diagnosis then has no roots to
/// verify against), or when nothing answers within `timeout`.
///
/// For client libraries that report a refused client certificate only as a closed connection
/// (tonic's, zookeeper-client's): a backend whose connect failed calls this to tell a
/// permanent refusal from a server that is away. In TLS 1.3 a server verifies the client's
/// certificate after the client's handshake has finished, so the alert arrives on the first
/// read (RFC 8446 §4.4.2.4); the read is bounded by `timeout`.
async fn diagnose_handshake(
    addr: &str,
    default_server_name: &str,
    files: &crate::tls::TlsFiles,
    timeout: std::time::Duration,
) -> Option<rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(files.ca.as_deref()?) {
        roots.add(cert.ok()?).ok()?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match &files.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    let name = files
        .server_name
        .as_deref()
        .unwrap_or(default_server_name)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(name).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(err) => return tls_error(&err).cloned(),
        };
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Err(err) => tls_error(&err).cloned(),
            Ok(_) => None,
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
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
