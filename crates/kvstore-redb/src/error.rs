//! The one place where redb and runtime errors become [`kvstore_core::Error`].

use kvstore_core::Error;

use crate::BACKEND;

/// Maps any redb error (storage, transaction, table, commit) to `Error::Backend`.
pub(crate) fn from_redb(err: impl Into<redb::Error>) -> Error {
    Error::backend(BACKEND, err.into())
}

/// A blocking task that panicked or was cancelled by runtime shutdown.
pub(crate) fn from_join(err: tokio::task::JoinError) -> Error {
    Error::backend(BACKEND, err)
}
