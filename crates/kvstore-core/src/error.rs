//! The one error type every backend returns.

/// A boxed error from a client library or the operating system, kept as the `source()` of an
/// [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a kvstore call.
///
/// `Display` says what happened at kvstore's level; the underlying cause (a client library
/// error, an I/O error) is reached through [`std::error::Error::source`]. Match on the variant,
/// not on the message. New variants may be added in minor releases.
///
/// # Examples
///
/// ```
/// use kvstore_core::Error;
///
/// let err = Error::KeyNotFound { key: "app/config".into() };
/// assert_eq!(err.to_string(), "key not found: app/config");
/// assert!(!err.is_transient());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key (or, for `list`/`delete_tree`, the directory) does not exist.
    #[error("key not found: {key}")]
    KeyNotFound {
        /// The normalized key.
        key: String,
    },

    /// `atomic_put` without a previous pair found the key already present.
    #[error("key already exists: {key}")]
    KeyExists {
        /// The normalized key.
        key: String,
    },

    /// The key's `last_index` no longer matches the previous pair given to an atomic call.
    #[error("key was modified since it was read: {key}")]
    KeyModified {
        /// The normalized key.
        key: String,
    },

    /// An atomic call that needs the previous pair was called without one.
    #[error("the previous pair must be specified")]
    PreviousNotSpecified,

    /// The backend cannot perform this call.
    #[error("{backend} does not support {operation}")]
    CallNotSupported {
        /// The backend name, as returned by `Store::backend`.
        backend: &'static str,
        /// The call, for example `"watch_tree"`.
        operation: &'static str,
    },

    /// No backend is registered (or compiled in) for the URL scheme.
    #[error("no backend for scheme {scheme:?}; enabled schemes: {}", enabled.join(", "))]
    BackendNotSupported {
        /// The scheme of the URL that was opened.
        scheme: String,
        /// The schemes that this build (and registry) can open.
        enabled: Vec<String>,
    },

    /// The server could not be reached (connect refused, DNS, connection lost, no answer).
    #[error("{backend} server not reachable")]
    NotReachable {
        /// The backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The server refused this client, or the client refused the server, in a way no retry
    /// fixes: wrong user name or password, an unknown or revoked token, a token or user without
    /// permission on the key, no client certificate where the server demands one, a client
    /// certificate the server's CA did not sign, or a server certificate the client does not
    /// trust. Nothing was written.
    #[error("{backend} refused the credentials or certificate")]
    PermissionDenied {
        /// The backend name.
        backend: &'static str,
        /// The server's or the TLS layer's own words.
        #[source]
        source: BoxError,
    },

    /// A lock could not be taken or kept.
    #[error("cannot lock {key}")]
    CannotLock {
        /// The normalized key of the lock.
        key: String,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The key breaks the key grammar (see [`normalize_key`](crate::normalize_key)).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given by the caller.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The value is larger than the backend accepts; nothing was written.
    #[error("value of {size} bytes for key {key} exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The normalized key.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The backend's limit in bytes (see `Capabilities::max_value_size`).
        limit: usize,
    },

    /// The configuration or URL is invalid.
    #[error("invalid {backend} configuration")]
    InvalidConfig {
        /// The backend name (or `"kvstore"` for URL-level errors).
        backend: &'static str,
        /// What is wrong.
        #[source]
        source: BoxError,
    },

    /// A transaction's `when_held` condition failed: the lock is no longer held with that
    /// fencing token (lost, released, or taken by a later holder). Nothing was written.
    #[error("lock {lock_key} is not held with that fencing token")]
    LockNotHeld {
        /// The normalized key of the lock.
        lock_key: String,
    },

    /// A transaction is malformed (no operation, a key in two operations, more conditions and
    /// operations than `Capabilities::max_txn_ops`); nothing was sent.
    #[error("invalid transaction: {reason}")]
    InvalidTxn {
        /// What is wrong.
        reason: String,
    },

    /// The value at a key is not what a recipe needs (a [`Counter`](crate::Counter) that
    /// holds something other than a decimal `i64`, or a sum that would overflow); nothing was
    /// written.
    #[error("invalid value at {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// The call did not complete within the configured timeout.
    #[error("operation timed out")]
    Timeout,

    /// The store was closed with `Store::close`; no further calls are possible.
    #[error("{backend} store is closed")]
    Closed {
        /// The backend name.
        backend: &'static str,
    },

    /// A backend error that fits no other variant.
    #[error("{backend} error")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    ///
    /// True for [`Error::NotReachable`] and [`Error::Timeout`]; false for everything else,
    /// including the semantic outcomes (`KeyNotFound`, `KeyModified`, …) which a retry would
    /// only repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::NotReachable { .. } | Error::Timeout)
    }

    /// The variant's name (`"KeyNotFound"`, `"Timeout"`, …): a short, stable label for
    /// metrics and logs (the metrics and tracing layers report it as `error.type`). It never
    /// carries a key, a message or a credential.
    ///
    /// ```
    /// use kvstore_core::Error;
    /// assert_eq!(Error::not_found("a").kind(), "KeyNotFound");
    /// assert_eq!(Error::Timeout.kind(), "Timeout");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::KeyNotFound { .. } => "KeyNotFound",
            Error::KeyExists { .. } => "KeyExists",
            Error::KeyModified { .. } => "KeyModified",
            Error::PreviousNotSpecified => "PreviousNotSpecified",
            Error::CallNotSupported { .. } => "CallNotSupported",
            Error::BackendNotSupported { .. } => "BackendNotSupported",
            Error::NotReachable { .. } => "NotReachable",
            Error::PermissionDenied { .. } => "PermissionDenied",
            Error::CannotLock { .. } => "CannotLock",
            Error::InvalidKey { .. } => "InvalidKey",
            Error::InvalidValue { .. } => "InvalidValue",
            Error::ValueTooLarge { .. } => "ValueTooLarge",
            Error::InvalidConfig { .. } => "InvalidConfig",
            Error::LockNotHeld { .. } => "LockNotHeld",
            Error::InvalidTxn { .. } => "InvalidTxn",
            Error::Timeout => "Timeout",
            Error::Closed { .. } => "Closed",
            Error::Backend { .. } => "Backend",
        }
    }

    /// Shorthand for [`Error::Backend`] from any error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::InvalidConfig`] from any error or message.
    pub fn invalid_config(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::InvalidConfig {
            backend,
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::NotReachable`] from any error or message.
    pub fn not_reachable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::NotReachable {
            backend,
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::PermissionDenied`] from any error or message.
    pub fn permission_denied(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::PermissionDenied {
            backend,
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::KeyNotFound`].
    pub fn not_found(key: impl Into<String>) -> Self {
        Error::KeyNotFound { key: key.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_names_this_level_and_source_carries_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::not_reachable("etcd", io);
        assert_eq!(err.to_string(), "etcd server not reachable");
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("refused")
        );
        assert!(err.is_transient());
    }

    #[test]
    fn backend_not_supported_names_enabled_schemes() {
        let err = Error::BackendNotSupported {
            scheme: "foo".into(),
            enabled: vec!["memory".into(), "redb".into()],
        };
        assert_eq!(
            err.to_string(),
            "no backend for scheme \"foo\"; enabled schemes: memory, redb"
        );
    }
}
