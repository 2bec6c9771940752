//! The connection and the primitive reads, writes and lease steps every part of the etcd
//! backend shares: the key layout, reads of keys and ranges, leases, and the `keep_alive`
//! lease and registrar for the lease engine.

use derive_where::derive_where;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use kvstore_core::backend::{Lease, Release, Renewal, Tasks};
use kvstore_core::{Error, KvPair, Result};

use crate::BACKEND;
use crate::config::EtcdConfig;
use crate::error::from_etcd;

/// Keys of the first page of a directory read (see [`Inner::read_tree`]).
const PAGE_KEYS: i64 = 1_000;
/// Keys per page at most: pages grow while their replies stay small.
const MAX_PAGE_KEYS: i64 = 16_384;
/// The reply size pages grow towards: a quarter of the client's 4 MiB decode limit.
const PAGE_BYTES: usize = 1 << 20;

/// Why a paged read stopped.
enum Paging {
    /// The revision the pages are read at was compacted: the read starts over.
    Compacted(Error),
    Failed(Error),
}

/// etcd-client's TLS options for `tls`: the CA file's roots (else the platform's), the client
/// certificate, and the name to verify.
pub(crate) fn tls_options(tls: &kvstore_core::TlsConfig) -> Result<etcd_client::TlsOptions> {
    kvstore_core::backend::tls::install_crypto_provider();
    let files = kvstore_core::backend::load_tls(tls, BACKEND)?;
    let mut opts = etcd_client::TlsOptions::new();
    opts = match files.ca {
        Some(ca) => opts.ca_certificate(etcd_client::Certificate::from_pem(ca)),
        None => opts.with_native_roots(),
    };
    if let Some((cert, key)) = files.identity {
        opts = opts.identity(etcd_client::Identity::from_pem(cert, key));
    }
    if let Some(name) = files.server_name {
        opts = opts.domain_name(name);
    }
    Ok(opts)
}

/// `err` (a failed connect over TLS) as `PermissionDenied` when a TLS handshake with the first
/// endpoint shows that TLS refused the connection: tonic reports a server's "certificate
/// required" alert only as a closed connection.
pub(crate) async fn diagnose_tls(config: &EtcdConfig, err: Error) -> Error {
    let (Some(tls), Some(endpoint)) = (&config.tls, config.endpoints.first()) else {
        return err;
    };
    let addr = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    kvstore_core::backend::tls::refusal(BACKEND, tls, addr, config.connect_timeout)
        .await
        .unwrap_or(err)
}

/// Connection state shared by the store, its watches and its locks.
#[derive_where(Debug)]
pub(crate) struct Inner {
    #[derive_where(skip)]
    pub(crate) client: Client,
    pub(crate) config: EtcdConfig,
    /// `""` or `"<prefix>/"`, with a `/` in front when `leading_slash` is set.
    pub(crate) prefix: String,
    /// Background work (lock and registration renewals, releases, the watch stream); `close`
    /// waits for it.
    pub(crate) tasks: Tasks,
    /// The one watch stream all watches of this store share.
    pub(crate) watch_hub: crate::mux::WatchHub,
}

/// An etcd lease for the lease engine: renewed with one `LeaseKeepAlive` request on a stream
/// kept open between renewals (and reopened after an error); released by revoking it, which
/// deletes every key attached to it (a lock's waiter key).
/// Source: etcd docs, "Lease API" — LeaseKeepAlive answers TTL <= 0 for an expired lease.
pub(crate) struct EtcdLease {
    inner: Arc<Inner>,
    pub(crate) id: i64,
    stream: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
    /// Deleted before the revoke on `unlock` (a lock with `delete_on_unlock`), while the
    /// holder key (the second) is still attached to this lease.
    delete_on_unlock: Option<(String, String)>,
}

impl fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EtcdLease({:x})", self.id)
    }
}

impl EtcdLease {
    pub(crate) fn new(
        inner: Arc<Inner>,
        id: i64,
        delete_on_unlock: Option<(String, String)>,
    ) -> Self {
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
                    .call(self.inner.client().lease_keep_alive(self.id))
                    .await?,
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
            // Only while the holder key is still attached to this lease: once the lease has
            // expired another client may hold the lock and have written the key (source: etcd
            // API reference, "Txn" — a `LEASE` compare on a missing key sees lease 0).
            (Some((key, holder)), Release::Unlock) => {
                let txn = etcd_client::Txn::new()
                    .when([etcd_client::Compare::lease(
                        holder.as_str(),
                        etcd_client::CompareOp::Equal,
                        self.id,
                    )])
                    .and_then([etcd_client::TxnOp::delete(key.as_str(), None)]);
                self.inner
                    .client()
                    .txn(txn)
                    .await
                    .map(drop)
                    .map_err(from_etcd)
            }
            _ => Ok(()),
        };
        let mut client = self.inner.client();
        let revoke = client.lease_revoke(self.id);
        match tokio::time::timeout(self.inner.config.request_timeout, revoke).await {
            Err(_) => return Err(Error::Timeout),
            Ok(Ok(_)) => {}
            // Source: etcd API reference, LeaseRevoke — a lease that already expired (as one
            // does when the leader that granted it dies and its TTL runs out meanwhile) is
            // "requested lease not found" (gRPC NotFound): there is nothing left to release.
            // Found by the failover check, where `unlock` after a leader kill failed with it.
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.code() == tonic::Code::NotFound => {}
            Ok(Err(err)) => return Err(from_etcd(err)),
        }
        deleted
    }
}

/// Seconds for an etcd lease that lives at least `ttl`: leases have whole-second TTLs, so this
/// rounds up (never expire a key early).
pub(crate) fn lease_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

/// An etcd revision for a `last_index` (etcd revisions are `i64`; larger ones cannot exist).
pub(crate) fn revision(index: u64) -> i64 {
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

    /// Awaits one request to the cluster within `request_timeout`, whole. The client's own
    /// timeout covers a request once a connection took it, not the wait for a ready
    /// connection before that (with several endpoints, one whose member was just killed is
    /// reconnecting); this bound covers both.
    ///
    /// # Errors
    ///
    /// `Timeout` when the bound passes; the request's own error otherwise (`from_etcd`).
    pub(crate) async fn call<T>(
        &self,
        request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        tokio::time::timeout(self.config.request_timeout, request)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(from_etcd)
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

    /// The hidden key a lock's holder writes with its lease when it takes the lock; its
    /// `mod_revision` is the fencing token (what `Txn::when_held` compares).
    pub(crate) fn holder_key(&self, key: &str) -> String {
        format!("{}\u{1}kvstore/held/{key}", self.prefix)
    }

    pub(crate) fn lock_prefix(&self, key: &str) -> String {
        format!("{}\u{1}kvstore/lock/{key}/", self.prefix)
    }

    /// As [`pair`](Self::pair), moving the value out of `kv` instead of copying it.
    pub(crate) fn owned_pair(&self, kv: etcd_client::KeyValue) -> Option<KvPair> {
        let revision = u64::try_from(kv.mod_revision()).ok()?;
        let (key, value) = kv.into_key_value();
        Some(KvPair::new(self.user_key(&key)?, value, revision))
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
        let mut resp = self
            .call(self.client().get(self.data_key(key), opts))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kv = resp.take_kvs().into_iter().next();
        Ok((kv.and_then(|kv| self.owned_pair(kv)), revision))
    }

    /// Every key under `dir` at one revision, and that revision: `None` when neither `dir` nor
    /// anything under it exists.
    ///
    /// The range is read in pages, the first of [`PAGE_KEYS`] keys, so no reply passes the
    /// client's 4 MiB decode limit however large the directory (100,000 keys of 64 bytes are
    /// a 14 MB reply); a page whose reply was under [`PAGE_BYTES`] doubles the next one, up to
    /// [`MAX_PAGE_KEYS`]. Few pages matter: etcd 3.4 walks the rest of the range for every
    /// page it answers (its index lookup takes no limit), so 1,000-key pages made a listing of
    /// 100,000 keys 100 walks of the remaining range: about 1 s where one range took 0.15 s. The first page fixes the revision; the pages
    /// after it, and `dir`'s own key when the range is empty, are read at that revision (source: etcd API reference,
    /// `RangeRequest.revision` and `RangeResponse.more`), so together they are the directory
    /// at one moment. A page that still passes the limit (large values) is read again at half
    /// the size. When the server compacts that revision before the last page, the read starts
    /// over at the current revision.
    pub(crate) async fn read_tree(
        &self,
        dir: &str,
        consistent: bool,
    ) -> Result<(Option<Vec<KvPair>>, i64)> {
        let mut attempts = 0;
        loop {
            match self.read_tree_once(dir, consistent).await {
                Err(Paging::Compacted(_)) if attempts < 3 => attempts += 1,
                Err(Paging::Compacted(err) | Paging::Failed(err)) => return Err(err),
                Ok(read) => return Ok(read),
            }
        }
    }

    async fn read_tree_once(
        &self,
        dir: &str,
        consistent: bool,
    ) -> std::result::Result<(Option<Vec<KvPair>>, i64), Paging> {
        let (start, end) = self.tree_range(dir);
        let mut limit = PAGE_KEYS;
        let options = |limit: i64| {
            let range = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if consistent {
                range
            } else {
                range.with_serializable()
            }
        };
        let mut range = self
            .page(&mut limit, |limit| {
                let (mut client, start) = (self.client(), start.clone());
                let options = options(limit);
                async move { client.get(start, Some(options)).await }
            })
            .await?;
        let revision = range.header().map_or(0, |h| h.revision());
        // An empty directory exists when its own key does: read it at the same revision, so
        // both answers come from one snapshot. A range alone, not a transaction of both, for
        // every directory with keys: etcd serves a range for less than a transaction, and
        // `op_responses` would clone every pair of the reply.
        let dir_exists = || async {
            let own = self
                .page(&mut 1, |_| {
                    let mut client = self.client();
                    let options = GetOptions::new().with_revision(revision);
                    let key = self.data_key(dir);
                    async move { client.get(key, Some(options)).await }
                })
                .await?;
            Ok::<_, Paging>(!own.kvs().is_empty())
        };
        let mut pairs = Vec::new();
        loop {
            grow(&mut limit, range.kvs());
            let more = range.more();
            let last = range.kvs().last().map(|kv| kv.key().to_vec());
            pairs.extend(
                range
                    .take_kvs()
                    .into_iter()
                    .filter_map(|kv| self.owned_pair(kv)),
            );
            let Some(mut from) = last.filter(|_| more) else {
                break;
            };
            // The next key after the last one read.
            from.push(0);
            range = self
                .page(&mut limit, |limit| {
                    let (mut client, from) = (self.client(), from.clone());
                    let options = options(limit).with_revision(revision);
                    async move { client.get(from, Some(options)).await }
                })
                .await?;
        }
        let exists = dir.is_empty() || !pairs.is_empty() || dir_exists().await?;
        Ok((exists.then_some(pairs), revision))
    }

    /// One page request with `limit` keys, within `request_timeout`; read again with half the
    /// keys while its reply passes the client's decode limit.
    async fn page<T, F>(
        &self,
        limit: &mut i64,
        request: impl Fn(i64) -> F,
    ) -> std::result::Result<T, Paging>
    where
        F: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        loop {
            let reply = tokio::time::timeout(self.config.request_timeout, request(*limit))
                .await
                .map_err(|_| Paging::Failed(Error::Timeout))?;
            match reply {
                Ok(reply) => return Ok(reply),
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange
                        && status.message().contains("compacted") =>
                {
                    let err = etcd_client::Error::GRpcStatus(status);
                    return Err(Paging::Compacted(from_etcd(err)));
                }
                // tonic's own refusal of a reply over its decode limit.
                Err(etcd_client::Error::GRpcStatus(status))
                    if *limit > 1 && status.message().contains("message length too large") =>
                {
                    *limit /= 2;
                }
                Err(err) => return Err(Paging::Failed(from_etcd(err))),
            }
        }
    }

    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64> {
        Ok(self
            .call(self.client().lease_grant(lease_seconds(ttl), None))
            .await?
            .id())
    }
}

/// Doubles the next page's `limit` (up to [`MAX_PAGE_KEYS`]) when the page just read, `kvs`,
/// was a full page under half of [`PAGE_BYTES`], so the next one stays under it.
fn grow(limit: &mut i64, kvs: &[etcd_client::KeyValue]) {
    let bytes: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
    *limit = next_limit(*limit, kvs.len(), bytes);
}

/// [`grow`]'s rule: the next page's size after a page of `keys` keys and `bytes` bytes read
/// with `limit`.
fn next_limit(limit: i64, keys: usize, bytes: usize) -> i64 {
    if i64::try_from(keys).unwrap_or(i64::MAX) >= limit && bytes < PAGE_BYTES / 2 {
        (limit * 2).min(MAX_PAGE_KEYS)
    } else {
        limit
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
    fn pages_grow_only_while_full_and_small() {
        // 1,000 small pairs: doubles, up to the cap.
        assert_eq!(next_limit(1_000, 1_000, 150_000), 2_000);
        assert_eq!(next_limit(16_384, 16_384, 400_000), MAX_PAGE_KEYS);
        assert_eq!(next_limit(12_000, 12_000, 400_000), MAX_PAGE_KEYS);
        // The last (short) page, or a page of large values: stays.
        assert_eq!(next_limit(1_000, 10, 1_500), 1_000);
        assert_eq!(next_limit(8, 8, 8 << 20), 8);
        assert_eq!(next_limit(2_000, 2_000, PAGE_BYTES / 2), 2_000);
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
