//! Traits, types, errors and the key grammar shared by every kvstore backend.
//!
//! This crate has no I/O and no backend dependency. Applications use it through the `kvstore`
//! umbrella crate, which re-exports everything here; backend authors depend on it directly and
//! run the conformance suite in `kvstore-testutils` against their [`Store`].
//!
//! # Examples
//!
//! ```
//! use kvstore_core::{normalize_key, KvPair, WriteOptions};
//! use std::time::Duration;
//!
//! let key = normalize_key("/services/web/")?;
//! let opts = WriteOptions::default().with_ttl(Duration::from_secs(30));
//! assert_eq!(key, "services/web");
//! # let _ = (opts, KvPair::new(key, "x", 1));
//! # Ok::<(), kvstore_core::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
mod cache;
mod election;
mod error;
mod events;
mod key;
pub mod layer;
mod lock;
mod recipes;
mod store;
mod tls;
mod txn;
mod types;

pub use backend::BackendStore;
pub use cache::Cache;
pub use election::{Candidate, DEFAULT_ELECTION_TTL, ElectionOptions, Leadership, follow};
pub use error::{BoxError, Error, Result};
pub use events::{Event, EventKind, EventStream, WatchEvent, WatchOptions};
pub use key::{MAX_KEY_LEN, RESERVED_SEGMENT_PREFIX, is_descendant, normalize_dir, normalize_key};
pub use lock::{LockLost, Locker};
pub use recipes::{
    Counter, DEFAULT_GROUP_TTL, DEFAULT_UPDATE_ATTEMPTS, Group, MAX_PERMITS, Membership, Permit,
    RwLock, Semaphore, UpdateOptions, update, update_many,
};
pub use store::{Store, WatchStream, WatchTreeStream};
pub use tls::TlsConfig;
pub use txn::{Condition, Txn, TxnOp};
pub use types::{
    Capabilities, DEFAULT_LOCK_TTL, KvPair, LockOptions, MAX_TTL, ReadOptions, WriteOptions,
};
