//! ZooKeeper sessions: connecting, replacing an expired session, and the per-request timeout.

use std::future::Future;
use std::time::Duration;

use kvstore_core::{Error, Result};
use zookeeper_client::{self as zk, Acl, Acls, Client, CreateMode, CreateOptions, Permission};

use crate::BACKEND;
use crate::config::{ZkAcl, ZkAuth, ZkConfig};
use crate::error::from_zk;

static CREATOR_ALL_WORLD_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// The ACL list for `acl`.
pub(crate) fn acls(acl: ZkAcl) -> Acls<'static> {
    match acl {
        ZkAcl::Open => Acls::anyone_all(),
        ZkAcl::Creator => Acls::creator_all(),
        ZkAcl::CreatorWorldRead => Acls::new(&CREATOR_ALL_WORLD_READ),
    }
}

/// Create options for `mode` with the configured ACL.
pub(crate) fn create_options(mode: CreateMode, acl: ZkAcl) -> CreateOptions<'static> {
    mode.with_acls(acls(acl))
}

/// Opens a session with the given timeout, authenticated when credentials are configured.
///
/// # Errors
///
/// `NotReachable` when no server answers within the connect timeout; `PermissionDenied` for
/// refused credentials or a TLS refusal; `InvalidConfig` for unreadable TLS files.
pub(crate) async fn connect(config: &ZkConfig, session_timeout: Duration) -> Result<Client> {
    let mut connector = Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(config.connect_timeout);
    match (&config.digest, config.auth) {
        (Some((user, password)), ZkAuth::Digest) => {
            // Source: ZooKeeper Programmer's Guide, "Builtin ACL Schemes" — digest uses
            // `user:password` as the auth data.
            connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
        }
        (Some((user, password)), ZkAuth::SaslDigestMd5) => {
            // Source: ZooKeeper Programmer's Guide, "ZooKeeper and SASL" (DIGEST-MD5 against
            // the server's JAAS `Server` section).
            connector =
                connector.with_sasl(zk::SaslOptions::digest_md5(user.clone(), password.clone()));
        }
        (None, _) => {}
    }
    if let Some(tls) = &config.tls {
        connector = connector.with_tls(tls_options(tls)?);
    }
    let hosts = config.connect_string();
    let connecting = async {
        if config.tls.is_some() {
            connector.secure_connect(&hosts).await
        } else {
            connector.connect(&hosts).await
        }
    };
    // zookeeper-client retries a refused TLS connection until the connect timeout; a
    // diagnostic handshake started shortly after tells a refusal from a slow server early.
    let refused = async {
        tokio::time::sleep(TLS_DIAGNOSIS_DELAY).await;
        match tls_refusal(config).await {
            Some(refusal) => refusal,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(config.connect_timeout, connecting) => outcome,
        refusal = refused, if config.tls.is_some() => return Err(refusal),
    };
    match outcome {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(zk::Error::AuthFailed)) => Err(Error::permission_denied(
            BACKEND,
            "ZooKeeper refused the credentials",
        )),
        Ok(Err(err)) => Err(Error::not_reachable(BACKEND, err)),
        Err(_) => Err(Error::not_reachable(
            BACKEND,
            format!(
                "no ZooKeeper server at {hosts} answered within {:?}",
                config.connect_timeout
            ),
        )),
    }
}

/// How long a TLS connect runs before a diagnostic handshake checks for a TLS refusal.
const TLS_DIAGNOSIS_DELAY: Duration = Duration::from_millis(300);

/// zookeeper-client's TLS options for `tls`: the CA and the client certificate.
fn tls_options(tls: &kvstore_core::TlsConfig) -> Result<zk::TlsOptions> {
    kvstore_core::backend::tls::install_crypto_provider();
    let files = kvstore_core::backend::load_tls(tls, BACKEND)?;
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes)
            .map_err(|_| Error::invalid_config(BACKEND, format!("the TLS {what} is not PEM text")))
    };
    let invalid = |e: zk::Error| Error::invalid_config(BACKEND, e);
    let mut opts = zk::TlsOptions::new();
    if let Some(ca) = files.ca {
        opts = opts.with_pem_ca(&text(ca, "CA file")?).map_err(invalid)?;
    }
    if let Some((cert, key)) = files.identity {
        opts = opts
            .with_pem_identity(&text(cert, "certificate")?, &text(key, "key")?)
            .map_err(invalid)?;
    }
    Ok(opts)
}

/// `PermissionDenied` when TLS is configured and a handshake with the first server shows TLS
/// refuses the connection: zookeeper-client reports a refused certificate only as a lost
/// connection, retried until the connect timeout.
async fn tls_refusal(config: &ZkConfig) -> Option<Error> {
    let (tls, addr) = (config.tls.as_ref()?, config.hosts.first()?);
    kvstore_core::backend::tls::refusal(BACKEND, tls, addr, config.connect_timeout).await
}

/// Runs one request (or a pipelined group) under the per-request timeout; a timeout is
/// `zk::Error::Timeout`, mapped to `Error::Timeout` by [`from_zk`].
pub(crate) async fn timed<T>(
    timeout: Duration,
    request: impl Future<Output = std::result::Result<T, zk::Error>>,
) -> std::result::Result<T, zk::Error> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// Whether `client`'s session can still serve requests (it may be briefly disconnected).
pub(crate) fn usable(client: &Client) -> Result<()> {
    match client.state() {
        zk::SessionState::Expired => Err(from_zk(zk::Error::SessionExpired)),
        zk::SessionState::AuthFailed => Err(Error::permission_denied(
            BACKEND,
            "ZooKeeper refused the digest credentials",
        )),
        zk::SessionState::Closed => Err(Error::Closed { backend: BACKEND }),
        _ => Ok(()),
    }
}

/// A failed renewal on a session that is not over (disconnected, reconnecting) is transient,
/// whatever the client calls it (it reports a connection that stopped answering as a
/// `Custom` error): the engine retries it until the loss deadline.
pub(crate) fn renewal_error(client: &Client, err: zk::Error) -> Error {
    match client.state() {
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => {
            from_zk(err)
        }
        _ => match from_zk(err) {
            Error::Backend { source, .. } => Error::not_reachable(BACKEND, source),
            other => other,
        },
    }
}
