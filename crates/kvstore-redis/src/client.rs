//! The connection and the primitive reads, writes and lease steps every part of the Redis
//! backend shares: the key layout, the scripts' calls, keyspace-notification checks, and the
//! `keep_alive` lease and registrar for the lease engine.

use derive_where::derive_where;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{KeyLease, Lease, Precondition, RenewKey, Since, Tasks, ttl_millis};
use kvstore_core::{Error, Event, EventKind, KvPair, Result, normalize_key};
use redis::Value;

use crate::BACKEND;
use crate::config::RedisConfig;
use crate::error::{from_redis, is_connection_failure, is_wrong_type, protocol};
use crate::primary::{Conn, Primary};
use crate::scripts;

const NOTIFICATIONS_ON: u8 = 1;
const NOTIFICATIONS_OFF: u8 = 2;

/// The redis client for `config`: over TLS (`rediss://`) with the configured CA and client
/// certificate, through the one rustls provider kvstore installs.
pub(crate) fn open_client(config: &RedisConfig) -> Result<redis::Client> {
    let url = config.server_url.as_str();
    let invalid = |e: redis::RedisError| Error::invalid_config(BACKEND, e);
    let Some(tls) = &config.tls else {
        return redis::Client::open(url).map_err(invalid);
    };
    // The redis crate builds its rustls config with the process default provider and compiles
    // in none of its own.
    kvstore_core::backend::tls::install_crypto_provider();
    let files = kvstore_core::backend::load_tls(tls, BACKEND)?;
    if files.ca.is_none() && files.identity.is_none() {
        return redis::Client::open(url).map_err(invalid);
    }
    let certs = redis::TlsCertificates {
        client_tls: files
            .identity
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: files.ca,
    };
    redis::Client::build_with_tls(url, certs).map_err(invalid)
}

/// Connection state shared by the store, its watches and its locks.
#[derive_where(Debug)]
pub(crate) struct Inner {
    /// The server calls go to (followed across failovers with Redis Sentinel).
    #[derive_where(skip)]
    pub(crate) primary: Arc<Primary>,
    pub(crate) config: RedisConfig,
    /// `""` or `"<prefix>/"`: prepended to every key.
    pub(crate) prefix: String,
    pub(crate) db: i64,
    /// Background work (lock renewals, registrations, releases, the Sentinel follower and the
    /// pub/sub task); `close` waits for it.
    pub(crate) tasks: Tasks,
    /// Whether keyspace notifications were on at the last check: `NOTIFICATIONS_*`. Checked at
    /// connect so `capabilities()` tells the truth; rechecked by every watch and lock while off,
    /// so turning them on later is noticed.
    pub(crate) notifications: AtomicU8,
    /// The one pub/sub connection of this store's watches and lock waiters.
    pub(crate) pubsub: crate::pubsub::PubSub,
}

impl Inner {
    /// A connection for calls that change nothing.
    pub(crate) fn conn(&self) -> Conn {
        self.primary.conn()
    }

    /// A connection for calls that write (with `wait_replicas`, each waits for the replicas).
    pub(crate) fn write_conn(&self) -> Conn {
        self.primary.write_conn()
    }

    pub(crate) fn data_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn internal_key(&self, name: &str) -> String {
        // \x01 cannot occur in a valid key, so internal keys never collide with data keys.
        format!("{}\u{1}kvstore/{name}", self.prefix)
    }

    pub(crate) fn rev_key(&self) -> String {
        self.internal_key("rev")
    }

    pub(crate) fn index_key(&self) -> String {
        self.internal_key("index")
    }

    pub(crate) fn lock_key(&self, key: &str) -> String {
        self.internal_key(&format!("lock/{key}"))
    }

    /// The keyspace-notification channel of a Redis key.
    /// Source: Redis docs, "Redis keyspace notifications" — `__keyspace@<db>__:<key>`.
    pub(crate) fn keyspace_channel(&self, redis_key: &str) -> String {
        format!("__keyspace@{}__:{redis_key}", self.db)
    }

    /// The keyspace-notification pattern for every key strictly below `dir` (all keys for `""`).
    pub(crate) fn keyspace_tree_pattern(&self, dir: &str) -> String {
        let base = if dir.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{dir}/", self.prefix)
        };
        format!("__keyspace@{}__:{}*", self.db, escape_glob(&base))
    }

    pub(crate) async fn read_key(&self, key: &str) -> Result<Option<KvPair>> {
        let reply: redis::RedisResult<(Option<Vec<u8>>, Option<u64>)> = redis::cmd("HMGET")
            .arg(self.data_key(key))
            .arg("v")
            .arg("i")
            .query_async(&mut self.conn())
            .await;
        let (value, index) = match reply {
            Ok(reply) => reply,
            // Not a hash: a plain string another client wrote (or a type kvstore cannot read,
            // which the script reports). One more round trip, for foreign keys only.
            Err(err) if is_wrong_type(&err) => scripts::READ
                .key(self.data_key(key))
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)?,
            Err(err) => return Err(from_redis(err)),
        };
        Ok(match (value, index) {
            (Some(value), Some(index)) => Some(KvPair::new(key, value, index)),
            _ => None,
        })
    }

    /// With `foreign_strings`, the user keys of plain strings below `dir` (every key for `""`)
    /// that another client wrote, found with `SCAN … MATCH … TYPE string` (Redis 6.0+;
    /// source: Redis docs, "SCAN"). Names outside the key grammar (kvstore's own lock keys,
    /// other applications' keys) are skipped.
    pub(crate) async fn foreign_strings(&self, dir: &str) -> Result<Vec<String>> {
        if !self.config.foreign_strings {
            return Ok(Vec::new());
        }
        let base = if dir.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{dir}/", self.prefix)
        };
        let pattern = format!("{}*", escape_glob(&base));
        let mut conn = self.conn();
        let mut cursor = 0u64;
        let mut found = Vec::new();
        loop {
            let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("TYPE")
                .arg("string")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(from_redis)?;
            found.extend(names.into_iter().filter_map(|name| {
                let key = name.strip_prefix(self.prefix.as_str())?;
                (normalize_key(key).ok() == Some(key)).then(|| key.to_owned())
            }));
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// `None` when neither `dir` nor any descendant exists.
    ///
    /// A directory of up to [`LIST_PAGE`] keys is one `LIST` run, as before; a larger one is
    /// read in pages joined at one revision ([`read_pages`](Self::read_pages)), so no run
    /// blocks the server for the whole directory.
    pub(crate) async fn read_tree(&self, dir: &str) -> Result<Option<Vec<KvPair>>> {
        let foreign = self.foreign_strings(dir).await?;
        let first = self.list_page(dir, false, "", LIST_PAGE, &foreign).await?;
        if first.more.is_none() {
            return Ok(first.exists.then_some(first.pairs));
        }
        // The first page was read without a revision (a plain read may go to any connection),
        // so the paged read starts over with one that has it.
        let (pairs, _) = self.read_pages(dir, &foreign, None).await?;
        // Emptied while it was read: one run says whether `dir` itself is there.
        if pairs.is_empty() {
            let whole = self.list_page(dir, false, "", 0, &foreign).await?;
            return Ok(whole.exists.then_some(whole.pairs));
        }
        Ok(Some(pairs))
    }

    /// `list_at`: the pairs under `dir`, the revision they were read at, and the change log's
    /// epoch; expiries are logged first, so the pairs are the state at that revision. Read in
    /// pages as [`read_tree`](Self::read_tree) is.
    pub(crate) async fn read_tree_at(&self, dir: &str) -> Result<(Vec<KvPair>, Logged)> {
        let foreign = self.foreign_strings(dir).await?;
        let first = self.list_page(dir, true, "", LIST_PAGE, &foreign).await?;
        if first.more.is_none() {
            return Ok((first.pairs, first.at));
        }
        self.read_pages(dir, &foreign, Some(first)).await
    }

    /// A directory larger than one page, read as one state: pages of [`LIST_PAGE`] index
    /// members, each at the revision its run read it at, then the change log's events under
    /// `dir` after the first page's revision, each applied to the page read before it. Every
    /// page is thereby rolled forward to the revision of that log read, which is the
    /// listing's. The log holds every change with its new value (each write appends to it in
    /// the same script), so this is exact. When the log no longer reaches back to the first
    /// page, or started again, the read starts again; after [`PAGED_ATTEMPTS`], the directory
    /// is read in one run. `first`, when given, is the first page already read at its revision
    /// (it serves the first attempt).
    async fn read_pages(
        &self,
        dir: &str,
        foreign: &[String],
        mut first: Option<ListPage>,
    ) -> Result<(Vec<KvPair>, Logged)> {
        'attempt: for _ in 0..PAGED_ATTEMPTS {
            // The pages' pairs, in one vector (a map keyed by a copy of each key held the
            // directory's keys twice).
            let mut pairs: Vec<KvPair> = Vec::new();
            // Per page, in order: the last index member it covers (`None` for the last page)
            // and the revision it was read at.
            let mut pages: Vec<(Option<String>, u64)> = Vec::new();
            let mut after = String::new();
            let mut epoch: Option<String> = None;
            loop {
                let page = match first.take().filter(|_| after.is_empty()) {
                    Some(page) => page,
                    None => {
                        let names = if after.is_empty() { foreign } else { &[] };
                        self.list_page(dir, true, &after, LIST_PAGE, names).await?
                    }
                };
                if *epoch.get_or_insert_with(|| page.at.epoch.clone()) != page.at.epoch {
                    continue 'attempt;
                }
                pages.push((page.more.clone(), page.at.revision));
                pairs.extend(page.pairs);
                match page.more {
                    Some(last) => after = last,
                    None => break,
                }
            }
            let (since, at) = self.read_since(dir, pages[0].1).await?;
            let (Some(epoch), Since::Events(events, _)) = (epoch, since) else {
                continue;
            };
            if epoch != at.epoch {
                continue;
            }
            // The last change of each key that a page has not seen yet.
            let mut changes: BTreeMap<String, Option<KvPair>> = BTreeMap::new();
            for event in events {
                // The page whose range holds the key: the first whose last member is not
                // before it.
                let page = pages.partition_point(|(last, _)| {
                    last.as_deref()
                        .is_some_and(|last| last < event.key.as_str())
                });
                if pages
                    .get(page)
                    .is_none_or(|&(_, read_at)| event.last_index <= read_at)
                {
                    continue;
                }
                let change = match event.kind {
                    EventKind::Put => Some(KvPair::new(
                        event.key.clone(),
                        event.value,
                        event.last_index,
                    )),
                    _ => None,
                };
                changes.insert(event.key, change);
            }
            // Pages are in key order, but the first one's plain strings are not in the index.
            if !foreign.is_empty() {
                pairs.sort_by(|a, b| a.key.cmp(&b.key));
            }
            roll_forward(&mut pairs, changes);
            return Ok((pairs, at));
        }
        let whole = self.list_page(dir, true, "", 0, foreign).await?;
        Ok((whole.pairs, whole.at))
    }

    /// One `LIST` run (see [`scripts::LIST`]): at a revision when `at`, from after the index
    /// member `after` (`""`: from the first), of at most `limit` members (0: all).
    async fn list_page(
        &self,
        dir: &str,
        at: bool,
        after: &str,
        limit: usize,
        foreign: &[String],
    ) -> Result<ListPage> {
        let mut script = scripts::LIST.key(self.index_key());
        if at {
            script.key(self.rev_key());
        }
        let mut conn = if at { self.write_conn() } else { self.conn() };
        let reply: Vec<Value> = script
            .arg(&self.prefix)
            .arg(dir)
            .arg(after)
            .arg(limit)
            .arg(foreign)
            .invoke_async(&mut conn)
            .await
            .map_err(from_redis)?;
        let mut items = reply.into_iter();
        let exists = matches!(items.next(), Some(Value::Int(1)));
        let at = Logged::parse(items.next(), items.next())?;
        let more: String = items
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| protocol("list continuation"))?;
        let mut pairs = Vec::new();
        while let (Some(key), Some(value), Some(index)) = (items.next(), items.next(), items.next())
        {
            let key: String = redis::from_redis_value(key).map_err(|_| protocol("list key"))?;
            let value: Vec<u8> =
                redis::from_redis_value(value).map_err(|_| protocol("list value"))?;
            let index: u64 = redis::from_redis_value(index).map_err(|_| protocol("list index"))?;
            pairs.push(KvPair::new(key, Bytes::from(value), index));
        }
        if !foreign.is_empty() {
            // The script appends plain strings after the sorted index members.
            pairs.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Ok(ListPage {
            exists,
            at,
            more: (!more.is_empty()).then_some(more),
            pairs,
        })
    }

    /// `watch_events`' read: the changes under `dir` after revision `after` (see
    /// [`scripts::EVENTS`]), and the revision and epoch of the log they were read from.
    pub(crate) async fn read_since(&self, dir: &str, after: u64) -> Result<(Since, Logged)> {
        let reply: Vec<Value> = scripts::EVENTS
            .key(self.rev_key())
            .key(self.index_key())
            .arg(&self.prefix)
            .arg(dir)
            .arg(after)
            .invoke_async(&mut self.write_conn())
            .await
            .map_err(from_redis)?;
        let mut items = reply.into_iter();
        let status = match items.next() {
            Some(Value::Int(status)) => status,
            _ => return Err(protocol("events status")),
        };
        let at = Logged::parse(items.next(), items.next())?;
        match status {
            scripts::OK => {}
            scripts::LOG_MOVED_ON => return Ok((Since::Unknown, at)),
            scripts::LOG_BEHIND => {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "the store's revision {} is below {after}: the server lost its data \
                         (restarted without persistence, or flushed); watch again for a Snapshot",
                        at.revision
                    ),
                ));
            }
            _ => return Err(protocol("events status")),
        }
        let mut events = Vec::new();
        while let (Some(rev), Some(kind), Some(key), Some(value)) =
            (items.next(), items.next(), items.next(), items.next())
        {
            let text = |v: Value, what| -> Result<String> {
                redis::from_redis_value(v).map_err(|_| protocol(what))
            };
            let rev: u64 = text(rev, "event revision")?
                .parse()
                .map_err(|_| protocol("event revision"))?;
            let key = text(key, "event key")?;
            events.push(match text(kind, "event kind")?.as_str() {
                "p" => {
                    let value: Vec<u8> =
                        redis::from_redis_value(value).map_err(|_| protocol("event value"))?;
                    Event::put(key, value, rev)
                }
                "d" => Event::delete(key, rev),
                _ => return Err(protocol("event kind")),
            });
        }
        Ok((Since::Events(events, at.revision), at))
    }

    /// Fails with a message saying how to enable keyspace notifications when they are off.
    /// Source: Redis docs, "Redis keyspace notifications" — configuration flags K, g, h, x, $, A.
    /// Refuses a server in Redis Cluster mode (`INFO cluster` says `cluster_enabled:1`): every
    /// kvstore script touches several keys of a store in one atomic step (the pair, the
    /// store-wide revision counter, the key index), and a cluster runs a script only when all
    /// its keys share one hash slot. An `INFO` the user may not run proves nothing and is let
    /// through. Source: Redis docs, "Redis cluster specification" (multi-key operations and
    /// hash slots) and "INFO" (`cluster_enabled`).
    pub(crate) async fn refuse_cluster(&self) -> Result<()> {
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut self.conn())
            .await;
        match info {
            Ok(info) if info.lines().any(|l| l.trim() == "cluster_enabled:1") => {
                Err(Error::invalid_config(
                    BACKEND,
                    "this Redis server runs in Cluster mode, which kvstore does not support: its \
                     atomic calls touch several keys of a store at once (the pair, the revision \
                     counter, the key index), which a cluster allows only within one hash slot; \
                     use a standalone server (or one behind Sentinel)",
                ))
            }
            Ok(_) => Ok(()),
            Err(err) if is_connection_failure(&err) => Err(from_redis(err)),
            Err(_) => Ok(()),
        }
    }

    pub(crate) async fn check_notifications(&self) -> Result<()> {
        if self.notifications.load(Ordering::Acquire) == NOTIFICATIONS_ON {
            return Ok(());
        }
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut self.conn())
            .await;
        let flags = match reply {
            Ok(reply) => reply.get(1).cloned().unwrap_or_default(),
            Err(err) if is_connection_failure(&err) => return Err(from_redis(err)),
            Err(err) => {
                // CONFIG may be renamed or forbidden on managed servers: trust the operator.
                tracing::warn!(error = %err, "cannot read notify-keyspace-events; assuming keyspace notifications are on");
                self.notifications
                    .store(NOTIFICATIONS_ON, Ordering::Release);
                return Ok(());
            }
        };
        let has = |c| flags.contains(c);
        if has('K') && (has('A') || ['g', 'h', 'x', '$'].into_iter().all(has)) {
            self.notifications
                .store(NOTIFICATIONS_ON, Ordering::Release);
            Ok(())
        } else {
            self.notifications
                .store(NOTIFICATIONS_OFF, Ordering::Release);
            Err(Error::invalid_config(
                BACKEND,
                format!(
                    "Redis keyspace notifications are off (notify-keyspace-events = {flags:?}); watches and \
                     locks need them: run `CONFIG SET notify-keyspace-events KA` or set \
                     `notify-keyspace-events KA` in redis.conf"
                ),
            ))
        }
    }

    /// Whether watches and locks work: false once a check found keyspace notifications off.
    pub(crate) fn notifications_on(&self) -> bool {
        self.notifications.load(Ordering::Acquire) != NOTIFICATIONS_OFF
    }

    pub(crate) async fn write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        mode: &str,
        expected: u64,
    ) -> Result<KvPair> {
        let (status, index): (i64, u64) = scripts::PUT
            .key(self.data_key(key))
            .key(self.rev_key())
            .key(self.index_key())
            .arg(value)
            .arg(ttl.map_or(0, ttl_millis))
            .arg(mode)
            .arg(expected)
            .arg(key)
            .invoke_async(&mut self.write_conn())
            .await
            .map_err(from_redis)?;
        match status {
            scripts::OK => Ok(KvPair::new(key, value.to_vec(), index)),
            scripts::EXISTS => Err(Error::KeyExists { key: key.into() }),
            scripts::NOT_FOUND => Err(Error::not_found(key)),
            scripts::MODIFIED => Err(Error::KeyModified { key: key.into() }),
            _ => Err(protocol("put status")),
        }
    }

    pub(crate) fn key_lease(
        self: &Arc<Self>,
        key: &str,
        index: u64,
        ttl: Duration,
    ) -> Arc<dyn Lease> {
        KeyLease::shared(Arc::clone(self), key, index, ttl)
    }

    pub(crate) async fn remove(&self, key: &str, precondition: Precondition) -> Result<()> {
        let (mode, expected) = script_mode(precondition);
        let status: i64 = scripts::DELETE
            .key(self.data_key(key))
            .key(self.index_key())
            .key(self.rev_key())
            .arg(mode)
            .arg(expected)
            .arg(key)
            .invoke_async(&mut self.write_conn())
            .await
            .map_err(from_redis)?;
        match status {
            scripts::OK => Ok(()),
            scripts::NOT_FOUND => Err(Error::not_found(key)),
            scripts::MODIFIED => Err(Error::KeyModified { key: key.into() }),
            _ => Err(protocol("delete status")),
        }
    }
}

/// Applies `changes` (per key, its new pair or `None` for a deletion) to `pairs`, sorted by
/// key, in place: a changed key is replaced or removed where it stands, a new one appended,
/// and the vector sorted again only when something was appended (a stable sort of two sorted
/// runs is one merge).
fn roll_forward(pairs: &mut Vec<KvPair>, changes: BTreeMap<String, Option<KvPair>>) {
    // Positions to remove, ascending (the changes come in key order), dropped in one pass.
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for (key, change) in changes {
        match (pairs.binary_search_by(|p| p.key.as_str().cmp(&key)), change) {
            (Ok(at), Some(pair)) => pairs[at] = pair,
            (Ok(at), None) => removed.push(at),
            (Err(_), Some(pair)) => added.push(pair),
            (Err(_), None) => {}
        }
    }
    if !removed.is_empty() {
        let mut removed = removed.into_iter().peekable();
        let mut at = 0;
        pairs.retain(|_| {
            let gone = removed.next_if_eq(&at).is_some();
            at += 1;
            !gone
        });
    }
    if !added.is_empty() {
        pairs.extend(added);
        pairs.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

/// Index members one `LIST` run reads at most before a listing goes on in pages: 1,000 take
/// about 6 ms of the server's time, where 100,000 in one run held it for 0.62 s.
pub(crate) const LIST_PAGE: usize = 1_000;

/// Paged reads of a directory that changes faster than the change log keeps up with, before
/// it is read in one run.
const PAGED_ATTEMPTS: usize = 3;

/// One `LIST` run's answer.
struct ListPage {
    /// `dir` or a descendant exists.
    exists: bool,
    /// The revision and log epoch it was read at (0 and `""` without `at`).
    at: Logged,
    /// The last index member read, when more may follow it.
    more: Option<String>,
    pairs: Vec<KvPair>,
}

/// Where a read of the change log was made: the store's revision and the log's epoch (which
/// changes when the log starts again, after the server lost its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) revision: u64,
    pub(crate) epoch: String,
}

impl Logged {
    /// From a script's revision and epoch replies (`'0'` and `''` for a plain `list`).
    fn parse(revision: Option<Value>, epoch: Option<Value>) -> Result<Logged> {
        let text = |v: Option<Value>, what| -> Result<String> {
            v.and_then(|v| redis::from_redis_value(v).ok())
                .ok_or_else(|| protocol(what))
        };
        Ok(Logged {
            revision: text(revision, "revision")?
                .parse()
                .map_err(|_| protocol("revision"))?,
            epoch: text(epoch, "log epoch")?,
        })
    }
}

/// The scripts' `mode` and expected-index arguments for a precondition.
pub(crate) fn script_mode(precondition: Precondition) -> (&'static str, u64) {
    match precondition {
        Precondition::Absent => ("absent", 0),
        Precondition::Index(index) => ("index", index),
        Precondition::None => ("any", 0),
    }
}

/// A `keep_alive` key's expiry is its own `PEXPIRE`, renewed while the key still holds the
/// write that registered it.
#[async_trait]
impl RenewKey for Inner {
    async fn renew_key(this: &Arc<Self>, key: &str, index: u64, ttl: Duration) -> Result<bool> {
        let renewed: i64 = scripts::RENEW_KEY
            .key(this.data_key(key))
            .key(this.rev_key())
            .arg(index)
            .arg(ttl_millis(ttl))
            .arg(key)
            .invoke_async(&mut this.write_conn())
            .await
            .map_err(from_redis)?;
        Ok(renewed == 1)
    }
}

/// Escapes Redis glob metacharacters (`*`, `?`, `[`, `]`, `\`) so a key matches only itself.
/// Source: Redis docs, KEYS/PSUBSCRIBE glob-style patterns.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs until the store closes: asks the Sentinels for the primary every
/// [`SENTINEL_CHECK_PERIOD`](crate::primary::SENTINEL_CHECK_PERIOD), and sooner after a call failed the way a failover makes calls
/// fail; when they name another server, connects to it and moves the store there (its watches
/// and lock waiters subscribe again on the new primary).
pub(crate) async fn follow_primary(
    inner: std::sync::Weak<Inner>,
    mut sentinel: redis::sentinel::SentinelClient,
) {
    let Some((primary, cancel, config)) = inner.upgrade().map(|i| {
        (
            i.primary.clone(),
            i.tasks.cancel_token().clone(),
            i.config.clone(),
        )
    }) else {
        return;
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = primary.suspected() => {}
            () = tokio::time::sleep(crate::primary::SENTINEL_CHECK_PERIOD) => {}
        }
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = crate::primary::switch(&primary, &mut sentinel, &config) => next,
        };
        match next {
            Ok(false) => {}
            Ok(true) => {
                let Some(inner) = inner.upgrade() else { return };
                inner.pubsub.shut().await;
            }
            Err(err) => {
                tracing::debug!(backend = BACKEND, %err, "asking the Sentinels for the primary failed")
            }
        }
        tokio::time::sleep(crate::primary::SENTINEL_MIN_GAP).await;
    }
}

impl crate::pubsub::Owner for Inner {
    fn pubsub(&self) -> &crate::pubsub::PubSub {
        &self.pubsub
    }
    fn tasks(&self) -> &kvstore_core::backend::Tasks {
        &self.tasks
    }
    fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }
    fn client(&self) -> redis::Client {
        self.primary.node().client.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kvstore_core::KvPair;

    use super::{escape_glob, roll_forward};

    fn pair(key: &str, index: u64) -> KvPair {
        KvPair::new(key, format!("v{index}").into_bytes(), index)
    }

    #[test]
    fn rolling_pages_forward_replaces_removes_and_inserts_in_key_order() {
        let mut pairs = vec![
            pair("d/a", 1),
            pair("d/b", 2),
            pair("d/c", 3),
            pair("d/e", 4),
        ];
        let changes = BTreeMap::from([
            ("d/0".to_owned(), Some(pair("d/0", 9))),
            ("d/a".to_owned(), None),
            ("d/c".to_owned(), Some(pair("d/c", 7))),
            ("d/d".to_owned(), Some(pair("d/d", 8))),
            ("d/e".to_owned(), None),
            ("d/x".to_owned(), None),
        ]);
        roll_forward(&mut pairs, changes);
        let got: Vec<(&str, u64)> = pairs
            .iter()
            .map(|p| (p.key.as_str(), p.last_index))
            .collect();
        assert_eq!(got, [("d/0", 9), ("d/b", 2), ("d/c", 7), ("d/d", 8)]);
        assert_eq!(&pairs[2].value[..], b"v7");
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("a*b?c[d]e\\f/"), "a\\*b\\?c\\[d\\]e\\\\f/");
        assert_eq!(escape_glob("plain/key"), "plain/key");
    }
}
