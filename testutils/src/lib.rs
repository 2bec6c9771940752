//! The kvstore conformance suite: the executable form of the kvstore contract.
//!
//! Every backend — built-in or third-party — runs the same cases. Each case is a public async
//! function that panics (with a message saying which rule broke) when the store under test
//! misbehaves, so it can be called from any test harness:
//!
//! - cases over one store take `&dyn Store`;
//! - cases that need independent clients, or that close a store, take an [`Opener`], which
//!   opens fresh handles on the same backend.
//!
//! Each case works under its own random directory (`kvstore-conformance/<case>-<random>`) and
//! deletes only that, so the suite can run against a shared server. Every wait is bounded by
//! [`EVENT_TIMEOUT`] or a TTL-derived deadline; nothing sleeps and hopes.
//!
//! A case whose capability the store lacks asserts that the call fails with
//! `CallNotSupported` instead of skipping.
//!
//! # Examples
//!
//! One `#[tokio::test]` per case, for a backend's integration tests:
//!
//! ```ignore
//! kvstore_testutils::conformance_tests!(kvstore_testutils::Opener::new(|| async {
//!     Ok(std::sync::Arc::new(my_backend::MyStore::connect("...").await?) as _)
//! }));
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use kvstore_core::backend::Open;
use kvstore_core::{BackendStore, Error, KvPair, LockOptions, Result, Store, WriteOptions};

mod cases;
mod election_faults;
mod faults;
mod foreign;
pub mod linearizability;
mod partitions;
pub mod proxy;
pub mod secure;

pub use cases::*;
pub use election_faults::{
    LEADER_VAR, killed_leader_is_replaced, paused_leader_is_replaced,
    paused_server_ends_leadership, restarted_server_elects_again,
};
pub use faults::{
    MEMBER_VAR, REGISTRANT_VAR, killed_member_leaves_the_group, paused_holder_is_replaced,
    paused_registrant_disappears, paused_server_loses_lock, restarted_server_keeps_events,
    restarted_server_keeps_registration, rewrite_registration,
};
pub use foreign::{
    cas_on_foreign_key, foreign_sample, reads_foreign_sample, watches_see_foreign_write,
};
pub use partitions::{
    Cut, cut_off_events_catch_up, cut_off_holder_loses_first, cut_off_permit_holder_loses_first,
    cut_off_registration_comes_back, cut_off_watch_ends_on_latest, delayed_registration_comes_back,
    delayed_tree_streams_end_on_latest, delayed_waiter_takes_the_lock,
    delayed_watch_ends_on_latest, isolated_leader_holder_loses_first,
    latency_beyond_request_timeout_fails_in_time, latency_is_no_false_loss, upstream_of,
};

/// Upper bound for any single expected event (a watch item, a lock hand-off).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variable that turns a missing server into a test failure (`1`, `true` or
/// `yes`; see [`backends_required`]).
pub const REQUIRE_BACKENDS_VAR: &str = "KVSTORE_REQUIRE_BACKENDS";

/// Whether [`REQUIRE_BACKENDS_VAR`] is set to `1`, `true` or `yes` (any case): then a test
/// whose server is missing fails instead of skipping.
pub fn backends_required() -> bool {
    std::env::var(REQUIRE_BACKENDS_VAR)
        .is_ok_and(|v| ["1", "true", "yes"].contains(&v.trim().to_ascii_lowercase().as_str()))
}

type OpenFn = Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Store>>> + Send + Sync>;

/// Opens independent handles on the backend under test, and says how its TTLs behave.
pub struct Opener {
    open: OpenFn,
    /// The TTL the suite uses for keys and locks.
    pub ttl: Duration,
    /// How long after its TTL a key or lock may still exist (the backend's documented slack).
    pub ttl_slack: Duration,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("ttl", &self.ttl)
            .field("ttl_slack", &self.ttl_slack)
            .finish()
    }
}

impl Opener {
    /// An opener from an async function returning a fresh store each call; TTL 2 s, slack 2 s.
    pub fn new<F, Fut>(open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Store>>> + Send + 'static,
    {
        Opener {
            open: Box::new(move || open().boxed()),
            ttl: Duration::from_secs(2),
            ttl_slack: Duration::from_secs(2),
        }
    }

    /// An opener of a new [`BackendStore<B>`] (a new client) on the server at `url` each call,
    /// through [`BackendStore::open_url`]; TTL 2 s, slack 2 s.
    pub fn backend<B: Open>(url: &str) -> Self {
        let url = url.to_owned();
        Opener::new(move || {
            let url = url.clone();
            async move { Ok(Arc::new(BackendStore::<B>::open_url(&url).await?) as Arc<dyn Store>) }
        })
    }

    /// Sets the TTL the suite uses.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the backend's TTL slack.
    pub fn with_ttl_slack(mut self, slack: Duration) -> Self {
        self.ttl_slack = slack;
        self
    }

    /// Opens a new handle, panicking if that fails.
    pub async fn open(&self) -> Arc<dyn Store> {
        match (self.open)().await {
            Ok(store) => store,
            Err(err) => panic!("opening the store under test failed: {}", error_chain(&err)),
        }
    }
}

/// The URL of a server to test against, from the environment variable `var`.
///
/// `None` (after saying so on stderr) when unset, so tests can skip on a developer machine
/// without that server. With `KVSTORE_REQUIRE_BACKENDS=1` a missing variable panics instead:
/// CI never skips silently.
pub fn backend_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if backends_required() => {
            panic!(
                "{var} is not set and {REQUIRE_BACKENDS_VAR} is on: the server for this test is missing"
            )
        }
        _ => {
            eprintln!("skipping: {var} is not set (run ci/test.sh to start the servers)");
            None
        }
    }
}

/// The URL of a server that a fault test stops, restarts or pauses through
/// [`server_control`]: like [`backend_url`], and `None` (after saying so) when
/// `KVSTORE_RESTART_SCRIPT` is unset, as when the servers come from `compose/` rather than
/// `ci/test.sh`. With `KVSTORE_REQUIRE_BACKENDS=1` either missing variable panics.
pub fn controlled_backend_url(var: &str) -> Option<String> {
    let url = backend_url(var)?;
    match std::env::var(RESTART_SCRIPT_VAR) {
        Ok(script) if !script.is_empty() => Some(url),
        _ if backends_required() => {
            panic!(
                "{RESTART_SCRIPT_VAR} is not set and {REQUIRE_BACKENDS_VAR} is on: run ci/test.sh"
            )
        }
        _ => {
            eprintln!(
                "skipping: {RESTART_SCRIPT_VAR} is not set (this test controls the server; run ci/test.sh)"
            );
            None
        }
    }
}

/// The environment variable naming the script that stops and starts servers (ci/restart.sh).
const RESTART_SCRIPT_VAR: &str = "KVSTORE_RESTART_SCRIPT";

/// A fresh random directory for one case: `kvstore-conformance/<case>-<16 hex digits>`.
pub fn scratch_dir(case: &str) -> String {
    format!("kvstore-conformance/{case}-{:016x}", rand::random::<u64>())
}

/// Deletes a case's directory, ignoring a directory that is already gone.
pub async fn cleanup(store: &dyn Store, dir: &str) {
    match store.delete_tree(dir).await {
        Ok(()) | Err(Error::KeyNotFound { .. }) => {}
        Err(err) => panic!("cleaning up {dir} failed: {}", error_chain(&err)),
    }
}

/// Asserts that a backend's config parser refuses each of `urls` with `InvalidConfig`, and
/// that neither the error's message nor its `Debug` shows the URL's password (the text
/// between `user:` and `@`; give test URLs a password no message could contain by chance,
/// such as `SECRET`).
///
/// ```
/// # use kvstore_testutils::assert_invalid_urls;
/// # use kvstore_core::{Error, Result};
/// #[derive(Debug)]
/// struct Config;
/// impl std::str::FromStr for Config {
///     type Err = Error;
///     fn from_str(url: &str) -> Result<Self> {
///         Err(Error::invalid_config("demo", format!("cannot parse {}", url.len())))
///     }
/// }
/// assert_invalid_urls::<Config>(&["demo://u:SECRET@h", "demo://h?x=1"]);
/// ```
#[track_caller]
pub fn assert_invalid_urls<C>(urls: &[&str])
where
    C: std::str::FromStr<Err = Error> + std::fmt::Debug,
{
    for url in urls {
        let err = match C::from_str(url) {
            Err(err @ Error::InvalidConfig { .. }) => err,
            other => panic!("{url}: expected InvalidConfig, got {other:?}"),
        };
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password);
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains(password),
                "{url}: the error shows the password: {shown}"
            );
        }
    }
}

/// `err` and all its sources, joined with `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Unwraps a result, panicking with the full error chain and what was being done.
#[track_caller]
pub fn ok<T>(result: Result<T>, doing: &str) -> T {
    match result {
        Ok(v) => v,
        Err(err) => panic!("{doing} failed: {}", error_chain(&err)),
    }
}

/// The next item of a stream within [`EVENT_TIMEOUT`], panicking on timeout or end.
pub async fn next_within<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: stream ended"),
        Err(_) => panic!("{what}: no item within {EVENT_TIMEOUT:?}"),
    }
}

/// Polls `cond` every 20 ms until it is true or `deadline` passes; returns whether it became
/// true. For states the API offers no event for (a key vanishing from a store without watch).
pub async fn eventually<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `ci/restart.sh ARGS…` (through `KVSTORE_RESTART_SCRIPT`, exported by `ci/test.sh`)
/// and returns its standard output, trimmed; its standard error goes to ours. The script's
/// verbs: `NAME stop|start|start-nowait|ready|restart|pause|resume|kill|isolate|rejoin` for one
/// server or cluster member, `CLUSTER leader|members` for a cluster.
///
/// # Errors
///
/// A message naming the call when `KVSTORE_RESTART_SCRIPT` is unset, the script cannot be run,
/// or it exits non-zero.
pub async fn restart_script(args: &[&str]) -> std::result::Result<String, String> {
    let script = std::env::var(RESTART_SCRIPT_VAR)
        .map_err(|_| format!("{RESTART_SCRIPT_VAR} is not set: run through ci/test.sh"))?;
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("running restart.sh {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("restart.sh {args:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `ci/restart.sh NAME ACTION` ([`restart_script`]) to `stop`, `start`, `restart`,
/// `pause` (SIGSTOP), `resume` (SIGCONT), `kill` (SIGKILL), `isolate` or `rejoin` one server
/// or cluster member on its port; panics if it fails.
pub async fn server_control(name: &str, action: &str) {
    if let Err(err) = restart_script(&[name, action]).await {
        panic!("{err}");
    }
}

/// The member that leads `cluster` now (`etcd-cluster`, `zk-cluster`, `consul-cluster`, or the
/// Redis primary of `redis-sentinel`), from `ci/restart.sh CLUSTER leader`; panics if none does.
pub async fn cluster_leader(cluster: &str) -> String {
    match restart_script(&[cluster, "leader"]).await {
        Ok(leader) if !leader.is_empty() => leader,
        Ok(_) => panic!("{cluster} has no leader"),
        Err(err) => panic!("{cluster} has no leader: {err}"),
    }
}

/// Retries `op` every 100 ms while it fails with a transient error (`NotReachable`,
/// `Timeout`) — a server coming back after a restart — for up to `deadline`; panics on any
/// other error or when the deadline passes.
pub async fn retry_transient<T, F, Fut>(deadline: Duration, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if err.is_transient() && start.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{what} failed: {}", error_chain(&err)),
        }
    }
}

/// Takes the free lock `key` on `store` with a TTL of `ttl`, within [`EVENT_TIMEOUT`]:
/// the locker, its loss signal and its fencing token.
///
/// # Panics
///
/// When `new_lock` or `lock` fails, or the lock is not taken in time.
pub async fn take_lock(
    store: &dyn Store,
    key: &str,
    ttl: Duration,
) -> (Box<dyn kvstore_core::Locker>, kvstore_core::LockLost, u64) {
    take_lock_with(store, key, &lock_ttl(ttl)).await
}

/// [`take_lock`] with any lock options.
///
/// # Panics
///
/// When `new_lock` or `lock` fails, or the lock is not taken in time.
pub async fn take_lock_with(
    store: &dyn Store,
    key: &str,
    opts: &LockOptions,
) -> (Box<dyn kvstore_core::Locker>, kvstore_core::LockLost, u64) {
    let mut locker = ok(store.new_lock(key, Some(opts)).await, "new_lock");
    let lost = ok(
        tokio::time::timeout(EVENT_TIMEOUT, locker.lock())
            .await
            .expect("the free lock is taken within the event timeout"),
        "lock",
    );
    let token = locker.fencing_token().expect("a fencing token while held");
    (locker, lost, token)
}

/// Environment variable that puts a re-run test binary in lock-holder mode (see
/// [`killed_holder_frees_lock`]).
pub const HOLDER_VAR: &str = "KVSTORE_TEST_HOLD_LOCK";

/// Fault case: a holder process killed with SIGKILL (no `unlock`, no `close`) loses its lock
/// within `bound`, and a waiting contender takes it with a greater fencing token.
///
/// Call it from a `#[tokio::test]` named `test_name`: the test binary re-runs itself with
/// `--exact test_name` and [`HOLDER_VAR`] set, and in that child this function takes the lock
/// (TTL `ttl`), prints its fencing token and waits to be killed.
pub async fn killed_holder_frees_lock(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    bound: Duration,
) {
    if let Ok(key) = std::env::var(HOLDER_VAR) {
        let store = opener.open().await;
        let mut lock = ok(store.new_lock(&key, Some(&lock_ttl(ttl))).await, "new_lock");
        ok(lock.lock().await, "lock");
        println!("locked {}", lock.fencing_token().expect("token"));
        std::future::pending::<()>().await;
    }
    let dir = scratch_dir("killed_holder");
    let key = format!("{dir}/lock");
    let HolderProcess {
        mut child,
        token: holder_token,
        ..
    } = HolderProcess::spawn(test_name, &key).await;

    let store = opener.open().await;
    let mut contender = ok(store.new_lock(&key, Some(&lock_ttl(ttl))).await, "new_lock");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), contender.lock())
            .await
            .is_err(),
        "the lock is held by the child"
    );
    // SIGKILL: the holder can neither release nor close; the server has to expire it.
    child.start_kill().expect("kill");
    child.wait().await.expect("wait");
    let killed = Instant::now();
    ok(
        tokio::time::timeout(bound, contender.lock())
            .await
            .unwrap_or_else(|_| panic!("the lock must be free within {bound:?} of the kill")),
        "lock",
    );
    assert!(
        contender.fencing_token().expect("token") > holder_token,
        "the new holder's token must be greater"
    );
    eprintln!(
        "lock taken over {:?} after the holder was killed",
        killed.elapsed()
    );
    ok(contender.unlock().await, "unlock");
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// A lock holder running in a child process: this test binary re-run with `--exact test_name`
/// and [`HOLDER_VAR`] set to the lock's key, which prints `locked <token>` once it holds it.
pub(crate) struct HolderProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub(crate) token: u64,
}

impl HolderProcess {
    /// Starts the holder and waits (bounded) until it holds the lock on `key`.
    pub(crate) async fn spawn(test_name: &str, key: &str) -> HolderProcess {
        Self::spawn_as(test_name, HOLDER_VAR, key, "locked ").await
    }

    /// Starts this test binary as a child with `--exact test_name` and `var=key`, and waits
    /// (bounded) until it prints `<ready><number>`.
    pub(crate) async fn spawn_as(
        test_name: &str,
        var: &str,
        key: &str,
        ready: &str,
    ) -> HolderProcess {
        use tokio::io::AsyncBufReadExt;

        let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test_name, "--nocapture"])
            .env(var, key)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning the holder");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let token = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("holder output") {
                if let Some(token) = line.strip_prefix(ready) {
                    return token.parse().expect("token");
                }
            }
            panic!("the child exited before printing {ready:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("the child must print {ready:?} in time"));
        HolderProcess {
            child,
            lines,
            token,
        }
    }
}

/// The keys of a listing, in order.
pub fn keys(pairs: &[KvPair]) -> Vec<&str> {
    pairs.iter().map(|p| p.key.as_str()).collect()
}

/// Write options with a TTL.
pub fn ttl(ttl: Duration) -> WriteOptions {
    WriteOptions::default().with_ttl(ttl)
}

/// Lock options with a TTL.
pub fn lock_ttl(ttl: Duration) -> LockOptions {
    LockOptions::default().with_ttl(ttl)
}

/// The conformance cases, listed once: calls `$callback!` with `$($args)*` followed by
/// `store: <cases over one &dyn Store>; opener: <cases over an Opener>`. Used by
/// [`conformance_tests!`] and [`run_all`].
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:path; $($args:tt)*) => {
        $callback!($($args)*
            store: put_get_delete_exists, binary_values, list_directory, list_whole_keyspace,
                   delete_tree, atomic_put, atomic_delete, cas_race, cas_aba, last_index_semantics,
                   watch_key, watch_tree, watch_drop_stops, lock_basics, lock_delete_on_unlock,
                   lock_bookkeeping_hidden, invalid_keys, value_too_large, txn_conditions,
                   txn_watch_tree_atomic, concurrent_puts, many_watchers,
                   events_snapshot_and_changes, events_txn_one_item, events_resume,
                   events_slow_consumer;
            opener: lock_contention, lock_survives_key_deletion, lock_bookkeeping_unreachable,
                    lock_cancel_leaves_no_waiter,
                    lock_expires_after_holder_closed, lock_fencing_tokens_increase, ttl_expiry,
                    ttl_over_the_maximum,
                    keep_alive, close_ends_everything, watch_sees_other_clients,
                    election_successions, election_cancel_leaves_no_candidate,
                    election_follow_and_drop, txn_held, txn_race, events_expiry,
                    events_fold_random, cache_matches_the_store
        );
    };
}

/// Generates one `#[tokio::test]` per conformance case for the [`Opener`] expression given.
///
/// The expression is evaluated once per test; it may `return` early (for example when
/// [`backend_url`] says the server is absent) by being a block that yields
/// `Option<Opener>`: use [`conformance_tests!`]`(optional: expr)` for that form.
#[macro_export]
macro_rules! conformance_tests {
    (optional: $opener:expr) => {
        $crate::__with_cases!($crate::conformance_tests; @gen $opener;);
    };
    ($opener:expr) => {
        $crate::conformance_tests!(optional: ::std::option::Option::Some($opener));
    };
    (@gen $opener:expr; store: $($s:ident),* ; opener: $($o:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $s() {
                let opener: ::std::option::Option<$crate::Opener> = $opener;
                let Some(opener) = opener else { return };
                let store = opener.open().await;
                $crate::$s(&*store).await;
                let _ = store.close().await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $o() {
                let opener: ::std::option::Option<$crate::Opener> = $opener;
                let Some(opener) = opener else { return };
                $crate::$o(&opener).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per recipe case (`Counter`, `update`, `update_many`,
/// `Group`, `Semaphore`, `RwLock`) and for [`large_directory`] (100,000 keys) and
/// [`largest_values`], for the
/// [`Opener`] expression given, as [`conformance_tests!`] does. These run over the `Store`
/// contract alone, or are too heavy to repeat, so a store runs them once, on its main server,
/// rather than with every configuration its conformance suite covers.
#[macro_export]
macro_rules! recipe_tests {
    (optional: $opener:expr) => {
        $crate::conformance_tests!(@gen $opener; store: large_directory, largest_values; opener: counter_adds_exactly,
            counter_refuses_bad_values, update_loses_no_update, update_many_is_atomic,
            group_membership, semaphore_never_over_permits, rwlock_writer_not_starved);
    };
    ($opener:expr) => {
        $crate::recipe_tests!(optional: ::std::option::Option::Some($opener));
    };
}

/// Runs every case in sequence against one backend.
pub async fn run_all(opener: &Opener) {
    let store = opener.open().await;
    let s = &*store;
    macro_rules! run {
        (store: $($store_case:ident),* ; opener: $($opener_case:ident),*) => {
            $( $store_case(s).await; )*
            $( $opener_case(opener).await; )*
        };
    }
    __with_cases!(run;);
    let _ = store.close().await;
}
