//! The [`Store`] implementation over etcd's KV, lease and watch APIs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use kvstore_core::backend::{
    Lease, Precondition, Registrar, Registrations, Release, Renewal, Tasks, check_value_size,
    lock_arguments,
};
use kvstore_core::{
    Capabilities, Error, KvPair, LockOptions, Locker, ReadOptions, Result, Store, WatchStream,
    WatchTreeStream, WriteOptions, normalize_dir, normalize_key,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::EtcdConfig;
use crate::error::from_etcd;
use crate::lock::EtcdLocker;
use crate::watch::{watch_key, watch_tree};

/// Connection state shared by the store, its watches and its locks.
pub(crate) struct Inner {
    client: Client,
    pub(crate) config: EtcdConfig,
    /// `""` or `"<prefix>/"`, with a `/` in front when `leading_slash` is set.
    prefix: String,
    pub(crate) cancel: CancellationToken,
    /// Background work (lock and registration renewals, releases); `close` waits for it.
    pub(crate) tasks: Tasks,
    /// The `keep_alive` keys of this store.
    registrations: Registrations,
}

/// How long `close` waits for lock releases (lease revokes) to be sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An etcd lease for the lease engine: renewed with one `LeaseKeepAlive` request on a stream
/// kept open between renewals (and reopened after an error); released by revoking it, which
/// deletes every key attached to it (a lock's waiter key).
/// Source: etcd docs, "Lease API" — LeaseKeepAlive answers TTL <= 0 for an expired lease.
pub(crate) struct EtcdLease {
    inner: Arc<Inner>,
    pub(crate) id: i64,
    stream: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
    /// Deleted before the revoke on `unlock` (a lock with `delete_on_unlock`).
    delete_on_unlock: Option<String>,
}

impl fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EtcdLease({:x})", self.id)
    }
}

impl EtcdLease {
    pub(crate) fn new(inner: Arc<Inner>, id: i64, delete_on_unlock: Option<String>) -> Self {
        EtcdLease {
            inner,
            id,
            stream: tokio::sync::Mutex::new(None),
            delete_on_unlock,
        }
    }
}

#[async_trait]
impl Lease for EtcdLease {
    async fn renew(&self) -> Result<Renewal> {
        let mut stream = self.stream.lock().await;
        if stream.is_none() {
            *stream = Some(
                self.inner
                    .client()
                    .lease_keep_alive(self.id)
                    .await
                    .map_err(from_etcd)?,
            );
        }
        let (keeper, responses) = stream.as_mut().expect("opened above");
        let answer = match keeper.keep_alive().await {
            Ok(()) => responses.message().await,
            Err(err) => Err(err),
        };
        match answer {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(Renewal::Renewed),
            Ok(Some(_)) => Ok(Renewal::Gone),
            Ok(None) => {
                *stream = None;
                Err(Error::not_reachable(
                    BACKEND,
                    "the lease keep-alive stream ended",
                ))
            }
            Err(err) => {
                *stream = None;
                Err(from_etcd(err))
            }
        }
    }

    async fn release(&self, why: Release) -> Result<()> {
        // The value goes first, but a failed delete never keeps the lock held.
        let deleted = match (&self.delete_on_unlock, why) {
            (Some(key), Release::Unlock) => self
                .inner
                .client()
                .delete(key.as_str(), None)
                .await
                .map(drop)
                .map_err(from_etcd),
            _ => Ok(()),
        };
        self.inner
            .client()
            .lease_revoke(self.id)
            .await
            .map_err(from_etcd)?;
        deleted
    }
}

/// Writes a lost registration again on a new lease, only where the key is absent or still holds
/// the registered value: two transactions at most (value compare, then absence compare).
struct EtcdRegistrar(Arc<Inner>);

#[async_trait]
impl Registrar for EtcdRegistrar {
    async fn register_again(
        &self,
        key: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> Result<Option<(Arc<dyn Lease>, Instant)>> {
        let inner = &self.0;
        let sent = Instant::now();
        let id = inner.grant(ttl).await?;
        let etcd_key = inner.data_key(key);
        let put = || {
            TxnOp::put(
                etcd_key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(id)),
            )
        };
        for compare in [
            Compare::value(etcd_key.clone(), CompareOp::Equal, value.to_vec()),
            Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
        ] {
            let txn = Txn::new().when([compare]).and_then([put()]);
            if inner
                .client()
                .txn(txn)
                .await
                .map_err(from_etcd)?
                .succeeded()
            {
                return Ok(Some((
                    Arc::new(EtcdLease::new(inner.clone(), id, None)),
                    sent,
                )));
            }
        }
        let _ = inner.client().lease_revoke(id).await;
        Ok(None)
    }
}

/// Seconds for an etcd lease that lives at least `ttl`: leases have whole-second TTLs, so this
/// rounds up (never expire a key early).
pub(crate) fn lease_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

/// An etcd revision for a `last_index` (etcd revisions are `i64`; larger ones cannot exist).
fn revision(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// The first key after every key that starts with `prefix` (etcd's "range end" for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Inner {
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn data_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The key range holding every descendant of `dir`: `dir/` up to `dir0`; for `""` the
    /// whole prefix.
    pub(crate) fn tree_range(&self, dir: &str) -> (String, Vec<u8>) {
        if dir.is_empty() && self.prefix.is_empty() {
            // Source: etcd docs, RangeRequest — key "\0" with range_end "\0" means every key.
            ("\0".to_owned(), vec![0])
        } else if dir.is_empty() {
            (self.prefix.clone(), prefix_end(self.prefix.as_bytes()))
        } else {
            (
                format!("{}{dir}/", self.prefix),
                format!("{}{dir}0", self.prefix).into_bytes(),
            )
        }
    }

    /// The user key of an etcd key, or `None` for bookkeeping and foreign keys.
    pub(crate) fn user_key<'a>(&self, etcd_key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(self.prefix.as_str())?;
        // Bookkeeping keys start with \x01, which no valid key contains.
        (!key.starts_with('\u{1}')).then_some(key)
    }

    pub(crate) fn lock_prefix(&self, key: &str) -> String {
        format!("{}\u{1}kvstore/lock/{key}/", self.prefix)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }

    pub(crate) fn pair(&self, kv: &etcd_client::KeyValue) -> Option<KvPair> {
        let key = self.user_key(kv.key())?;
        Some(KvPair::new(
            key,
            kv.value().to_vec(),
            u64::try_from(kv.mod_revision()).ok()?,
        ))
    }

    /// Reads one key; also returns the revision the read was served at.
    pub(crate) async fn read_key(
        &self,
        key: &str,
        consistent: bool,
    ) -> Result<(Option<KvPair>, i64)> {
        let opts = (!consistent).then(|| GetOptions::new().with_serializable());
        let resp = self
            .client()
            .get(self.data_key(key), opts)
            .await
            .map_err(from_etcd)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().first().and_then(|kv| self.pair(kv)), revision))
    }

    /// Reads `dir` and its descendants in one transaction; `None` when neither exists. Also
    /// returns the revision of the read.
    pub(crate) async fn read_tree(
        &self,
        dir: &str,
        consistent: bool,
    ) -> Result<(Option<Vec<KvPair>>, i64)> {
        let (start, end) = self.tree_range(dir);
        let mut range = GetOptions::new().with_range(end);
        if !consistent {
            range = range.with_serializable();
        }
        let mut ops = vec![TxnOp::get(start, Some(range))];
        if !dir.is_empty() {
            ops.push(TxnOp::get(self.data_key(dir), None));
        }
        let resp = self
            .client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(from_etcd)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut responses = resp.op_responses().into_iter();
        let Some(TxnOpResponse::Get(range)) = responses.next() else {
            return Err(Error::backend(BACKEND, "txn returned no range response"));
        };
        let pairs: Vec<KvPair> = range.kvs().iter().filter_map(|kv| self.pair(kv)).collect();
        let dir_exists = match responses.next() {
            Some(TxnOpResponse::Get(get)) => !get.kvs().is_empty(),
            _ => false,
        };
        Ok((
            (dir.is_empty() || dir_exists || !pairs.is_empty()).then_some(pairs),
            revision,
        ))
    }

    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64> {
        Ok(self
            .client()
            .lease_grant(lease_seconds(ttl), None)
            .await
            .map_err(from_etcd)?
            .id())
    }
}

/// A kvstore [`Store`] on an etcd v3 cluster (tested against etcd 3.4).
///
/// See the crate docs for the key layout and the mapping of each call.
///
/// # Examples
///
/// ```no_run
/// use kvstore_core::Store;
/// use kvstore_etcd::{EtcdConfig, EtcdStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore_core::Result<()> {
/// let store = EtcdStore::connect(EtcdConfig::new(&["127.0.0.1:2379"])).await?;
/// store.put("app/config", b"v1", None).await?;
/// # Ok(())
/// # }
/// ```
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Ends keep-alives, renewals and watches so their tasks release the client.
        self.inner.cancel.cancel();
    }
}

impl EtcdStore {
    /// Connects and checks that a member answers (etcd-client's `connect` alone succeeds
    /// without any server).
    ///
    /// # Errors
    ///
    /// [`Error::NotReachable`] when no endpoint answers within `connect_timeout`;
    /// [`Error::InvalidConfig`] for malformed endpoints; [`Error::Backend`] for refused
    /// credentials.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "connect"))]
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let unreachable = |e: Error| match e {
            Error::Timeout | Error::NotReachable { .. } => Error::not_reachable(BACKEND, e),
            other => other,
        };
        let probe = async {
            let mut client = Client::connect(&config.endpoints, Some(opts))
                .await
                .map_err(from_etcd)?;
            client.status().await.map_err(from_etcd)?;
            Ok::<_, Error>(client)
        };
        let client = tokio::time::timeout(config.connect_timeout, probe)
            .await
            .map_err(|_| {
                Error::not_reachable(
                    BACKEND,
                    format!("no endpoint answered within {:?}", config.connect_timeout),
                )
            })?
            .map_err(unreachable)?;
        let slash = if config.leading_slash { "/" } else { "" };
        let prefix = if config.prefix.is_empty() {
            slash.to_owned()
        } else {
            format!("{slash}{}/", config.prefix)
        };
        let tasks = Tasks::new();
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                config,
                prefix,
                cancel: tasks.cancel_token().clone(),
                registrations: Registrations::new(&tasks),
                tasks,
            }),
        })
    }

    /// Writes under a precondition. One round trip, plus one to grant a lease for a TTL.
    async fn write(
        &self,
        key: &str,
        value: &[u8],
        precondition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = normalize_key(key)?;
        check_value_size(key, value, inner.config.max_value_size)?;
        let ttl = opts.and_then(|o| o.ttl);
        let sent = Instant::now();
        let lease = match ttl {
            Some(ttl) => Some(inner.grant(ttl).await?),
            None => None,
        };
        let put_opts = lease.map(|id| PutOptions::new().with_lease(id));
        let etcd_key = inner.data_key(key);
        let revision = match precondition {
            Precondition::None => {
                let resp = inner
                    .client()
                    .put(etcd_key, value.to_vec(), put_opts)
                    .await
                    .map_err(from_etcd)?;
                resp.header().map_or(0, |h| h.revision())
            }
            Precondition::Absent | Precondition::Index(_) => {
                // Source: etcd docs, "KV API guarantees" / Txn — compare mod_revision (create:
                // create_revision == 0), else read the key to tell the failure apart.
                let compare = match precondition {
                    Precondition::Index(index) => {
                        Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, revision(index))
                    }
                    _ => Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(etcd_key.clone(), value.to_vec(), put_opts)])
                    .or_else([TxnOp::get(etcd_key, None)]);
                let resp = inner.client().txn(txn).await.map_err(from_etcd)?;
                if !resp.succeeded() {
                    if let Some(id) = lease {
                        let _ = inner.client().lease_revoke(id).await;
                    }
                    let exists = resp
                        .op_responses()
                        .into_iter()
                        .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
                    return Err(match (precondition, exists) {
                        (Precondition::Absent, _) => Error::KeyExists { key: key.into() },
                        (_, false) => Error::not_found(key),
                        (_, true) => Error::KeyModified { key: key.into() },
                    });
                }
                resp.header().map_or(0, |h| h.revision())
            }
        };
        match (lease, ttl.filter(|_| opts.is_some_and(|o| o.keep_alive))) {
            (Some(id), Some(ttl)) => inner.registrations.insert(
                key,
                Bytes::copy_from_slice(value),
                ttl,
                Arc::new(EtcdLease::new(inner.clone(), id, None)),
                sent,
                Arc::new(EtcdRegistrar(inner.clone())),
            ),
            _ => inner.registrations.remove(key),
        }
        let index =
            u64::try_from(revision).map_err(|_| Error::backend(BACKEND, "negative revision"))?;
        Ok(KvPair::new(key, value.to_vec(), index))
    }

    async fn remove(&self, key: &str, precondition: Precondition) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = normalize_key(key)?;
        let etcd_key = inner.data_key(key);
        let compare = match precondition {
            Precondition::Index(index) => {
                Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, revision(index))
            }
            _ => Compare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(etcd_key.clone(), None)])
            .or_else([TxnOp::get(etcd_key, None)]);
        let resp = inner.client().txn(txn).await.map_err(from_etcd)?;
        if resp.succeeded() {
            inner.registrations.remove(key);
            return Ok(());
        }
        let exists = resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
        Err(if exists {
            Error::KeyModified { key: key.into() }
        } else {
            Error::not_found(key)
        })
    }
}

fn consistent(opts: Option<&ReadOptions>) -> bool {
    opts.is_none_or(|o| o.consistent)
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all().with_max_value_size(self.inner.config.max_value_size)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "put", key = %key))]
    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        self.write(key, value, Precondition::None, opts).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "get", key = %key))]
    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        self.inner
            .read_key(key, consistent(opts))
            .await?
            .0
            .ok_or_else(|| Error::not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete", key = %key))]
    async fn delete(&self, key: &str) -> Result<()> {
        self.remove(key, Precondition::None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "exists", key = %key))]
    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        self.inner.check_open()?;
        let key = normalize_key(key)?;
        let mut get = GetOptions::new().with_count_only();
        if !consistent(opts) {
            get = get.with_serializable();
        }
        let resp = self
            .inner
            .client()
            .get(self.inner.data_key(key), Some(get))
            .await
            .map_err(from_etcd)?;
        Ok(resp.count() > 0)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "list", key = %dir))]
    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?;
        self.inner
            .read_tree(dir, consistent(opts))
            .await?
            .0
            .ok_or_else(|| Error::not_found(dir))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "delete_tree", key = %dir))]
    async fn delete_tree(&self, dir: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let dir = normalize_dir(dir)?;
        let (start, end) = inner.tree_range(dir);
        let mut ops = vec![TxnOp::delete(
            start,
            Some(etcd_client::DeleteOptions::new().with_range(end)),
        )];
        if !dir.is_empty() {
            ops.push(TxnOp::delete(inner.data_key(dir), None));
        }
        let resp = inner
            .client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(from_etcd)?;
        let deleted: i64 = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted(),
                _ => 0,
            })
            .sum();
        if deleted == 0 {
            Err(Error::not_found(dir))
        } else {
            inner.registrations.remove_tree(dir);
            Ok(())
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_put", key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.write(key, value, Precondition::of(previous), opts)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "atomic_delete", key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.remove(key, Precondition::Index(previous.last_index))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch", key = %key))]
    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        self.inner.check_open()?;
        let key = normalize_key(key)?.to_owned();
        watch_key(self.inner.clone(), key, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "watch_tree", key = %dir))]
    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        self.inner.check_open()?;
        let dir = normalize_dir(dir)?.to_owned();
        watch_tree(self.inner.clone(), dir, consistent(opts)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "new_lock", key = %key))]
    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        self.inner.check_open()?;
        let (key, opts) = lock_arguments(
            BACKEND,
            key,
            opts,
            Duration::ZERO,
            self.inner.config.max_value_size,
        )?;
        Ok(Box::new(EtcdLocker::new(self.inner.clone(), key, opts)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, op = "close"))]
    async fn close(&self) -> Result<()> {
        // Stops registrations (their keys expire with their leases), ends watches, and revokes
        // held locks' leases; waits for the revokes to be sent.
        self.inner.tasks.close(CLOSE_TIMEOUT).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
