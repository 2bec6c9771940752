//! Partition cases: one client cut off from a running server by the fault proxy
//! ([`FaultProxy`]), while the server keeps expiring that client's leases and another client
//! reaches the server directly — the race fencing tokens exist for, which pausing the server
//! cannot produce (a paused server expires nothing). Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_core::{Error, KvPair, Store, Txn, WatchStream, WriteOptions};

use crate::proxy::FaultProxy;
use crate::{
    EVENT_TIMEOUT, Opener, cleanup, cluster_leader, eventually, lock_ttl, ok, scratch_dir,
    server_control, take_lock, take_lock_with,
};

/// What a partition case cuts: one client's link to its server, through the fault proxy, or a
/// cluster member (`ci/servers.sh` name, such as `zk-c2`) from its peers, through
/// `ci/restart.sh MEMBER isolate` (a packet filter; its clients still reach it).
#[derive(Debug, Clone, Copy)]
pub enum Cut<'a> {
    /// The fault proxy between one client and its server.
    Proxy(&'a FaultProxy),
    /// A cluster member cut off from its peers.
    Member(&'a str),
}

impl Cut<'_> {
    /// Cuts; returns once the cut is in place.
    pub async fn cut(&self) {
        match self {
            Cut::Proxy(proxy) => proxy.cut().await,
            Cut::Member(name) => server_control(name, "isolate").await,
        }
    }

    /// Heals; for a member, returns once it serves again (at most 60 s).
    pub async fn heal(&self) {
        match self {
            Cut::Proxy(proxy) => proxy.heal().await,
            Cut::Member(name) => {
                server_control(name, "rejoin").await;
                server_control(name, "ready").await;
            }
        }
    }
}

/// A lock holder cut off from the server (`partition`): its `LockLost` resolves before a second client's
/// `lock()` returns (the loss rule, with the server expiring the lease meanwhile), the
/// successor's token is greater, and after the cut heals a `when_held` write with the old token
/// is refused with `LockNotHeld` and writes nothing. Both hold with `delete_on_unlock`, the
/// successor with a value: the lost holder's release (its own, on the loss, and its `unlock()`
/// after the heal) leaves the successor's value in place.
pub async fn cut_off_holder_loses_first(
    direct: &Opener,
    through: &Opener,
    partition: Cut<'_>,
    ttl: Duration,
    takeover: Duration,
) {
    let (holder_store, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("cut_holder");
    let (key, out) = (format!("{dir}/lock"), format!("{dir}/out"));
    let (mut holder, lost, old_token) = take_lock_with(
        &*holder_store,
        &key,
        &lock_ttl(ttl).with_delete_on_unlock(true),
    )
    .await;
    let watch_loss = tokio::spawn({
        let lost = lost.clone();
        async move {
            lost.await;
            Instant::now()
        }
    });

    partition.cut().await;
    let cut = Instant::now();
    let successor_opts = lock_ttl(ttl)
        .with_value("successor")
        .with_delete_on_unlock(true);
    // A transient error (a cluster electing a new leader) is retried until the deadline.
    let deadline = cut + takeover;
    let (mut successor, won) = loop {
        let mut successor = ok(
            other.new_lock(&key, Some(&successor_opts)).await,
            "new_lock",
        );
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, successor.lock()).await {
            Ok(Ok(won)) => break (successor, won),
            Ok(Err(err)) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(err)) => panic!("successor lock failed: {err}"),
            Err(_) => panic!("a successor must take the lock within {takeover:?} of the cut"),
        }
    };
    let won_at = Instant::now();
    assert!(
        lost.is_lost(),
        "the cut-off holder still believed it held the lock when the successor got it"
    );
    let lost_at = tokio::time::timeout(EVENT_TIMEOUT, watch_loss)
        .await
        .expect("LockLost resolved")
        .expect("the loss watcher");
    assert!(lost_at <= won_at);
    assert_eq!(holder.fencing_token(), None, "no token once lost");
    let new_token = successor.fencing_token().expect("held");
    assert!(new_token > old_token, "the successor's token is greater");
    eprintln!(
        "{}: holder told {:?} after the cut, successor won after {:?}",
        other.backend(),
        lost_at - cut,
        won_at - cut
    );

    partition.heal().await;
    // The cut-off store reconnects; its stale guarded write is refused by the server.
    let stale = Txn::new().when_held(&key, old_token).put(&out, "stale");
    let refused = once_answered(EVENT_TIMEOUT * 2, || holder_store.txn(&stale)).await;
    assert!(
        matches!(refused, Err(Error::LockNotHeld { .. })),
        "a when_held write with the old token after the heal: expected LockNotHeld, got {:?}",
        refused.map(|_| ())
    );
    assert!(
        !ok(other.exists(&out, None).await, "exists"),
        "the stale write wrote nothing"
    );
    ok(
        other
            .txn(&Txn::new().when_held(&key, new_token).put(&out, "fresh"))
            .await,
        "the successor's guarded write",
    );
    ok(
        holder.unlock().await,
        "the lost holder's unlock after the heal",
    );
    let value = ok(other.get(&key, None).await, "the successor's value");
    assert_eq!(
        value.value, "successor",
        "the lost holder's release must leave the successor's value"
    );
    drop(won);
    ok(successor.unlock().await, "unlock");
    assert!(
        !ok(other.exists(&key, None).await, "exists"),
        "the successor's unlock deletes its value"
    );
    drop(holder);
    cleanup(&*other, &dir).await;
    let _ = holder_store.close().await;
    let _ = other.close().await;
}

/// A lock holder whose only server is the leader of `cluster` (`zk-cluster`, `etcd-cluster`),
/// when that leader is cut off from its peers while the holder still reaches it: the case of
/// [`cut_off_holder_loses_first`] with a partition between servers rather than between a client
/// and its server. The leader may go on answering its clients until it notices the loss of its
/// quorum, while the other members elect a new leader that expires the holder's lease; the
/// holder must still be told first. `url` is the cluster's multi-host URL
/// (`scheme://h1,h2,h3…`, hosts in member order: host *i* is member *i*'s client port, as
/// `ci/servers.sh` writes it); `opener` turns a URL into an [`Opener`]. Runs the nemesis
/// through `ci/restart.sh`, so it needs `KVSTORE_RESTART_SCRIPT` and root.
pub async fn isolated_leader_holder_loses_first(
    cluster: &str,
    url: &str,
    opener: impl Fn(&str) -> Opener,
    ttl: Duration,
    takeover: Duration,
) {
    let leader = cluster_leader(cluster).await;
    let index: usize = leader
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|_| panic!("member {leader} has no number"));
    let (on_leader, on_others) = split_hosts(url, index - 1);
    // A failed assertion must not leave the member cut off for the tests that follow.
    let _rejoin = RejoinOnPanic(&leader);
    cut_off_holder_loses_first(
        &opener(&on_others),
        &opener(&on_leader),
        Cut::Member(&leader),
        ttl,
        takeover,
    )
    .await;
}

/// Generates the partition case of a quorum cluster,
/// [`isolated_leader_holder_loses_first`], as a `#[tokio::test]` with a 3 s lock TTL:
/// `isolated_leader_tests!(cluster: "zk-cluster", url: "KVSTORE_ZK_CLUSTER_URL", opener:
/// common::opener_for_url)`. Put it in a test file of its own: the cut would fail other tests
/// that share the cluster meanwhile. It runs only with `KVSTORE_RESTART_SCRIPT` (and fails
/// without it when `KVSTORE_REQUIRE_BACKENDS` is on).
#[macro_export]
macro_rules! isolated_leader_tests {
    (cluster: $cluster:expr, url: $var:expr, opener: $opener:expr $(,)?) => {
        #[tokio::test]
        async fn a_holder_on_an_isolated_leader_loses_the_lock_before_a_successor_takes_it() {
            let Some(url) = $crate::controlled_backend_url($var) else {
                return;
            };
            let ttl = ::std::time::Duration::from_secs(3);
            // An election (a few seconds at most), then the TTL, on a loaded machine.
            let takeover = ttl + ::std::time::Duration::from_secs(15);
            $crate::isolated_leader_holder_loses_first($cluster, &url, $opener, ttl, takeover)
                .await;
        }
    };
}

/// Rejoins a member cut off from its peers when the case panics before its own heal.
struct RejoinOnPanic<'a>(&'a str);

impl Drop for RejoinOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Ok(script) = std::env::var(crate::RESTART_SCRIPT_VAR) {
            let _ = std::process::Command::new("bash")
                .args([script.as_str(), self.0, "rejoin"])
                .status();
        }
    }
}

/// `url` with only its `i`-th host, and with every host but that one.
fn split_hosts(url: &str, i: usize) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(end);
    let hosts: Vec<&str> = hosts.split(',').collect();
    assert!(i < hosts.len(), "member {} is not in {url}", i + 1);
    let others: Vec<&str> = (0..hosts.len())
        .filter(|&j| j != i)
        .map(|j| hosts[j])
        .collect();
    (
        format!("{scheme}://{}{tail}", hosts[i]),
        format!("{scheme}://{}{tail}", others.join(",")),
    )
}

/// Opens the owner (through the proxy) and another client (direct), and registers
/// `<scratch dir>/svc` = `registered` through the owner with `ttl` and `keep_alive`; returns
/// both stores, the scratch directory and the key.
async fn registered(
    direct: &Opener,
    through: &Opener,
    case: &str,
    ttl: Duration,
) -> (Arc<dyn Store>, Arc<dyn Store>, String, String) {
    let (owner, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir(case);
    let key = format!("{dir}/svc");
    let registration = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
    ok(
        owner.put(&key, b"registered", Some(&registration)).await,
        "register",
    );
    (owner, other, dir, key)
}

/// Whether `store` reads `key` = `registered` within `bound`.
async fn is_registered_within(store: &dyn Store, key: &str, bound: Duration) -> bool {
    eventually(bound, || async {
        matches!(store.get(key, None).await, Ok(pair) if &pair.value[..] == b"registered")
    })
    .await
}

/// A `keep_alive` registration whose owner is cut off for `cut` (longer than its lease or
/// session timeout) leaves the server within `ttl + slack` of the cut, and is back within
/// `2 × ttl + 2 s` (two renewal deadlines, and the client library's reconnect backoff) after
/// the cut heals; the same store then works again without reopening.
pub async fn cut_off_registration_comes_back(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    ttl: Duration,
    slack: Duration,
    cut: Duration,
) {
    let (owner, other, dir, key) = registered(direct, through, "cut_registration", ttl).await;
    let present = || async { matches!(other.exists(&key, None).await, Ok(true)) };

    proxy.cut().await;
    let cut_at = Instant::now();
    let bound = ttl + slack;
    let gone = eventually(bound + EVENT_TIMEOUT, || async { !present().await }).await;
    let gone_after = cut_at.elapsed();
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    proxy.heal().await;
    let healed = Instant::now();
    assert!(
        gone,
        "the cut-off owner's registration must leave the server"
    );
    assert!(
        gone_after <= bound,
        "the cut-off owner's registration left only {gone_after:?} after the cut (bound {bound:?})"
    );
    let back_bound = ttl * 2 + Duration::from_secs(2);
    assert!(
        is_registered_within(&*other, &key, back_bound).await,
        "the registration must be back within {back_bound:?} of the heal (cut {cut:?})"
    );
    eprintln!(
        "{}: registration gone {gone_after:?} after the cut, back {:?} after the heal",
        other.backend(),
        healed.elapsed()
    );
    // The same store works again.
    let check = format!("{dir}/after");
    let written = once_answered(EVENT_TIMEOUT, || owner.put(&check, b"ok", None)).await;
    ok(written, "put through the healed store");
    ok(owner.delete(&key).await, "end the registration");
    cleanup(&*other, &dir).await;
    let _ = owner.close().await;
    let _ = other.close().await;
}

/// A `keep_alive` registration whose owner sits behind latency beyond its `request_timeout`
/// (one and a half times it each way, for two TTLs: every renewal's answer comes too late,
/// while the requests themselves still reach the server, late) is on the server with its value
/// within `2 × ttl + 2 s` once the latency goes, and the same store works again. Then the
/// owner deletes it, and it stays deleted for `ttl + slack` plus two latencies: no renewal or
/// rewrite that the latency held back brings it back.
pub async fn delayed_registration_comes_back(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    request_timeout: Duration,
    ttl: Duration,
    slack: Duration,
) {
    let (owner, other, dir, key) = registered(direct, through, "delayed_registration", ttl).await;
    let latency = request_timeout * 3 / 2;
    proxy.delay(latency).await;
    // Renewals and any rewrite go out meanwhile, and time out on the client.
    let delayed_at = Instant::now();
    let mut seen_gone = false;
    while delayed_at.elapsed() < ttl * 2 + latency {
        seen_gone |= matches!(other.exists(&key, None).await, Ok(false));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.heal().await;
    let healed = Instant::now();
    let back_bound = ttl * 2 + Duration::from_secs(2);
    assert!(
        is_registered_within(&*other, &key, back_bound).await,
        "the registration must be there within {back_bound:?} of the latency going"
    );
    eprintln!(
        "{}: a registration behind {latency:?} of latency (request timeout \
         {request_timeout:?}) {} under it, and is there {:?} after it",
        other.backend(),
        if seen_gone {
            "left the server"
        } else {
            "stayed"
        },
        healed.elapsed()
    );
    let check = format!("{dir}/after");
    let written = once_answered(EVENT_TIMEOUT, || owner.put(&check, b"ok", None)).await;
    ok(written, "put through the store after the latency");
    ok(
        once_answered(EVENT_TIMEOUT, || owner.delete(&key)).await,
        "end the registration",
    );
    // Nothing to wait for here but the absence of a write: watch the key for the longest a
    // held-back renewal or rewrite could take to land and take effect.
    let quiet = ttl + slack + latency * 2;
    let mut watch = ok(other.watch(&key, None).await, "watch the deleted key");
    let came_back = tokio::time::timeout(quiet, async {
        use futures::StreamExt;
        while let Some(item) = watch.next().await {
            if let Some(pair) = ok(item, "watch item of the deleted key") {
                return pair;
            }
        }
        panic!("the watch of the deleted key ended");
    })
    .await;
    if let Ok(pair) = came_back {
        panic!("the deleted registration came back: {pair:?}");
    }
    drop(watch);
    cleanup(&*other, &dir).await;
    let _ = owner.close().await;
    let _ = other.close().await;
}

/// The first answer of `call` that is not a transient error, retried every 100 ms while the
/// store reconnects after a heal.
///
/// # Panics
///
/// When no such answer comes within `deadline`.
async fn once_answered<T, F, Fut>(deadline: Duration, mut call: F) -> kvstore_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kvstore_core::Result<T>>,
{
    tokio::time::timeout(deadline, async {
        loop {
            match call().await {
                Err(err) if err.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answer => return answer,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the healed store must answer within {deadline:?}"))
}

/// The `host:port` a single-server URL names (`redis://127.0.0.1:6379/0?x` → `127.0.0.1:6379`),
/// which a [`FaultProxy`] forwards to.
///
/// # Panics
///
/// When `url` has no `scheme://host:port`.
pub fn upstream_of(url: &str) -> String {
    let rest = url.split_once("://").expect("a scheme://host:port URL").1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts)
        .to_owned()
}

/// Writes `v0` at `key` through `other`, watches it through `watcher`, and returns the stream
/// once it has shown `v0`, with `v0`'s `last_index`.
async fn watch_from_v0(watcher: &dyn Store, other: &dyn Store, key: &str) -> (WatchStream, u64) {
    use futures::StreamExt;

    ok(other.put(key, b"v0", None).await, "put v0");
    let mut stream = ok(watcher.watch(key, None).await, "watch");
    let first = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("the current state within EVENT_TIMEOUT")
        .expect("an item");
    let first = ok(first, "first item").expect("the key exists");
    assert_eq!(first.value, "v0", "the watch starts on v0");
    (stream, first.last_index)
}

/// Whether `stream` shows `latest` within `bound`, its items' `last_index` never going back
/// from `last_index` (the last one seen, updated). `strict`: an error item, an absent key or
/// the stream's end fails the test (after a fault has gone); otherwise they are passed over
/// (while it lasts).
async fn watch_reaches(
    stream: &mut WatchStream,
    latest: &KvPair,
    last_index: &mut u64,
    bound: Duration,
    strict: bool,
) -> bool {
    use futures::StreamExt;

    let reached = tokio::time::timeout(bound, async {
        while let Some(item) = stream.next().await {
            let pair = match item {
                Ok(Some(pair)) => pair,
                other if strict => panic!("watch item {other:?} before {latest:?}"),
                _ => continue,
            };
            assert!(pair.last_index >= *last_index, "a watch never goes back");
            *last_index = pair.last_index;
            if pair == *latest {
                return true;
            }
        }
        assert!(!strict, "the watch ended before the latest value");
        false
    });
    reached.await.unwrap_or(false)
}

/// A watcher cut off while the key changes twice ends on the latest value once the cut heals:
/// items stay in order (`last_index` never goes back), and the last one is the second write.
pub async fn cut_off_watch_ends_on_latest(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    cut: Duration,
) {
    let (watcher, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("cut_watch");
    let key = format!("{dir}/k");
    let (mut stream, mut last_index) = watch_from_v0(&*watcher, &*other, &key).await;

    proxy.cut().await;
    let cut_at = Instant::now();
    ok(other.put(&key, b"v1", None).await, "put v1");
    let latest = ok(other.put(&key, b"v2", None).await, "put v2");
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    proxy.heal().await;
    assert!(
        watch_reaches(
            &mut stream,
            &latest,
            &mut last_index,
            EVENT_TIMEOUT * 2,
            true
        )
        .await,
        "the watch must reach the latest value after the heal"
    );
    drop(stream);
    cleanup(&*other, &dir).await;
    let _ = watcher.close().await;
    let _ = other.close().await;
}

/// Latency of a tenth of the TTL on every packet causes no false loss: a lock held through it
/// for two TTLs stays held, and no one else gets it. (On Redis it once failed whenever the
/// server's script cache was empty: the first renewal's `NOSCRIPT` fallback took three round
/// trips; the store now loads its scripts when it connects.)
pub async fn latency_is_no_false_loss(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    ttl: Duration,
) {
    let (holder_store, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("latency");
    let key = format!("{dir}/lock");
    let (mut holder, lost, token) = take_lock(&*holder_store, &key, ttl).await;
    proxy.delay(ttl / 10).await;
    let mut contender = ok(other.new_lock(&key, Some(&lock_ttl(ttl))).await, "new_lock");
    let taken = tokio::time::timeout(ttl * 2, contender.lock()).await;
    assert!(
        taken.is_err(),
        "latency of a tenth of the TTL must not free the lock (the holder's LockLost: {})",
        lost.is_lost()
    );
    assert!(!lost.is_lost(), "latency of a tenth of the TTL is no loss");
    assert_eq!(holder.fencing_token(), Some(token));
    drop(contender);
    proxy.heal().await;
    ok(holder.unlock().await, "unlock");
    cleanup(&*other, &dir).await;
    let _ = holder_store.close().await;
    let _ = other.close().await;
}

/// Latency beyond the store's `request_timeout` on every packet makes a call fail with
/// `Timeout` (or another transient error) within `request_timeout` plus a second.
pub async fn latency_beyond_request_timeout_fails_in_time(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    request_timeout: Duration,
) {
    let (holder_store, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("latency_timeout");
    let key = format!("{dir}/k");
    ok(other.put(&key, b"v", None).await, "put");
    proxy.delay(request_timeout * 3).await;
    let started = Instant::now();
    let result = tokio::time::timeout(request_timeout * 3, holder_store.get(&key, None)).await;
    let took = started.elapsed();
    let bound = request_timeout + Duration::from_secs(1);
    match result {
        Ok(Err(err)) if err.is_transient() => {
            assert!(
                took <= bound,
                "the call failed only after {took:?} (bound {bound:?})"
            );
            eprintln!(
                "{}: a call behind {:?} of latency failed after {took:?}: {err}",
                other.backend(),
                request_timeout * 3
            );
        }
        Ok(other) => panic!(
            "a call behind latency beyond request_timeout must fail with a transient error, got {:?}",
            other.map(|_| ())
        ),
        Err(_) => panic!("a call behind latency beyond request_timeout must not wait {took:?}"),
    }
    proxy.heal().await;
    cleanup(&*other, &dir).await;
    let _ = holder_store.close().await;
    let _ = other.close().await;
}

/// A watcher behind latency beyond its `request_timeout` (one and a half times it in each
/// direction: a read's round trip times out, while the connection itself stays up) while
/// another client writes: once the latency goes, the watch shows that write — with no further
/// change to wake it. A watch whose read after a notification failed must read again, not wait
/// for the next notification: the key may never change again.
pub async fn delayed_watch_ends_on_latest(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    request_timeout: Duration,
) {
    let (watcher, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("delayed_watch");
    let key = format!("{dir}/k");
    let (mut stream, mut last_index) = watch_from_v0(&*watcher, &*other, &key).await;
    let latency = request_timeout * 3 / 2;
    proxy.delay(latency).await;
    let latest = ok(other.put(&key, b"v1", None).await, "put v1");
    // The watch is polled meanwhile, so whatever it does with the notification happens under
    // the latency: the notification arrives, and a read's round trip (two latencies) outlasts
    // the request timeout. The fault lasts long enough for both.
    let during = latency * 2 + request_timeout * 2;
    let seen_during = watch_reaches(&mut stream, &latest, &mut last_index, during, false).await;
    proxy.heal().await;
    assert!(
        seen_during
            || watch_reaches(&mut stream, &latest, &mut last_index, EVENT_TIMEOUT, true).await,
        "the watch must show the write made under latency once it goes, without another \
         write to wake it"
    );
    eprintln!(
        "{}: a watch behind {latency:?} of latency (request timeout {request_timeout:?}) \
         showed the write {}",
        other.backend(),
        if seen_during {
            "under the latency"
        } else {
            "after it"
        }
    );
    drop(stream);
    cleanup(&*other, &dir).await;
    let _ = watcher.close().await;
    let _ = other.close().await;
}

/// [`delayed_watch_ends_on_latest`] for a directory: a `watch_tree` and a `watch_events`
/// stream, both polled while another client writes a burst under the directory behind latency
/// beyond the watcher's `request_timeout`. Once the latency goes — with no further write —
/// the tree watch shows the store's listing and the fold of the events reaches `list_at`.
pub async fn delayed_tree_streams_end_on_latest(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    request_timeout: Duration,
) {
    use futures::StreamExt;

    let (watcher, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("delayed_tree");
    crate::cases::write_burst(&*other, &dir, "a").await;
    let mut tree = ok(watcher.watch_tree(&dir, None).await, "watch_tree");
    let mut shown = tokio::time::timeout(EVENT_TIMEOUT, tree.next())
        .await
        .expect("the tree's current state")
        .map(|item| ok(item, "the tree's first item"));
    let mut events = if crate::cases::can_watch_events(&*watcher, &dir).await {
        let mut stream = ok(watcher.watch_events(&dir, None).await, "watch_events");
        let mut folded = crate::cases::Folded::default();
        crate::cases::fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
        Some((stream, folded))
    } else {
        None
    };
    let latency = request_timeout * 3 / 2;
    proxy.delay(latency).await;
    crate::cases::write_burst(&*other, &dir, "b").await;
    // Both streams are polled under the latency, so what they do with the notifications of
    // the burst happens behind it (a read's round trip outlasts the request timeout).
    let during = latency * 2 + request_timeout * 2;
    let drive_tree = tokio::time::timeout(during, async {
        while let Some(item) = tree.next().await {
            if let Ok(list) = item {
                shown = Some(list);
            }
        }
    });
    let drive_events = async {
        if let Some((stream, folded)) = events.as_mut() {
            let _ = tokio::time::timeout(during, async {
                while let Some(Ok(item)) = stream.next().await {
                    folded.apply(&item, &dir);
                }
            })
            .await;
        }
    };
    let _ = tokio::join!(drive_tree, drive_events);
    proxy.heal().await;
    let (listed, _) = ok(other.list_at(&dir, None).await, "list_at");
    let reached = tokio::time::timeout(EVENT_TIMEOUT, async {
        while shown.as_ref() != Some(&listed) {
            match tree.next().await {
                Some(item) => shown = Some(ok(item, "tree item after the latency")),
                None => panic!("the tree watch ended before the store's listing"),
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "the tree watch must show the listing once the latency goes, with no write to wake it\n\
         shown: {shown:?}\nlisted: {listed:?}"
    );
    if let Some((stream, folded)) = events.as_mut() {
        crate::cases::catch_up_within(
            &*other,
            stream,
            folded,
            &dir,
            "the events after the latency",
            EVENT_TIMEOUT,
        )
        .await;
    }
    eprintln!(
        "{}: a tree watch{} behind {latency:?} of latency caught up",
        other.backend(),
        if events.is_some() {
            " and an event stream"
        } else {
            ""
        }
    );
    drop((tree, events));
    cleanup(&*other, &dir).await;
    let _ = watcher.close().await;
    let _ = other.close().await;
}

/// A `lock()` waiting behind latency beyond its store's `request_timeout` (its requests time
/// out, its lease may run out) while the holder unlocks: once the latency goes, the waiter
/// takes the lock, or its `lock()` has failed with a transient error (`NotReachable`,
/// `Timeout`: the documented outcome of connection failures, which retrying fixes) and one
/// more `lock()` takes it. Never a non-transient error such as `CannotLock`, which tells the
/// caller that retrying is pointless.
pub async fn delayed_waiter_takes_the_lock(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    request_timeout: Duration,
    ttl: Duration,
) {
    let (waiter_store, holder_store) = (through.open().await, direct.open().await);
    let dir = scratch_dir("delayed_waiter");
    let key = format!("{dir}/lock");
    let (mut holder, _lost, token) = take_lock(&*holder_store, &key, ttl).await;
    let mut waiter = ok(
        waiter_store.new_lock(&key, Some(&lock_ttl(ttl))).await,
        "new_lock",
    );
    let mut waiting = tokio::spawn(async move {
        let taken = waiter.lock().await.map(|_| waiter.fencing_token());
        (taken, waiter)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "the waiter waits while the lock is held"
    );
    let latency = request_timeout * 3 / 2;
    proxy.delay(latency).await;
    tokio::time::sleep(latency * 2 + request_timeout * 2).await;
    ok(holder.unlock().await, "unlock");
    proxy.heal().await;
    let healed = Instant::now();
    let (taken, waiter) = tokio::time::timeout(ttl * 2 + EVENT_TIMEOUT, waiting)
        .await
        .expect("the waiter takes the lock once the latency goes")
        .expect("the waiter's task");
    let (taken, mut waiter, how) = match taken {
        Ok(token) => (token, waiter, "while waiting"),
        Err(err) if err.is_transient() => {
            let mut waiter = waiter;
            let again = tokio::time::timeout(ttl * 2 + EVENT_TIMEOUT, waiter.lock())
                .await
                .expect("lock() again takes the free lock");
            ok(again, "lock() again after a transient failure");
            eprintln!(
                "{}: the waiter's lock() failed with a transient error: {}",
                holder_store.backend(),
                crate::error_chain(&err)
            );
            (waiter.fencing_token(), waiter, "on its second lock()")
        }
        Err(err) => panic!(
            "lock() behind latency must take the lock or fail with a transient error, not {}",
            crate::error_chain(&err)
        ),
    };
    assert!(
        taken.is_some_and(|t| t > token),
        "the waiter holds with a greater token"
    );
    eprintln!(
        "{}: a waiter behind {latency:?} of latency took the lock {how}, {:?} after the heal",
        holder_store.backend(),
        healed.elapsed()
    );
    ok(waiter.unlock().await, "unlock");
    cleanup(&*holder_store, &dir).await;
    let _ = waiter_store.close().await;
    let _ = holder_store.close().await;
}

/// An event stream cut off (`through` the fault proxy) while another client writes, deletes
/// and updates keys for `cut`: once the cut heals, the fold of the items received reaches
/// `list(dir)` — no event lost or invented across the partition.
pub async fn cut_off_events_catch_up(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    cut: Duration,
) {
    let (watcher, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("cut_events");
    if !crate::cases::can_watch_events(&*watcher, &dir).await {
        return;
    }
    crate::cases::write_burst(&*other, &dir, "a").await;
    let mut stream = ok(watcher.watch_events(&dir, None).await, "watch_events");
    let mut folded = crate::cases::Folded::default();
    crate::cases::fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    proxy.cut().await;
    let cut_at = Instant::now();
    crate::cases::write_burst(&*other, &dir, "b").await;
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    proxy.heal().await;
    crate::cases::write_burst(&*other, &dir, "c").await;
    crate::cases::catch_up_within(
        &*other,
        &mut stream,
        &mut folded,
        &dir,
        "after the heal",
        EVENT_TIMEOUT * 3,
    )
    .await;
    drop(stream);
    cleanup(&*other, &dir).await;
    let _ = watcher.close().await;
    let _ = other.close().await;
}

/// Partition case for the recipes built on locks: a client holding a semaphore's only permit
/// and a read of a read-write lock is cut off (the fault proxy; the server keeps expiring its
/// leases). Another client then takes the permit and the write within `takeover` — and by
/// then the cut-off client was told it lost both (`Permit::lost`), and its permit's token is
/// gone.
pub async fn cut_off_permit_holder_loses_first(
    direct: &Opener,
    through: &Opener,
    proxy: &FaultProxy,
    ttl: Duration,
    takeover: Duration,
) {
    use kvstore_core::{LockOptions, Permit, RwLock, Semaphore};

    let (cut_off, other) = (through.open().await, direct.open().await);
    let dir = scratch_dir("cut_permit");
    let opts = LockOptions::default().with_ttl(ttl);
    let (pool, rw) = (format!("{dir}/pool"), format!("{dir}/rw"));
    let permit = ok(
        ok(
            Semaphore::new(cut_off.clone(), &pool, 1, Some(&opts)),
            "new",
        )
        .acquire()
        .await,
        "acquire",
    );
    let read = ok(
        ok(RwLock::new(cut_off.clone(), &rw, Some(&opts)), "new")
            .read()
            .await,
        "read",
    );
    proxy.cut().await;
    let cut = Instant::now();
    let deadline = cut + takeover;
    // Retries a transient refusal until the deadline; panics past it.
    async fn within<F: Future<Output = kvstore_core::Result<Permit>>>(
        deadline: Instant,
        what: &str,
        mut take: impl FnMut() -> F,
    ) -> Permit {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, take()).await {
                Ok(Ok(permit)) => return permit,
                Ok(Err(err)) if err.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(err)) => panic!("{what}: {err}"),
                Err(_) => panic!("{what}: not within the takeover bound"),
            }
        }
    }
    let semaphore = ok(Semaphore::new(other.clone(), &pool, 1, Some(&opts)), "new");
    let successor = within(deadline, "the permit", || semaphore.acquire()).await;
    assert!(
        permit.lost().is_lost(),
        "the cut-off holder still believed it held the permit when another got it"
    );
    assert_eq!(permit.fencing_token(), None, "no token once lost");
    let writer = ok(RwLock::new(other.clone(), &rw, Some(&opts)), "new");
    let write = within(deadline, "the write", || writer.write()).await;
    assert!(
        read.lost().is_lost(),
        "the cut-off reader still believed it read when a writer got in"
    );
    eprintln!(
        "{}: permit and write taken {:?} after the cut",
        other.backend(),
        cut.elapsed()
    );
    proxy.heal().await;
    ok(successor.release().await, "release");
    ok(write.release().await, "release");
    drop((permit, read));
    cleanup(&*other, &dir).await;
    let _ = cut_off.close().await;
    let _ = other.close().await;
}

#[cfg(test)]
mod tests {
    use super::split_hosts;

    #[test]
    fn split_hosts_keeps_the_path_and_query() {
        assert_eq!(
            split_hosts("zk://a:1,b:2,c:3/root?session_timeout=2s", 1),
            (
                "zk://b:2/root?session_timeout=2s".to_owned(),
                "zk://a:1,c:3/root?session_timeout=2s".to_owned()
            )
        );
        assert_eq!(
            split_hosts("etcd://a:1,b:2,c:3", 0),
            ("etcd://a:1".to_owned(), "etcd://b:2,c:3".to_owned())
        );
    }
}
