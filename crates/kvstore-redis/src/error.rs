//! The one place where redis crate errors become [`kvstore_core::Error`].

use kvstore_core::Error;
use redis::RedisError;

use crate::BACKEND;

/// Connection-level failures are `NotReachable` (transient), a timeout is `Timeout`, anything
/// else the server or client reports is `Backend`.
pub(crate) fn from_redis(err: RedisError) -> Error {
    if err.is_timeout() {
        Error::Timeout
    } else if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        Error::not_reachable(BACKEND, err)
    } else {
        Error::backend(BACKEND, err)
    }
}

/// A script returned something this crate did not send it to return.
pub(crate) fn protocol(what: &str) -> Error {
    Error::backend(
        BACKEND,
        format!("unexpected reply from a kvstore script: {what}"),
    )
}
