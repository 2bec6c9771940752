//! For backend authors: the lease engine, the registration set and the task set a store owns.
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

mod lease;
mod registration;

pub use lease::{
    HeldLease, Lease, RELEASE_TIMEOUT, Release, Renewal, Tasks, loss_margin, renewal_period,
    retry_period,
};
pub use registration::{Registrar, Registrations};
