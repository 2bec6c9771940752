//! PostgreSQL errors mapped to the crate's error variants.

use kvstore_core::Error;
use tokio_postgres::error::SqlState;

use crate::BACKEND;

/// Maps a client error: a refused login, role or privilege is `PermissionDenied`; a database
/// that does not exist or a schema created by a newer kvstore is `InvalidConfig`; a lost or
/// refused connection and a server shutting down are `NotReachable` (the outcome of a write
/// then is unknown); anything else is `Backend`.
pub(crate) fn from_pg(err: tokio_postgres::Error) -> Error {
    // Source: PostgreSQL docs, Appendix A "PostgreSQL Error Codes".
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            || *code == SqlState::INSUFFICIENT_PRIVILEGE
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            return Error::permission_denied(BACKEND, err);
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return Error::invalid_config(BACKEND, err);
        }
        let class = &code.code()[..2];
        // 08: connection exception; 57: operator intervention (shutdown, crash, cancel);
        // 53: insufficient resources (too many connections); 40: serialization failure or
        // deadlock (nothing was written; a retry may succeed).
        if matches!(class, "08" | "57" | "53" | "40") {
            return Error::not_reachable(BACKEND, err);
        }
        return Error::backend(BACKEND, err);
    }
    if let Some(tls) = kvstore_core::backend::tls::tls_error(&err) {
        return Error::permission_denied(BACKEND, tls.clone());
    }
    // No server answer: an I/O error, a closed connection, a timeout while connecting.
    let text = err.to_string();
    if err.is_closed()
        || kvstore_core::backend::find_source::<std::io::Error>(&err).is_some()
        || text.contains("timeout")
        || text.contains("connect")
    {
        return Error::not_reachable(BACKEND, err);
    }
    Error::backend(BACKEND, err)
}

/// Maps a pool error: a connection that could not be made is mapped as [`from_pg`]; a pool
/// that timed out waiting is `Timeout`.
pub(crate) fn from_pool(err: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => from_pg(err),
        PoolError::Timeout(_) => Error::Timeout,
        PoolError::Closed => Error::Closed { backend: BACKEND },
        other => Error::not_reachable(BACKEND, other.to_string()),
    }
}
