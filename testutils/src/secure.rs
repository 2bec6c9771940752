//! Cases for a server that demands TLS with a client certificate and credentials: every way of
//! being refused fails fast with `PermissionDenied` and writes nothing.
//!
//! The cases rewrite the store's URL (a single-host URL with `tls_ca`, `tls_cert` and `tls_key`
//! options, as `ci/servers.sh` exports them) and open it through the backend's own opener, so
//! they run the same on every network backend.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvstore_core::{Error, Result, Store};

use crate::{EVENT_TIMEOUT, backend_url, cleanup, error_chain, ok, scratch_dir};

/// The directory of the run's certificates (`KVSTORE_TLS_DIR`, set by `ci/servers.sh`); like
/// [`backend_url`], `None` when unset unless servers are required.
pub fn tls_dir() -> Option<PathBuf> {
    backend_url("KVSTORE_TLS_DIR").map(PathBuf::from)
}

/// How a URL names its credential, for the wrong-credential case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The password of the URL's user information (Redis, etcd, ZooKeeper digest).
    Password,
    /// A query option holding a token (Consul's `token`).
    Query(&'static str),
}

/// `url` with the query option `name` set to `value`, or removed when `value` is `None`.
///
/// # Panics
///
/// When `url` is not a single-host URL.
pub fn with_query(url: &str, name: &str, value: Option<&str>) -> String {
    let mut parsed = url::Url::parse(url).expect("a single-host URL");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    parsed.to_string()
}

/// `url` with its credential replaced by `secret`.
pub fn with_credential(url: &str, credential: Credential, secret: &str) -> String {
    match credential {
        Credential::Password => {
            let mut parsed = url::Url::parse(url).expect("a single-host URL");
            parsed
                .set_password(Some(secret))
                .expect("a URL with a host");
            parsed.to_string()
        }
        Credential::Query(name) => with_query(url, name, Some(secret)),
    }
}

/// `url` presenting the client certificate `name` (`<name>.pem` and `<name>-key.pem` in
/// `tls_dir`) instead of its own.
pub fn with_client_certificate(url: &str, tls_dir: &Path, name: &str) -> String {
    let path = |file: String| tls_dir.join(file).display().to_string();
    with_query(
        &with_query(url, "tls_cert", Some(&path(format!("{name}.pem")))),
        "tls_key",
        Some(&path(format!("{name}-key.pem"))),
    )
}

/// `url` with another user name (the password is kept).
pub fn with_user(url: &str, user: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a single-host URL");
    parsed.set_username(user).expect("a URL with a host");
    parsed.to_string()
}

/// Asserts that opening `url` — or, when the backend only learns of the refusal on the first
/// call, a write of `key` on the opened store — fails with `PermissionDenied` within
/// [`EVENT_TIMEOUT`], never with a transient error.
pub async fn assert_refused<F, Fut>(open: &F, url: &str, key: &str, what: &str)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let attempt = async {
        let store = open(url.to_owned()).await?;
        let result = store.put(key, b"must not be written", None).await;
        let _ = store.close().await;
        result.map(|_| ())
    };
    match tokio::time::timeout(EVENT_TIMEOUT, attempt).await {
        Err(_) => panic!("{what}: no answer within {EVENT_TIMEOUT:?}; a refusal must be fast"),
        Ok(Ok(())) => panic!("{what}: the server accepted the write"),
        Ok(Err(err @ Error::PermissionDenied { .. })) => {
            assert!(!err.is_transient(), "{what}: PermissionDenied is permanent");
        }
        Ok(Err(err)) => panic!(
            "{what}: expected PermissionDenied, got {err:?} ({})",
            error_chain(&err)
        ),
    }
}

/// A server certificate from the trusted CA but for another host name is refused
/// (`PermissionDenied`), checked by asking to verify the certificate against a name it does
/// not carry (`tls_server_name`, on the backends that take it).
pub async fn assert_other_host_refused<F, Fut>(open: &F, url: &str)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let elsewhere = with_query(url, "tls_server_name", Some("not-this-server.example"));
    assert_refused(
        open,
        &elsewhere,
        "kvstore-conformance/x",
        "server certificate for another host name",
    )
    .await;
}

/// A TLS endpoint on 127.0.0.1 that presents a certificate from the run's CA for another host
/// name only (`otherhost.pem`: `not-this-server.example`, which `ci/servers.sh` makes), then
/// drops the connection. For the backends whose client verifies the URL's host and takes no
/// `tls_server_name` (Redis, ZooKeeper): a client must refuse it at the handshake, before a byte
/// of its protocol is sent. Returns the port; the endpoint lives as long as the runtime.
///
/// # Panics
///
/// When the certificate cannot be read or the port cannot be bound.
pub async fn other_host_endpoint(tls_dir: &Path) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_dir.join("otherhost.pem"))
            .expect("otherhost.pem")
            .collect::<std::result::Result<_, _>>()
            .expect("otherhost.pem holds certificates");
    let key =
        PrivateKeyDer::from_pem_file(tls_dir.join("otherhost-key.pem")).expect("otherhost-key.pem");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the other host's certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The handshake fails on the client's side; either way the connection then ends.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(EVENT_TIMEOUT, acceptor.accept(stream)).await;
            });
        }
    });
    port
}

/// [`assert_refused`] for a server certificate for another host name: `url` (a single-host
/// URL of a TLS server, with its options) pointed at [`other_host_endpoint`].
///
/// # Panics
///
/// When the open or first write is not refused with `PermissionDenied` in time.
pub async fn assert_other_host_endpoint_refused<F, Fut>(open: &F, url: &str, tls_dir: &Path)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let port = other_host_endpoint(tls_dir).await;
    let mut parsed = url::Url::parse(url).expect("a single-host URL");
    parsed.set_port(Some(port)).expect("a URL with a host");
    assert_refused(
        open,
        parsed.as_str(),
        "kvstore-conformance/x",
        "server certificate for another host name",
    )
    .await;
}

/// Every refusal a TLS+auth server gives, each `PermissionDenied` and each writing nothing:
/// a wrong credential (`wrong_credential`: usually `url` through [`with_credential`]), no
/// client certificate, a client certificate from a CA the server does not trust, and a server
/// certificate the client does not trust. `url` opens an authorized store; `tls_dir` holds
/// `other-ca.pem`, `stranger.pem` and `stranger-key.pem` (`ci/servers.sh` makes them).
pub async fn refused_credentials_and_certificates<F, Fut>(
    open: F,
    url: &str,
    wrong_credential: &str,
    tls_dir: &Path,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let store = ok(open(url.to_owned()).await, "open the authorized store");
    let dir = scratch_dir("refused");
    let key = format!("{dir}/k");
    let written = ok(store.put(&key, b"original", None).await, "put");
    let path = |file: &str| tls_dir.join(file).display().to_string();

    assert_refused(&open, wrong_credential, &key, "wrong credential").await;
    let no_cert = with_query(&with_query(url, "tls_cert", None), "tls_key", None);
    assert_refused(&open, &no_cert, &key, "no client certificate").await;
    let stranger = with_client_certificate(url, tls_dir, "stranger");
    assert_refused(
        &open,
        &stranger,
        &key,
        "client certificate of an unknown CA",
    )
    .await;
    let untrusted = with_query(url, "tls_ca", Some(&path("other-ca.pem")));
    assert_refused(
        &open,
        &untrusted,
        &key,
        "server certificate of an unknown CA",
    )
    .await;

    assert_eq!(
        ok(store.get(&key, None).await, "get after the refusals"),
        written,
        "a refused client must write nothing"
    );
    cleanup(&*store, &dir).await;
    ok(store.close().await, "close");
}

/// A user or token that may read but not write: reads work; `put`, `delete`, `atomic_put` and
/// `delete_tree` fail with `PermissionDenied` and change nothing. `writer` is an authorized
/// store on the same server.
pub async fn read_only_credential_cannot_write(writer: &dyn Store, reader: &dyn Store) {
    let dir = scratch_dir("read-only");
    let key = format!("{dir}/k");
    let written = ok(writer.put(&key, b"original", None).await, "put");
    assert_eq!(
        ok(
            reader.get(&key, None).await,
            "read with the read-only credential"
        ),
        written
    );
    let attempts: [(&str, Result<()>); 4] = [
        ("put", reader.put(&key, b"x", None).await.map(|_| ())),
        ("delete", reader.delete(&key).await),
        (
            "atomic_put",
            reader
                .atomic_put(&key, b"x", Some(&written), None)
                .await
                .map(|_| ()),
        ),
        ("delete_tree", reader.delete_tree(&dir).await),
    ];
    for (what, result) in attempts {
        match result {
            Err(err @ Error::PermissionDenied { .. }) => assert!(!err.is_transient()),
            other => {
                panic!("{what} with a read-only credential must be PermissionDenied, got {other:?}")
            }
        }
    }
    assert_eq!(
        ok(writer.get(&key, None).await, "get after the refused writes"),
        written,
        "refused writes must change nothing"
    );
    cleanup(writer, &dir).await;
}

/// [`read_only_credential_cannot_write`] on stores opened from `writer_url` and `reader_url`.
pub async fn read_only_url_cannot_write<F, Fut>(open: F, writer_url: &str, reader_url: &str)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>>>,
{
    let writer = ok(open(writer_url.to_owned()).await, "open the writer");
    let reader = ok(
        open(reader_url.to_owned()).await,
        "open the read-only reader",
    );
    read_only_credential_cannot_write(&*writer, &*reader).await;
    let _ = (writer.close().await, reader.close().await);
}

/// `open(url)` for a backend `B`: what the refusal cases of this module take.
///
/// # Errors
///
/// The backend's `open_url` errors.
pub async fn open_backend<B: kvstore_core::backend::Open>(
    url: String,
) -> kvstore_core::Result<std::sync::Arc<dyn kvstore_core::Store>> {
    let store = kvstore_core::BackendStore::<B>::open_url(&url).await?;
    Ok(std::sync::Arc::new(store) as std::sync::Arc<dyn kvstore_core::Store>)
}

/// The suite of a server that demands TLS and credentials, in one line per backend: an `open`
/// function for the backend (what this module's cases take), and the whole conformance suite
/// against the URL in the environment variable `var`, with the suite's TTL and slack where
/// given: `secure_suite!(backend: kvstore_etcd::Etcd, var: "KVSTORE_ETCD_TLS_URL", ttl: …,
/// slack: …)`, its cases in a module `secure_suite`. The backend's own refusal tests stay
/// beside it.
#[macro_export]
macro_rules! secure_suite {
    (backend: $backend:ty, var: $var:expr $(, ttl: $ttl:expr, slack: $slack:expr)? $(,)?) => {
        /// Opens a store of the backend under test at `url`.
        async fn open(
            url: String,
        ) -> ::kvstore_core::Result<::std::sync::Arc<dyn ::kvstore_core::Store>> {
            $crate::secure::open_backend::<$backend>(url).await
        }

        /// The conformance suite over TLS, in one module so that `cargo test -- secure_suite::`
        /// selects it (and `--skip secure_suite::` leaves it out): `ci/test.sh` runs every
        /// backend's at once, each against its own server.
        mod secure_suite {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(optional: $crate::backend_url($var).map(|url| {
                $crate::Opener::backend::<$backend>(&url) $( .with_ttl($ttl).with_ttl_slack($slack) )?
            }));
        }
    };
}
