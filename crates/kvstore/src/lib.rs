//! One async API over the key/value stores services use for metadata, discovery, locks and
//! leader election.
//!
//! `kvstore` re-exports the contract of [`kvstore_core`] ([`Store`], [`Locker`], [`KvPair`],
//! the options and [`Error`]) and opens any compiled-in backend from a URL:
//!
//! | scheme | backend | cargo feature |
//! | --- | --- | --- |
//! | `redb:///abs/path.redb`, `redb:rel/path.redb` | embedded redb file | `redb` (default) |
//! | `memory://` | in-memory store | `memory` (default; independent of `redb`) |
//! | `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS) | Redis | `redis` |
//! | `redis+sentinel://[user:pass@]s1:p1,s2:p2/SERVICE[/db]` | the Redis primary that Redis Sentinel names, followed across failovers | `redis` |
//! | `etcd://[user:pass@]h1:p1,h2:p2` | etcd v3 | `etcd` |
//! | `zk://[user:pass@]h1:p1,h2:p2[/chroot]` | ZooKeeper 3.6+ | `zk` |
//! | `consul://host:port` | Consul (HTTP API) | `consul` |
//! | `postgres://[user:pass@]h1[:p1][,h2[:p2]][/db]`, `postgresql://…` | PostgreSQL 12+ (one table per store) | `postgres` |
//!
//! # TLS and authentication
//!
//! Every network backend takes the same TLS options in its URL (or a [`TlsConfig`] in its typed
//! config); every file is PEM and read at connect, and the server's certificate is always
//! verified:
//!
//! | option | meaning | Redis | etcd | ZooKeeper | Consul | PostgreSQL |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | `tls=true` | TLS with the platform's trusted roots | use `rediss://` | ✓ | needs `tls_ca` | ✓ | ✓ (or `sslmode=require`) |
//! | `tls_ca=PATH` | trust only these CA certificates | ✓ | ✓ | ✓ (required) | ✓ | ✓ |
//! | `tls_cert=PATH`, `tls_key=PATH` | mutual TLS: present this client certificate and key | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | `tls_server_name=NAME` | verify the certificate against `NAME`, not the URL's host | refused | ✓ | refused | ✓ | ✓ |
//!
//! | credentials | Redis | etcd | ZooKeeper | Consul | PostgreSQL |
//! | --- | --- | --- | --- | --- | --- |
//! | in the URL | `redis://user:pass@…` (ACL user; `:pass@` for `requirepass`); with Sentinel, the servers' login there and the Sentinels' as `?sentinel_user=…&sentinel_password=…` | `etcd://user:pass@…` (token refreshed when it expires) | `zk://user:pass@…` (`digest`, or SASL DIGEST-MD5 with `auth=sasl`; nodes get the creator ACL, see `acl=`) | `consul://…?token=…` (`X-Consul-Token`) | `postgres://user:pass@…` (SCRAM or MD5, as the server asks) |
//!
//! A refusal no retry can fix — a wrong password or token, a user or token without permission
//! on the key, no client certificate where the server demands one, a client certificate the
//! server's CA did not sign, a server certificate the client does not trust — fails fast with
//! [`Error::PermissionDenied`] (never a transient `NotReachable`) and writes nothing. A held
//! lock whose credentials are revoked reports the loss through `LockLost`. No password,
//! token or key material appears in any `Debug` output, error message or log line.
//!
//! All TLS goes through rustls with the aws-lc-rs provider; the backends install it as the
//! process default when the application has not installed one.
//!
//! ```
//! let config = kvstore_core::TlsConfig::default()
//!     .with_ca("/etc/kv/ca.pem")
//!     .with_client_identity("/etc/kv/client.pem", "/etc/kv/client-key.pem");
//! let url = "etcd://app:secret@10.0.0.1:2379?tls_ca=/etc/kv/ca.pem\
//!            &tls_cert=/etc/kv/client.pem&tls_key=/etc/kv/client-key.pem";
//! # let _ = (config, url);
//! ```
//!
//! Every backend has the same semantics: keys are `/`-separated and normalized, `list` is
//! recursive and sorted, `atomic_put`/`atomic_delete` compare `last_index`, watches start with
//! the current state and never lose the latest one, locks carry fencing tokens. The
//! conformance suite in `kvstore-testutils` checks all of it on every backend.
//!
//! # Observability
//!
//! kvstore reports through the [`tracing`](https://docs.rs/tracing) facade; nothing is printed
//! unless the application installs a subscriber. Targets are the crates' module paths
//! (`kvstore_core::…`, `kvstore_redis::…`, …), so one filter directive, `kvstore=debug`,
//! selects all of them.
//!
//! - **Spans, level `debug`**, one per call: `open` (field `scheme`), `connect`, `put`, `get`,
//!   `delete`, `exists`, `list`, `delete_tree`, `atomic_put`, `atomic_delete`, `watch`,
//!   `watch_tree`, `txn`, `new_lock`, `lock`, `unlock`, `close`, with the fields `backend`
//!   (`"redis"`, `"etcd"`, …), `op` (the call) and `key` (the normalized key or directory;
//!   `txn` has `ops`, the number of operations). Values and credentials are never recorded.
//! - **Events, level `warn`**: a lease or session lost (`"lease lost: …"`, with the lease), a
//!   registration that lost its lease or ended because another client wrote the key, a
//!   release that failed or timed out, a server setting that disables a capability (Redis
//!   `notify-keyspace-events`). **`info`**: a registration written again after an outage,
//!   Redis Sentinel naming a new primary. **`debug`**: each failed renewal attempt that is
//!   retried, watches re-subscribing after a reconnect, shared watch streams breaking.
//!
//! To see them, install a subscriber that reads `RUST_LOG`, such as `tracing-subscriber`'s
//! (feature `env-filter`), then run with `RUST_LOG=kvstore=debug` (or `kvstore=warn` in
//! production):
//!
//! ```no_run
//! // Cargo.toml: tracing-subscriber = { version = "0.3", features = ["env-filter"] }
//! tracing_subscriber::fmt()
//!     .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
//!     .with_writer(std::io::stderr)
//!     .init();
//! ```
//!
//! `kvctl` does this itself: `RUST_LOG=kvstore=debug kvctl get app/config` prints the spans
//! and events on stderr.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use kvstore::{LockOptions, Store, WriteOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore::Result<()> {
//! let store = kvstore::open("memory://").await?;
//!
//! // Plain reads and writes.
//! let pair = store.put("services/web/1", b"10.0.0.1:80", None).await?;
//! assert_eq!(store.list("services", None).await?.len(), 1);
//!
//! // Compare-and-swap on last_index.
//! store.atomic_put("services/web/1", b"10.0.0.2:80", Some(&pair), None).await?;
//!
//! // Watch: the current state first, then every change.
//! let mut watch = store.watch("services/web/1", None).await?;
//! assert!(watch.next().await.unwrap()?.is_some());
//!
//! // A lock with a fencing token.
//! let mut lock = store.new_lock("locks/job", Some(&LockOptions::default())).await?;
//! let _lost = lock.lock().await?;
//! assert!(lock.fencing_token().is_some());
//! lock.unlock().await?;
//!
//! // A key that expires.
//! store.put("tmp/session", b"x", Some(&WriteOptions::default().with_ttl(Duration::from_secs(30)))).await?;
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use futures::future::BoxFuture;
#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use kvstore_consul as consul;
use kvstore_core::backend::Open;
pub use kvstore_core::*;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use kvstore_etcd as etcd;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use kvstore_postgres as postgres;
/// The embedded redb store and the in-memory store (features `redb` or `memory`).
#[cfg(any(feature = "redb", feature = "memory"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "redb", feature = "memory"))))]
pub use kvstore_redb as redb;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use kvstore_redis as redis;
#[cfg(feature = "zk")]
#[cfg_attr(docsrs, doc(cfg(feature = "zk")))]
pub use kvstore_zk as zk;

/// The README's Rust blocks compile as doc tests, so its examples cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;

/// The future a [`Registry`] opener returns.
pub type OpenFuture = BoxFuture<'static, Result<Arc<dyn Store>>>;

type OpenFn = Arc<dyn Fn(String) -> OpenFuture + Send + Sync>;

/// Maps URL schemes to the code that opens a store for them.
///
/// [`Registry::default`] knows every backend compiled in (see the crate docs); applications
/// add their own schemes with [`register`](Registry::register). To make [`open`] itself know a
/// scheme, register it process-wide with the free function [`register`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use kvstore::{Registry, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore::Result<()> {
/// let mut registry = Registry::default();
/// // A custom scheme that opens an in-memory store (stand-in for a third-party backend).
/// registry.register("scratch", |_url: String| async {
///     Ok(Arc::new(kvstore::redb::RedbStore::open(kvstore::redb::RedbConfig::memory()).await?) as Arc<dyn Store>)
/// });
/// let store = registry.open("scratch://anything").await?;
/// assert_eq!(store.backend(), "memory");
/// assert!(registry.schemes().contains(&"scratch"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    schemes: BTreeMap<String, OpenFn>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Default for Registry {
    /// A registry with every backend compiled into this build.
    fn default() -> Self {
        // Not mutated in a build without any backend feature.
        #[allow(unused_mut)]
        let mut registry = Registry::empty();
        // One opener per backend: its URL parser and `BackendStore::open_url`.
        #[cfg(feature = "redb")]
        registry.register(kvstore_redb::SCHEME, open_url::<kvstore_redb::Redb>);
        #[cfg(feature = "memory")]
        registry.register(kvstore_redb::MEMORY_SCHEME, open_url::<kvstore_redb::Redb>);
        #[cfg(feature = "redis")]
        for scheme in kvstore_redis::SCHEMES {
            registry.register(scheme, open_url::<kvstore_redis::Redis>);
        }
        #[cfg(feature = "etcd")]
        registry.register(kvstore_etcd::SCHEME, open_url::<kvstore_etcd::Etcd>);
        #[cfg(feature = "zk")]
        registry.register(kvstore_zk::SCHEME, open_url::<kvstore_zk::Zk>);
        #[cfg(feature = "consul")]
        registry.register(kvstore_consul::SCHEME, open_url::<kvstore_consul::Consul>);
        #[cfg(feature = "postgres")]
        for scheme in kvstore_postgres::SCHEMES {
            registry.register(scheme, open_url::<kvstore_postgres::Postgres>);
        }
        registry
    }
}

/// Opens a store of backend `B` from `url`, as a registry opener.
#[allow(dead_code)] // Unused in a build without any backend feature.
async fn open_url<B: Open>(url: String) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(BackendStore::<B>::open_url(&url).await?))
}

impl Registry {
    /// A registry with no scheme at all.
    pub fn empty() -> Self {
        Registry {
            schemes: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the opener for `scheme` (case-insensitive, without `://`). The
    /// opener receives the whole URL as text: multi-host URLs such as `etcd://h1:1,h2:2` are
    /// not valid for a generic URL parser.
    pub fn register<F, Fut>(&mut self, scheme: &str, open: F) -> &mut Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Store>>> + Send + 'static,
    {
        let open: OpenFn = Arc::new(move |url| open(url).boxed());
        self.schemes.insert(scheme.to_ascii_lowercase(), open);
        self
    }

    /// The schemes this registry can open, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        self.schemes.keys().map(String::as_str).collect()
    }

    /// Opens a store from a URL such as `redb:///var/lib/app.redb` or `memory://`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (backend `"kvstore"`) when `url` is not a URL;
    /// [`Error::BackendNotSupported`], naming the enabled schemes, when no opener is
    /// registered for its scheme (for example a backend whose cargo feature is off); and
    /// whatever the backend's opener returns (`InvalidConfig`, `NotReachable`, …).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future drops the half-opened store.
    pub async fn open(&self, url: &str) -> Result<Arc<dyn Store>> {
        let open = self.opener(url)?;
        open(url.to_owned()).await
    }

    /// The opener for `url`'s scheme, looked up without awaiting (so the process-wide
    /// registry's lock is never held across an `.await`).
    fn opener(&self, url: &str) -> Result<OpenFn> {
        let scheme = match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                scheme.to_ascii_lowercase()
            }
            _ => {
                return Err(Error::invalid_config(
                    "kvstore",
                    format!("{url:?} is not a URL (no scheme)"),
                ));
            }
        };
        match self.schemes.get(&scheme) {
            Some(open) => Ok(Arc::clone(open)),
            None => Err(Error::BackendNotSupported {
                scheme,
                enabled: self.schemes.keys().cloned().collect(),
            }),
        }
    }
}

/// The registry [`open`] consults: [`Registry::default`] plus every scheme added with
/// [`register`].
fn global() -> &'static std::sync::RwLock<Registry> {
    static GLOBAL: OnceLock<std::sync::RwLock<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| std::sync::RwLock::new(Registry::default()))
}

/// Adds (or replaces) a scheme for every later call of [`open`] in this process.
///
/// This is how a third-party backend makes `kvstore::open("myscheme://…")` work. The opener
/// receives the whole URL as text. Registering a built-in scheme (such as `redis`) replaces it
/// for this process.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use kvstore::Store;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore::Result<()> {
/// kvstore::register("scratch", |_url: String| async {
///     Ok(Arc::new(kvstore::redb::RedbStore::open(kvstore::redb::RedbConfig::memory()).await?) as Arc<dyn Store>)
/// });
/// let store = kvstore::open("scratch://anything").await?;
/// assert_eq!(store.backend(), "memory");
/// # Ok(())
/// # }
/// ```
pub fn register<F, Fut>(scheme: &str, open: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn Store>>> + Send + 'static,
{
    // A poisoned lock only means a panic elsewhere while registering; the map is still whole.
    global()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .register(scheme, open);
}

/// Opens a store from a URL: every backend compiled in, plus the schemes added with
/// [`register`].
///
/// # Errors
///
/// As for [`Registry::open`].
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future drops the half-opened store.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore::Result<()> {
/// let store = kvstore::open("memory://").await?;
/// assert_eq!(store.backend(), "memory");
/// let err = kvstore::open("nosuch://h:1").await.unwrap_err();
/// assert!(matches!(err, kvstore::Error::BackendNotSupported { .. }));
/// # Ok(())
/// # }
/// ```
#[tracing::instrument(level = "debug", skip_all, fields(op = "open", scheme = url.split(':').next().unwrap_or("")))]
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let open = global()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .opener(url)?;
    open(url.to_owned()).await
}
