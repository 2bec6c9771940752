//! kvstore backend on [PostgreSQL](https://www.postgresql.org) (tested against PostgreSQL 15):
//! the key/value store, locks, leader election and watches of every kvstore backend, in the
//! database a service already runs.
//!
//! # Mapping
//!
//! - One table of pairs per store (`<schema>.<table>`, by default `public.kvstore`): the key
//!   (`text COLLATE "C"`, so `list` returns keys in the bytewise order of every other
//!   backend), the value (`bytea`), `last_index` and an optional expiry. `psql` shows a key as
//!   `SELECT value FROM kvstore WHERE key = 'app/config'`.
//! - `last_index` is a store-wide revision kept in the `<table>_meta` row. Every write runs in
//!   one PL/pgSQL function (one round trip) that locks that row first, so revisions are handed
//!   out **in commit order**. A sequence would hand them out in call order: a watcher reading
//!   the change log after revision 11 could miss a revision 10 that committed later, which is
//!   why kvstore does not use one. The price is that a store's writes commit one at a time.
//! - `atomic_put`/`atomic_delete` are one function call each: the key's current row is read
//!   under its row lock, compared, and written in the same transaction.
//! - TTLs are an expiry column measured by the server's clock. An expired key is invisible to
//!   every read at once; each store's reaper deletes expired keys (logging their deletes, so
//!   watches see them) every `reap_interval`. Any number of stores reap at once safely: every
//!   reaper runs under the meta row lock, and a key renewed meanwhile no longer matches.
//! - Watches: each store keeps one connection that `LISTEN`s on the store's channel; every
//!   write `NOTIFY`s its revision at commit. The listener reads which keys the new revisions
//!   changed from the change log (`<table>_log`, keyed by revision), so a notification lost
//!   with a connection loses nothing: after reconnecting, every watch reads again.
//! - `watch_events` and `list_at`: the snapshot is one statement (one MVCC snapshot) that reads
//!   the pairs and the revision together; the events after a revision come from the change log,
//!   which keeps the newest `log_retention` revisions. A resume from before that starts with a
//!   snapshot.
//! - Locks are rows of `<table>_locks`: the key, the fencing token (the revision of the write
//!   that took the lock, so tokens only grow) and the hold's expiry. A lock's value is an
//!   ordinary key written at the token; deleting that key does not free the lock.
//! - `txn` is one function call: the conditions are read under row locks, then every write
//!   gets the transaction's revision, in one database transaction.
//!
//! # Schema
//!
//! The tables and functions are created on first use (by a role that may create them) in one
//! transaction under an advisory lock, so several stores may open at once. The `<table>_meta`
//! row records the schema version (1); a store refuses tables of a newer version with
//! `InvalidConfig`. A later version of this crate that changes the schema raises the version
//! and migrates older tables in place when it opens them (its tables and functions altered or
//! replaced in one transaction, under the same advisory lock); until then, opening never
//! changes an existing schema. A role with only `SELECT`, `INSERT`, `UPDATE`, `DELETE` on the tables and
//! `EXECUTE` on the functions uses an existing store. Several applications share a database
//! with the `schema` and `table` URL options.
//!
//! # Client
//!
//! [`tokio-postgres`](https://docs.rs/tokio-postgres) with a
//! [`deadpool-postgres`](https://docs.rs/deadpool-postgres) pool (up to `pool_size`
//! connections, made on demand, statements prepared once per connection), and
//! `tokio-postgres-rustls` for TLS on kvstore's one rustls stack. tokio-postgres is the async
//! driver much of the Rust ecosystem builds on; it hands a `LISTEN`ing connection's
//! notifications to its owner (`Connection::poll_message`), which the listener needs, and needs
//! no compile-time query checking, database at build time or macros, which sqlx would bring.
//!
//! # Backend differences
//!
//! - Reads always go to the server the store is connected to (`consistent` makes no
//!   difference): there are no replica reads.
//! - With asynchronous streaming replication, writes acknowledged by a primary that dies may be
//!   missing on the promoted replica; `synchronous_commit = remote_apply` with a synchronous
//!   standby closes that window (PostgreSQL docs, "Synchronous Replication").
//!
//! # Examples
//!
//! ```no_run
//! use kvstore_core::Store;
//! use kvstore_core::backend::BackendStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let config = "postgres://app:secret@127.0.0.1/services?table=kv"
//!     .parse::<kvstore_postgres::PostgresConfig>()?;
//! let store = kvstore_postgres::PostgresStore::open(config).await?;
//! store.put("services/web", b"10.0.0.1:80", None).await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod config;
mod error;
mod hub;
mod lock;
mod schema;
mod store;
mod watch;
mod wire;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOG_RETENTION, DEFAULT_MAX_VALUE_SIZE, DEFAULT_POOL_SIZE,
    DEFAULT_REAP_INTERVAL, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SCHEMA, DEFAULT_TABLE,
    DEFAULT_WATCH_RECONNECT_TIMEOUT, PostgresConfig, TargetSession,
};
pub use store::{MAX_TXN_OPS, Postgres, PostgresStore};

/// URL schemes: `postgres://` and `postgresql://`.
pub const SCHEMES: [&str; 2] = ["postgres", "postgresql"];
/// `Store::backend()` of a PostgreSQL store.
pub const BACKEND: &str = "postgres";
