//! The one place where redis crate errors become [`kvstore_core::Error`].

use kvstore_core::Error;
use redis::RedisError;

use crate::BACKEND;

/// Replies that mean this server cannot take the call now but another (or this one, later)
/// can: a replica that was a primary (`READONLY`), a replica cut off from its primary
/// (`MASTERDOWN`), a server still loading its data (`LOADING`). Source: Redis docs, "Sentinel
/// client spec" and "Redis replication".
pub(crate) const FAILOVER_CODES: [&str; 3] = ["READONLY", "MASTERDOWN", "LOADING"];

/// A refused password or user, a command the user may not run (`NOPERM`), and a TLS refusal
/// are `PermissionDenied`; connection-level failures are `NotReachable` (transient), a timeout
/// is `Timeout`, a server that cannot take the call during a failover (`READONLY`,
/// `MASTERDOWN`, `LOADING`) is `NotReachable`, anything else the server or client reports is
/// `Backend`.
pub(crate) fn from_redis(err: RedisError) -> Error {
    if is_refusal(&err) {
        Error::permission_denied(BACKEND, err)
    } else if err.is_timeout() {
        Error::Timeout
    } else if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.code().is_some_and(|c| FAILOVER_CODES.contains(&c))
    {
        Error::not_reachable(BACKEND, err)
    } else {
        Error::backend(BACKEND, err)
    }
}

/// Whether the server refused this client's credentials or permissions, or TLS refused the
/// connection: no retry fixes it. Source: Redis docs, "ACL" (`WRONGPASS` from `AUTH`,
/// `NOPERM` for a command or key outside the user's rules, `NOAUTH` when none was given); a
/// command a script may not run fails the script with "The user executing the script can't
/// run this command or subcommand" (Redis `script.c`, `scriptVerifyACL`).
fn is_refusal(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOPERM" | "WRONGPASS" | "NOAUTH"))
        || err
            .detail()
            .is_some_and(|d| d.contains("can't run this command"))
        || kvstore_core::backend::tls::tls_error(err).is_some()
}

/// A script returned something this crate did not send it to return.
pub(crate) fn protocol(what: &str) -> Error {
    Error::backend(
        BACKEND,
        format!("unexpected reply from a kvstore script: {what}"),
    )
}

/// Whether the connection failed (so the answer says nothing about the server's settings).
pub(crate) fn is_connection_failure(err: &RedisError) -> bool {
    err.is_timeout()
        || err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
}

/// Whether the server refused a command for the key's type (`WRONGTYPE`): a plain string
/// another client wrote where kvstore keeps a hash.
pub(crate) fn is_wrong_type(err: &RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}

/// A failure to connect: whatever stopped the connection manager from starting is reported as
/// `NotReachable`, the server being away the likely cause.
pub(crate) fn from_connect(err: RedisError) -> Error {
    match from_redis(err) {
        denied @ Error::PermissionDenied { .. } => denied,
        Error::Backend { source, .. } => Error::not_reachable(BACKEND, source),
        other => other,
    }
}
