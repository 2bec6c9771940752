//! What an `impl Backend` names, in one import: `use kvstore_core::backend::prelude::*;`.
//!
//! The trait and the types of its signatures ([`Backend`], [`Open`], [`Precondition`],
//! [`Expiry`], [`Written`], [`CheckedTxn`], [`LockSpec`], [`HeldLease`], [`Lease`], [`Tasks`],
//! [`Owned`] (a backend's state and the guard that stops its tasks),
//! the cancel token of a watch and its drop guard), the helpers most bodies use ([`write_again`],
//! [`first_failure`], [`watch_stream`] and [`WatchSource`], [`Renewal`], [`Release`]), the
//! store type a backend crate aliases ([`BackendStore`]), and the crate types every method
//! returns ([`Result`], [`Error`], [`KvPair`], [`Capabilities`], the watch streams), plus
//! `async_trait`, `Bytes`, `Arc` and `Duration`.

pub use std::sync::Arc;
pub use std::time::Duration;

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use tokio_util::sync::{CancellationToken, DropGuard};

pub use super::{
    Backend, BackendStore, Check, CheckedTxn, EventSource, Expiry, Found, HeldLease, KeyLease,
    Lease, LockSpec, LostRegistration, Open, Owned, Precondition, Release, RenewKey, Renewal,
    Since, Tasks, WatchRequest, WatchSource, Write, WriteRequest, Written, event_stream,
    first_failure, watch_stream, write_again,
};
pub use crate::{
    Capabilities, Error, Event, EventStream, KvPair, Result, WatchEvent, WatchStream,
    WatchTreeStream,
};
