//! kvstore backend on [ZooKeeper](https://zookeeper.apache.org) 3.6+ (tested against 3.8).
//!
//! # Mapping
//!
//! - A key `a/b` is the znode `<root>/a/b` (the root is the URL's chroot, `""` by default)
//!   whose data is the value, byte for byte — `zkCli.sh get /a/b` shows it. `last_index` is the
//!   znode's `mzxid`: non-zero, new on every write, never reused by a re-created key.
//! - Parents that a key needs are created as **container** znodes (ZooKeeper 3.5.3+), which the
//!   server deletes by itself once their last child is gone. A znode whose data is kvstore's
//!   16-byte hidden marker (`\0\0kvstore\0hidden`) is not a key: parents, a deleted key that
//!   still has children, pins and lock waiters carry it, and `get`, `list` and `watch_tree`
//!   skip them. A value that itself starts with the marker is stored with a second copy of the
//!   marker in front (the only value not stored as-is).
//! - `put` of an existing plain key is one `setData`; a new key one `create`. `atomic_put`
//!   and `atomic_delete` with a previous pair read the znode, compare its `mzxid` with
//!   `last_index`, then write with the znode's `version` (ZooKeeper compares only versions,
//!   which restart when a key is re-created, so comparing them alone would let an old pair
//!   overwrite a re-created key); that is two round trips. `delete` likewise reads first,
//!   to tell a key from a hidden parent. Reads with `consistent` (the default) pipeline a
//!   `sync` before the read on an ensemble: one round-trip time, two requests. On a standalone
//!   server (one host in the URL, and no `server.N` in its `/zookeeper/config`, checked for
//!   each new session) every read is already current, and a consistent read is one request.
//! - `list(dir)` and `delete_tree(dir)` walk the tree level by level with one `multiRead` per
//!   level (ZooKeeper 3.6+).
//! - A value put on a key that already has children (a former parent) is kept by a hidden
//!   persistent child `.kvstore-pin`, so it survives its children; a deleted key that has
//!   children becomes hidden and stays as their parent. The top-level name `.kvstore-locks`
//!   under the root holds lock waiters and is not part of the keyspace.
//!
//! # TTL
//!
//! A key with a `ttl` is a **TTL node** (ZooKeeper 3.5.3+): the server deletes it once it
//! has not been written for the TTL and has no children. The server must run with
//! `-Dzookeeper.extendedTypesEnabled=true` (else `put` with a TTL fails), and it checks for
//! expired nodes every `znode.container.checkIntervalMs` (**60 s by default**); the key
//! disappears between its TTL and its TTL plus that interval. kvstore's CI runs the server
//! with `-Dznode.container.checkIntervalMs=100`. With `keep_alive`, the TTL node also gets an
//! ephemeral child owned by a session of the store whose timeout is the TTL (one per distinct
//! TTL, shared with locks of that TTL), so it cannot expire while the store is open; after
//! `close()` it expires like any TTL key (at its TTL after its last write), and after a crash
//! or a cut once that session times out: within the TTL plus the container check interval
//! (measured: 2.06 s for a 2 s TTL; 10.2 s when the pin was in the store's own 10 s session).
//! The server bounds session timeouts by `minSessionTimeout` (2 × `tickTime` by default), which
//! then bounds a shorter TTL. A TTL key that has
//! (other) children does not expire until they are gone, and a TTL cannot be put on a key that
//! has children (`CallNotSupported`).
//!
//! # Locks
//!
//! Ephemeral sequential waiters `<root>/.kvstore-locks/<key>/lock-<seq>` on a session whose
//! timeout is the lock's TTL (shared by this store's locks of that TTL); each waiter watches
//! only its predecessor. The fencing token is the `zxid` of the value's write (its
//! `last_index`), or without a value the lock directory's `pzxid` when the waiter became
//! first: both come after the previous holder's release. A release runs on the lock's own
//! session, so a holder whose session expired sends nothing — even when the next holder's
//! waiter has its old path, which happens once the server has reaped the empty lock
//! directory and a new one numbers its waiters from 0 again.
//!
//! Lock holds and `keep_alive` registrations follow the loss rule of
//! [`kvstore_core::backend`]: renewed every quarter TTL, lost at four fifths of the TTL after
//! the send of the last successful renewal whether or not the server said so, and a lost
//! registration is written again as soon as the server answers (unless another client wrote a
//! different value meanwhile).
//!
//! # Transactions
//!
//! `Store::txn` reads every znode it compares or writes (`sync` and one `multiRead`,
//! pipelined; a `Held` condition adds a read of the lock's first waiter), evaluates the
//! conditions, then sends one `multi` that checks every znode read against the version it had —
//! `multi` compares versions, not `mzxid`, so this closes the ABA window as single-key CAS does;
//! on a conflict the transaction starts over from the reads. An absent key is kept absent by a
//! `create` and `delete` inside the `multi`; `Held` is a version check of the lock's first
//! waiter, whose data records its fencing token. Three requests per call (four with `Held`), up
//! to 128 conditions plus operations, and the values' total bounded by `max_value_size` (one
//! request must fit the server's `jute.maxbuffer`).
//!
//! # Watch events
//!
//! `watch_events(dir)` registers a persistent recursive watch on the directory's znode, then
//! reads: the whole directory for the first `Snapshot`, and after each wake-up only the
//! znodes the watch named (and their parents), one `multiRead` per 200, again until a read's
//! answer arrives with no new event — by ZooKeeper's ordering guarantee (a client sees a
//! change's watch event before the answer to any later request) that read is the directory
//! at one moment. So a change costs a read of the znodes it touched, whatever the directory's
//! size. Revisions are zxids: a read's revision is the largest `mzxid`/`pzxid` its answers
//! show; a put's `last_index` is its `mzxid`; ZooKeeper 3.8 does not give a delete's zxid, so
//! a `Delete` carries the revision of the read that saw it. ZooKeeper keeps no history a
//! client can read: a `since` the stream did not reach itself starts with a `Snapshot`; after
//! a lost connection or a new session the stream registers again, reads the whole directory
//! and continues with the differences. `list_at` is the same consistent read under a watch
//! held for its length. Dropping the stream removes the watch. Lock waiters and pins are not
//! part of the keyspace and make no events.
#![cfg_attr(docsrs, feature(doc_cfg))]

//! # Leader election
//!
//! `kvstore_core::Candidate` runs on this store's lock: the waiter ordering of Curator's
//! `LeaderLatch` (sequential nodes, each watching its predecessor), with the leader's value an
//! ephemeral znode of the lock's session so it disappears with the session, and the term the
//! value's zxid. A separate `latch-` layout would only duplicate it.

//! # Behavior on reconnects
//!
//! While disconnected, calls fail with `NotReachable`; the client reconnects within the
//! session by itself, and watches re-read and emit the state if it changed. If the session
//! expires, the next call opens a new one and watches re-register. A registration whose pin
//! session expired is written again with a pin in a new session of its TTL as soon as the
//! server answers. A held lock whose session expires, or that
//! cannot renew within four fifths of its TTL, fires its `LockLost`.
//!
//! # Examples
//!
//! ```no_run
//! use kvstore_core::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! let config = "zk://127.0.0.1:2181/app1".parse::<kvstore_zk::ZkConfig>()?;
//! let store = kvstore_zk::ZkStore::open(config).await?;
//! store.put("services/web", b"10.0.0.1:80", None).await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod error;
mod events;
mod keep_alive;
mod lock;
mod node;
mod session;
mod store;
mod sync;
mod tree;
mod txn;
mod watch;
mod write;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT, ZkAcl, ZkAuth, ZkConfig,
};
pub use store::{Zk, ZkStore};

/// URL scheme: `zk://host1:port1,host2:port2/chroot`.
pub const SCHEME: &str = "zk";
/// `Store::backend()` of a ZooKeeper store.
pub const BACKEND: &str = "zk";
