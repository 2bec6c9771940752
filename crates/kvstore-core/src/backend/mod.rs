//! For backend authors: the lease engine, the registration set and the task set a store owns,
//! and the helpers every backend uses the same way (lock arguments, URL and option parsing,
//! value limits).
//!
//! Locks, `keep_alive` keys and leadership all rest on a lease the client renews. The rules —
//! when to renew, when a holder must stop believing it holds, what happens on close and drop,
//! how a lost registration comes back — are written once, here; a backend supplies only the
//! protocol steps of its lease ([`Lease`]: renew, release) and of a registration
//! ([`Registrar`]: write again).
//!
//! # The loss rule
//!
//! A holder measures from the moment it **sent** its last renewal that succeeded (the acquire
//! counts as one). When no renewal has succeeded within `ttl - loss_margin(ttl)` of that moment
//! ([`loss_margin`] is a fifth of the TTL), the hold is lost: `LockLost` resolves and
//! `fencing_token()` returns `None`, whether the server said so or not. Renewals go out every
//! [`renewal_period`] (a quarter of the TTL); a transient failure is retried every
//! [`retry_period`] until the deadline, and every attempt is bounded by the deadline. Since a
//! server measures its lease from a later moment than the client's send, no other client can
//! take the lock before the old holder has given up.

mod config;
mod events;
mod lease;
mod limits;
pub mod prelude;
mod protocol;
mod registration;
mod store;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
mod txn;
mod watch;

pub use events::{EventSource, Since, event_stream};
pub use lease::{
    HeldLease, KeyLease, Lease, Owned, RELEASE_TIMEOUT, Release, RenewKey, Renewal, Tasks,
    loss_margin, renewal_period, retry_period,
};
pub use protocol::{
    Backend, Expiry, LockSpec, LostRegistration, Open, WatchRequest, WriteRequest, Written,
};
pub use registration::{
    Registrar, Registrations, rewrite_precondition, unless_superseded, write_again,
};
pub use store::{BackendStore, CLOSE_TIMEOUT};
pub use txn::{
    Check, CheckedTxn, Found, Write, check_txn, condition_error, first_failure, run_txn,
};
pub use watch::{DEFAULT_WATCH_RECONNECT_TIMEOUT, WatchSource, watch_stream};

pub use crate::lock::LockLostSignal;
pub use crate::tls::{TlsFiles, check_tls_url_options, load_tls, tls_url_option};

/// A new [`LockLost`](crate::LockLost) and the [`LockLostSignal`] that resolves it, for a
/// backend that implements [`Locker`](crate::Locker) itself (a backend on the lease engine gets
/// them from [`HeldLease`]). The signal resolves it when fired or dropped.
///
/// ```
/// use kvstore_core::backend::lock_lost;
///
/// let (signal, lost) = lock_lost();
/// assert!(!lost.is_lost());
/// drop(signal);
/// assert!(lost.is_lost());
/// ```
pub fn lock_lost() -> (LockLostSignal, crate::LockLost) {
    crate::LockLost::new()
}
pub use config::{
    MultiHostUrl, bool_option, choice_option, duration_option, key_prefix, lock_arguments,
    parse_multi_host_url, redact_url, refuse_fragment, size_option, url_options,
};
pub use limits::{check_ttl, check_value_size, ttl_millis, write_ttl};

use crate::KvPair;

/// What a conditional write or delete compares, the same on every backend; each backend maps
/// it onto its own compare (etcd `mod_revision`, Consul `check-index`, ZooKeeper `mzxid` then
/// version, a Redis script argument, a redb transaction).
// Not `#[non_exhaustive]`: backends match it exhaustively, so a new variant must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    None,
    /// The key must be absent (create-only): `KeyExists` otherwise.
    Absent,
    /// The key must exist with this `last_index`: `KeyNotFound` or `KeyModified` otherwise.
    Index(u64),
}

impl Precondition {
    /// The precondition of `Store::atomic_put`: create-only without a previous pair, else its
    /// `last_index`.
    pub fn of(previous: Option<&KvPair>) -> Self {
        previous.map_or(Precondition::Absent, |p| Precondition::Index(p.last_index))
    }
}

/// The first error of type `E` in `err`'s source chain, `err` itself included, looking also
/// inside `std::io::Error`s and `Arc`-shared errors: the redis and ZooKeeper clients keep I/O
/// errors as `Arc<dyn Error>`, whose `source()` skips the error it shares, so a plain walk of
/// `source()` misses it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use kvstore_core::backend::find_source;
///
/// let shared: Arc<dyn std::error::Error + Send + Sync> =
///     Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
/// assert!(find_source::<std::io::Error>(&shared).is_some());
/// assert!(find_source::<std::fmt::Error>(&shared).is_none());
/// ```
pub fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        if let Some(shared) =
            err.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        {
            return find_source(&**shared);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find_source(inner)
        {
            return Some(found);
        }
        next = err.source();
    }
    None
}
