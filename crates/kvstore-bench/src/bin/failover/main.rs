//! `kvstore-failover`: injects faults into a cluster under load — a leader kill, then nemeses
//! chosen by a printed seed — and checks the recorded history.
//!
//! N clients, each with its own store, run three workloads against one cluster while this
//! program injects each fault through `ci/restart.sh` (`KVSTORE_RESTART_SCRIPT`) and heals it:
//! the leader (the Redis primary) SIGKILLed and started again on the same port, or paused
//! (SIGSTOP) past the election timeout and resumed, or (ZooKeeper) cut off from its
//! peers through the fault proxy while its clients still reach it; a follower killed; two of
//! three members killed (quorum lost); the Consul client agent killed; one or two of three
//! Sentinels killed (see `nemesis.rs`). The workloads:
//!
//! - **CAS registers**: a read, then `atomic_put` of a fresh value chained on what was read
//!   (a CAS increment), on one of a few registers picked at random;
//! - **puts**: each of a fresh key, so that every acknowledged put must still be there at the
//!   end;
//! - **lock rounds**: `lock`, a few lock-guarded transactions (`when_held` with the fencing
//!   token) that each write the token to a protected key, `unlock`.
//!
//! Every operation is recorded with its invocation and completion times and its result:
//! acknowledged, refused (a known failure: the operation did not take effect), or unknown (a
//! transient error or a timeout hides whether it took effect). Then it checks:
//!
//! - no acknowledged put is lost: every key whose put was acknowledged holds its value;
//! - every CAS register's history is linearizable (the Wing–Gong/Lowe checker in
//!   `kvstore_testutils::linearizability`), with a final read of each register appended;
//! - locks: each fencing token is granted once and tokens increase in real-time order of the
//!   acquisitions; no guarded transaction of an older token succeeded when it began after a
//!   newer token's acquisition or guarded write had completed (two holders never overlap as
//!   the lock-guarded transactions see them);
//! - no call hangs: each finishes within its timeout plus a margin;
//! - recovery: after each fault, how long until every client completed an acknowledged
//!   operation again (reported, and bounded by `--recovery-bound`).
//!
//! Prints a verdict per check and exits non-zero when any fails. Run it through
//! `ci/failover.sh`, which starts the clusters.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use kvstore::{Error, KvPair, LockOptions, Store, Txn};
use kvstore_testutils::linearizability::{self, Event, Op, Versioned};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod nemesis;
use nemesis::Nemesis;

#[derive(Parser, Debug)]
#[command(about = "Inject faults into a cluster under load and check the recorded history")]
struct Args {
    /// The cluster (ci/servers.sh name): etcd-cluster, zk-cluster, consul-cluster or
    /// redis-sentinel.
    #[arg(long)]
    cluster: String,
    /// The URL to connect with (default: `KVSTORE_<CLUSTER>_URL`).
    #[arg(long)]
    url: Option<String>,
    /// Clients, each with its own store and running all three workloads.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// CAS registers shared by the clients.
    #[arg(long, default_value_t = 8)]
    registers: usize,
    /// The faults to inject, in order (default: a leader kill, then `--per-run` more of the
    /// cluster's nemeses chosen by `--seed`).
    #[arg(long, value_enum, value_delimiter = ',')]
    nemeses: Vec<Nemesis>,
    /// Picks the nemeses beyond the leader kill (default: the day number); the report prints
    /// it, and the same seed replays the same choice.
    #[arg(long)]
    seed: Option<u64>,
    /// How many nemeses beyond the leader kill a run picks.
    #[arg(long, default_value_t = 2)]
    per_run: usize,
    /// Load before the first fault, and after each one heals.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How long a killed or paused member stays down (a paused one at least until another
    /// member leads).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    down: Duration,
    /// A call that has not returned after this long counts as hung.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    hang_bound: Duration,
    /// Every client must complete an acknowledged operation within this long after each fault.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    recovery_bound: Duration,
    /// Lock TTL.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lock_ttl: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The calls that succeed only when the server answers.
const SERVER_CALLS: [&str; 4] = ["get", "put", "atomic_put", "txn"];

/// What a call returned, as far as the history is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// Acknowledged.
    Ok,
    /// A known failure: the operation did not take effect.
    Refused,
    /// A transient error or a timeout: it may or may not have taken effect.
    Unknown,
}

/// One CAS-register operation.
#[derive(Debug, Clone, Copy)]
struct RegisterOp {
    register: usize,
    event: Event,
}

/// One guarded write of a lock holder.
#[derive(Debug, Clone, Copy)]
struct GuardedWrite {
    token: u64,
    invoked: u64,
    returned: u64,
    ok: bool,
}

/// One hold as its holder believed it, on the checker's one monotonic clock: from `lock()`
/// returning to `LockLost` resolving or `unlock()` being called, whichever came first.
#[derive(Debug, Clone, Copy)]
struct Hold {
    token: u64,
    from: u64,
    to: u64,
}

/// One acquisition.
#[derive(Debug, Clone, Copy)]
struct Acquisition {
    token: u64,
    invoked: u64,
    returned: u64,
}

#[derive(Default)]
struct History {
    registers: Vec<RegisterOp>,
    /// `(key, value)` of every acknowledged put.
    acked_puts: Vec<(String, u64)>,
    guarded: Vec<GuardedWrite>,
    acquisitions: Vec<Acquisition>,
    holds: Vec<Hold>,
    /// Completion times (ns) of acknowledged server calls, per client.
    successes: Vec<Vec<u64>>,
    /// Acknowledged compare-and-swaps, per client.
    cas_ok: Vec<usize>,
    /// Completion times (ns) of acknowledged writes, any client.
    write_successes: Vec<u64>,
    /// Error kinds seen, by name.
    errors: BTreeMap<String, usize>,
    /// Calls that exceeded the hang bound.
    hung: Vec<String>,
    /// The first few errors that were neither transient nor a refused condition, in full.
    unexpected: Vec<String>,
    /// The longest each kind of call took, in seconds.
    slowest: BTreeMap<String, f64>,
    ops: usize,
}

struct Shared {
    start: Instant,
    hang_bound: Duration,
    history: Mutex<History>,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record<T>(&self, client: usize, what: &str, result: &Option<kvstore::Result<T>>) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.ops += 1;
        match result {
            None => h.hung.push(what.to_owned()),
            // Only calls that need the server: `new_lock`, and `unlock` of a lost lock, may
            // succeed without it.
            Some(Ok(_)) if SERVER_CALLS.contains(&what) => {
                let now = self.now();
                h.successes[client].push(now);
                if what != "get" {
                    h.write_successes.push(now);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                *h.errors.entry(error_kind(err)).or_default() += 1;
                // A refused condition, including a guarded write of a holder that lost its lock.
                let semantic = matches!(
                    err,
                    Error::KeyModified { .. }
                        | Error::KeyExists { .. }
                        | Error::KeyNotFound { .. }
                        | Error::LockNotHeld { .. }
                );
                if !err.is_transient() && !semantic && h.unexpected.len() < 5 {
                    h.unexpected
                        .push(format!("{what}: {}", kvstore_testutils::error_chain(err)));
                }
            }
        }
    }

    /// Runs `call` under the hang bound and records its result.
    async fn call<T>(
        &self,
        client: usize,
        what: &str,
        call: impl Future<Output = kvstore::Result<T>>,
    ) -> Option<kvstore::Result<T>> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.hang_bound, call).await.ok();
        let took = started.elapsed().as_secs_f64();
        self.record(client, what, &result);
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let slowest = h.slowest.entry(what.to_owned()).or_default();
        *slowest = slowest.max(took);
        result
    }
}

fn error_kind(err: &Error) -> String {
    if err.is_transient() {
        format!("{} (transient)", err.kind())
    } else {
        err.kind().to_owned()
    }
}

/// A CAS or put outcome from its result: refused only when the store says the condition did not
/// hold (the write certainly did not happen).
fn write_outcome<T>(result: &Option<kvstore::Result<T>>) -> Outcome {
    match result {
        Some(Ok(_)) => Outcome::Ok,
        Some(Err(
            Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. },
        )) => Outcome::Refused,
        _ => Outcome::Unknown,
    }
}

fn value_of(pair: &KvPair) -> anyhow::Result<u64> {
    std::str::from_utf8(&pair.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} holds {:?}, not a number", pair.key, pair.value))
}

struct Keys {
    dir: String,
}

impl Keys {
    fn register(&self, r: usize) -> String {
        format!("{}/reg/{r}", self.dir)
    }
    fn put(&self, client: usize, seq: u64) -> String {
        format!("{}/puts/{client}/{seq}", self.dir)
    }
    fn lock(&self) -> String {
        format!("{}/lock", self.dir)
    }
    fn protected(&self) -> String {
        format!("{}/protected", self.dir)
    }
}

async fn cas_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    registers: usize,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        let r = rand::rng().random_range(0..registers);
        let key = keys.register(r);
        let invoked = shared.now();
        let read = shared.call(client, "get", store.get(&key, None)).await;
        let returned = shared.now();
        let previous = match read {
            Some(Ok(pair)) => match value_of(&pair) {
                Ok(v) => {
                    let state = Versioned::at(v, pair.last_index);
                    push_register(&shared, r, Op::Read(Some(state)), invoked, Some(returned));
                    Some((pair, v))
                }
                Err(_) => continue,
            },
            Some(Err(Error::KeyNotFound { .. })) => {
                push_register(&shared, r, Op::Read(None), invoked, Some(returned));
                None
            }
            // A failed read had no effect: left out of the history.
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seq += 1;
        // A fresh value: (count + 1) in the high digits, then client and attempt, so no value
        // is ever written twice.
        let count = previous.as_ref().map_or(0, |(_, v)| v / 1_000_000_000);
        let new = (count + 1) * 1_000_000_000 + client as u64 * 10_000_000 + seq % 10_000_000;
        let invoked = shared.now();
        let result = shared
            .call(
                client,
                "atomic_put",
                store.atomic_put(
                    &key,
                    new.to_string().as_bytes(),
                    previous.as_ref().map(|(p, _)| p),
                    None,
                ),
            )
            .await;
        let returned = shared.now();
        // The model compares the index as `atomic_put` does; an acknowledged write's is the one
        // it returned, an unknown one's is learnt from the reads that see it.
        let expect = previous.map(|(p, v)| Versioned::at(v, p.last_index));
        let new = match &result {
            Some(Ok(pair)) => Versioned::at(new, pair.last_index),
            _ => Versioned::unindexed(new),
        };
        let (succeeded, returned) = match write_outcome(&result) {
            Outcome::Ok => {
                shared
                    .history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cas_ok[client] += 1;
                (Some(true), Some(returned))
            }
            Outcome::Refused => (Some(false), Some(returned)),
            Outcome::Unknown => (None, None),
        };
        push_register(
            &shared,
            r,
            Op::Cas {
                expect,
                new,
                succeeded,
            },
            invoked,
            returned,
        );
        if succeeded.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn push_register(shared: &Shared, register: usize, op: Op, invoked: u64, returned: Option<u64>) {
    shared
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .registers
        .push(RegisterOp {
            register,
            event: Event {
                op,
                invoked,
                returned,
            },
        });
}

async fn put_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        seq += 1;
        let key = keys.put(client, seq);
        let result = shared
            .call(
                client,
                "put",
                store.put(&key, seq.to_string().as_bytes(), None),
            )
            .await;
        if write_outcome(&result) == Outcome::Ok {
            shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .acked_puts
                .push((key, seq));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn lock_client(
    client: usize,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let opts = LockOptions::default().with_ttl(ttl);
    let lock_key = keys.lock();
    while !stop.is_cancelled() {
        let Some(Ok(mut locker)) = shared
            .call(client, "new_lock", store.new_lock(&lock_key, Some(&opts)))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let invoked = shared.now();
        // Bounded: a waiter gives up and tries again, so stopping never waits for a lock.
        let acquired = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(3), locker.lock()) => r.ok(),
            () = stop.cancelled() => None,
        };
        let returned = shared.now();
        let Some(Ok(lost)) = acquired else {
            drop(locker);
            continue;
        };
        let Some(token) = locker.fencing_token() else {
            continue;
        };
        shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acquisitions
            .push(Acquisition {
                token,
                invoked,
                returned,
            });
        // When the holder learns of a loss, on the same clock (a task per hold, aborted below).
        let lost_at = Arc::new(AtomicU64::new(u64::MAX));
        let watcher = tokio::spawn({
            let (lost, lost_at, shared) = (lost.clone(), lost_at.clone(), shared.clone());
            async move {
                lost.await;
                lost_at.store(shared.now(), Ordering::SeqCst);
            }
        });
        for _ in 0..3 {
            if lost.is_lost() {
                break;
            }
            let txn = Txn::new()
                .when_held(&lock_key, token)
                .put(&keys.protected(), token.to_string());
            let invoked = shared.now();
            let result = shared.call(client, "txn", store.txn(&txn)).await;
            let returned = shared.now();
            shared
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .guarded
                .push(GuardedWrite {
                    token,
                    invoked,
                    returned,
                    ok: matches!(result, Some(Ok(_))),
                });
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let unlocking = shared.now();
        let _ = shared.call(client, "unlock", locker.unlock()).await;
        watcher.abort();
        let to = unlocking.min(lost_at.load(Ordering::SeqCst));
        shared
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holds
            .push(Hold {
                token,
                from: returned,
                to,
            });
    }
}

/// Runs `ci/restart.sh ARGS…` and returns its standard output.
async fn control(args: &[&str]) -> anyhow::Result<String> {
    let script = std::env::var("KVSTORE_RESTART_SCRIPT")
        .context("KVSTORE_RESTART_SCRIPT is not set: run through ci/failover.sh")?;
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("restart.sh {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The cluster's leader, waiting (bounded) while it has none.
async fn leader(cluster: &str, not: Option<&str>) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(leader) = control(&[cluster, "leader"]).await
            && !leader.is_empty()
            && Some(leader.as_str()) != not
        {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("{cluster} elected no new leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The members of `cluster` (`ci/restart.sh CLUSTER members`, in start order) that `keep`
/// accepts.
async fn members_where(cluster: &str, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    Ok(control(&[cluster, "members"])
        .await?
        .lines()
        .filter(|m| keep(m))
        .map(str::to_owned)
        .collect())
}

/// Whether a cluster member votes or holds data (not a Sentinel, not the Consul client agent).
fn is_voter(member: &str) -> bool {
    !is_sentinel(member) && member != "consul-agent"
}

fn is_sentinel(member: &str) -> bool {
    member.starts_with("redis-s")
}

/// Sleeps until `down` has passed since `from` (the fault's moment on `shared`'s clock).
async fn stay_down(shared: &Shared, from: u64, down: Duration) {
    let elapsed = Duration::from_nanos(shared.now().saturating_sub(from));
    tokio::time::sleep(down.saturating_sub(elapsed)).await;
}

/// SIGKILLs `members`, keeps them down for `down` and starts them again in order (each waited
/// for, or with `together` all started first and then each waited for); returns the moment
/// they were gone, on `shared`'s clock.
async fn kill_for(
    shared: &Shared,
    members: &[String],
    down: Duration,
    together: bool,
) -> anyhow::Result<u64> {
    for member in members {
        control(&[member, "kill"]).await?;
    }
    let at = shared.now();
    stay_down(shared, at, down).await;
    for member in members {
        control(&[member, if together { "start-nowait" } else { "start" }]).await?;
    }
    if together {
        for member in members {
            control(&[member, "ready"]).await?;
        }
    }
    Ok(at)
}

/// Injects `nemesis` into `args.cluster` and heals it: returns the fault and the moment
/// (`shared.now()`) it began. `seed` picks which follower or Sentinel a fault takes.
async fn inject(
    nemesis: Nemesis,
    args: &Args,
    shared: &Shared,
    seed: u64,
) -> anyhow::Result<(Fault, u64)> {
    let cluster = args.cluster.as_str();
    let pick = |of: &[String]| of[(seed % of.len() as u64) as usize].clone();
    let at;
    let mut new_leader = None;
    let members = match nemesis {
        Nemesis::LeaderKill | Nemesis::LeaderPause | Nemesis::LeaderIsolate => {
            let member = leader(cluster, None).await?;
            let (fault, heal) = match nemesis {
                Nemesis::LeaderPause => ("pause", "resume"),
                Nemesis::LeaderIsolate => ("isolate", "rejoin"),
                _ => ("kill", "start"),
            };
            control(&[&member, fault]).await?;
            at = shared.now();
            let next = leader(cluster, Some(&member)).await?;
            new_leader = Some((next, (shared.now() - at) as f64 / 1e9));
            stay_down(shared, at, args.down).await;
            control(&[&member, heal]).await?;
            if nemesis != Nemesis::LeaderKill {
                control(&[&member, "ready"]).await?;
            }
            vec![member]
        }
        Nemesis::FollowerKill | Nemesis::QuorumLoss => {
            let current = leader(cluster, None).await?;
            let followers: Vec<String> = members_where(cluster, is_voter)
                .await?
                .into_iter()
                .filter(|m| *m != current)
                .collect();
            anyhow::ensure!(!followers.is_empty(), "{cluster} has no follower");
            let mut down = vec![pick(&followers)];
            if nemesis == Nemesis::QuorumLoss {
                down.push(current);
            }
            // The follower first: with it back, the remaining member has a quorum again.
            at = kill_for(shared, &down, args.down, false).await?;
            down
        }
        Nemesis::AgentKill => {
            let agent = vec!["consul-agent".to_owned()];
            at = kill_for(shared, &agent, args.down, false).await?;
            agent
        }
        Nemesis::SentinelKill | Nemesis::SentinelQuorumLoss => {
            let sentinels = members_where(cluster, is_sentinel).await?;
            anyhow::ensure!(sentinels.len() >= 3, "{cluster} has fewer than 3 Sentinels");
            let first = (seed % sentinels.len() as u64) as usize;
            let count = if nemesis == Nemesis::SentinelKill {
                1
            } else {
                2
            };
            let down: Vec<String> = (0..count)
                .map(|i| sentinels[(first + i) % sentinels.len()].clone())
                .collect();
            // Started without waiting for each other, then each waited for: a Sentinel is
            // ready only once it sees the other two.
            at = kill_for(shared, &down, args.down, true).await?;
            down
        }
    };
    let (new_leader, election_s) = new_leader.unzip();
    Ok((
        Fault {
            nemesis,
            members,
            new_leader,
            election_s,
            healed_s: (shared.now() - at) as f64 / 1e9,
            recovery_s: None,
            first_success_s: None,
            first_write_s: None,
        },
        at,
    ))
}

/// One injected fault and how the cluster and the clients came through it.
#[derive(Serialize)]
struct Fault {
    nemesis: Nemesis,
    /// The members it killed or paused.
    members: Vec<String>,
    /// The member that led after it, when it deposed the leader.
    new_leader: Option<String>,
    /// Seconds from the fault until the cluster named a new leader.
    election_s: Option<f64>,
    /// Seconds from the fault until the members were started or resumed again.
    healed_s: f64,
    /// Seconds from the fault until every client completed an acknowledged operation again.
    recovery_s: Option<f64>,
    /// Seconds from the fault until the first client did.
    first_success_s: Option<f64>,
    /// Seconds from the fault until the first acknowledged write.
    first_write_s: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    cluster: String,
    clients: usize,
    operations: usize,
    /// The seed that chose the nemeses (`--seed` replays them).
    seed: u64,
    faults: Vec<Fault>,
    acked_puts: usize,
    lost_puts: Vec<String>,
    register_events: usize,
    unknown_register_events: usize,
    non_linearizable_registers: Vec<usize>,
    lock_acquisitions: usize,
    guarded_writes_ok: usize,
    lock_violations: Vec<String>,
    hung_calls: Vec<String>,
    errors: BTreeMap<String, usize>,
    unexpected_errors: Vec<String>,
    /// Acknowledged compare-and-swaps of each client.
    cas_ok_per_client: Vec<usize>,
    /// What the run did too little of for its verdict to mean anything (empty: enough).
    too_little: Vec<String>,
    /// The longest each kind of call took, in seconds (waiting for a lock is not one: it is
    /// abandoned after 3 s).
    slowest_calls_s: BTreeMap<String, f64>,
    /// `--recovery-bound`, in seconds.
    recovery_bound_s: f64,
    /// Every client completed a call again within the bound after each fault.
    recovered: bool,
    passed: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let var = format!(
        "KVSTORE_{}_URL",
        args.cluster.to_ascii_uppercase().replace('-', "_")
    );
    let url = match &args.url {
        Some(url) => url.clone(),
        None => std::env::var(&var).with_context(|| format!("{var} is not set"))?,
    };
    let shared = Arc::new(Shared {
        start: Instant::now(),
        hang_bound: args.hang_bound,
        history: Mutex::new(History {
            successes: vec![Vec::new(); args.clients],
            cas_ok: vec![0; args.clients],
            ..History::default()
        }),
    });
    let keys = Arc::new(Keys {
        dir: format!("kvstore-failover/{:016x}", rand::random::<u64>()),
    });
    let stop = CancellationToken::new();
    let mut stores = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let store = kvstore::open(&url)
            .await
            .with_context(|| format!("client {client}: connect to {}", args.cluster))?;
        stores.push(store.clone());
        let (s, k, x) = (shared.clone(), keys.clone(), stop.clone());
        tasks.spawn(cas_client(client, store.clone(), s, k, args.registers, x));
        let (s, k, x) = (shared.clone(), keys.clone(), stop.clone());
        tasks.spawn(put_client(client, store.clone(), s, k, x));
        let (s, k, x) = (shared.clone(), keys.clone(), stop.clone());
        tasks.spawn(lock_client(client, store, s, k, args.lock_ttl, x));
    }
    let seed = args.seed.unwrap_or_else(nemesis::default_seed);
    let plan = if args.nemeses.is_empty() {
        let mut plan = vec![Nemesis::LeaderKill];
        plan.extend(nemesis::choose(
            &Nemesis::pool(&args.cluster),
            seed,
            args.per_run,
        ));
        plan
    } else {
        args.nemeses.clone()
    };
    let names: Vec<&str> = plan.iter().map(|n| n.name()).collect();
    println!(
        "{}: {} clients on {}; nemeses {} (seed {seed}; replay with --seed {seed})",
        args.cluster,
        args.clients,
        kvstore::backend::redact_url(&url),
        names.join(", "),
    );
    tokio::time::sleep(args.settle).await;
    let mut faults = Vec::new();
    let mut fault_at = Vec::new();
    for (round, &nemesis) in plan.iter().enumerate() {
        let (fault, at) = inject(nemesis, &args, &shared, seed).await?;
        fault_at.push(at);
        println!(
            "fault {} at {:.2} s into the run: {} on {}: healed after {:.2} s{}",
            round + 1,
            at as f64 / 1e9,
            nemesis.name(),
            fault.members.join(", "),
            fault.healed_s,
            match (&fault.new_leader, fault.election_s) {
                (Some(l), Some(s)) => format!("; {l} led after {s:.2} s"),
                _ => String::new(),
            }
        );
        tokio::time::sleep(args.settle).await;
        faults.push(fault);
    }
    stop.cancel();
    // Every task stops at its next check; each call in flight is bounded by the hang bound.
    while tasks.join_next().await.is_some() {}

    // The final state, read once the cluster is whole, through a fresh store.
    let checker = retry_connect(&url).await?;
    let mut report = verify(&args, &shared, &keys, &*checker, &fault_at, faults).await?;
    report.seed = seed;
    let _ = checker.delete_tree(&keys.dir).await;
    let _ = checker.close().await;
    for store in stores {
        let _ = store.close().await;
    }
    report.recovery_bound_s = args.recovery_bound.as_secs_f64();
    report.recovered = report
        .faults
        .iter()
        .all(|k| k.recovery_s.is_some_and(|s| s <= report.recovery_bound_s));
    report.passed = report.lost_puts.is_empty()
        && report.too_little.is_empty()
        && report.unexpected_errors.is_empty()
        && report.non_linearizable_registers.is_empty()
        && report.lock_violations.is_empty()
        && report.hung_calls.is_empty()
        && report.recovered;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if !report.passed {
        bail!("{}: the failover checks failed", args.cluster);
    }
    Ok(())
}

async fn retry_connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kvstore::open(url).await {
            Ok(store) => return Ok(store),
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err).context("connecting the checker"),
        }
    }
}

/// A read that retries transient errors for up to 30 s: the final state must be readable.
async fn final_get(store: &dyn Store, key: &str) -> anyhow::Result<Option<KvPair>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.get(key, None).await {
            Ok(pair) => return Ok(Some(pair)),
            Err(Error::KeyNotFound { .. }) => return Ok(None),
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err).with_context(|| format!("final read of {key}")),
        }
    }
}

async fn verify(
    args: &Args,
    shared: &Shared,
    keys: &Keys,
    store: &dyn Store,
    fault_at: &[u64],
    mut faults: Vec<Fault>,
) -> anyhow::Result<Report> {
    let mut history =
        std::mem::take(&mut *shared.history.lock().unwrap_or_else(|e| e.into_inner()));

    // No acknowledged put lost.
    let mut finals = HashMap::new();
    for (key, _) in &history.acked_puts {
        if !finals.contains_key(key) {
            let value = match final_get(store, key).await? {
                Some(pair) => Some(value_of(&pair)?),
                None => None,
            };
            finals.insert(key.clone(), value);
        }
    }
    let lost_puts = lost_puts(&history.acked_puts, &finals);

    // Each register's history, with a final read appended.
    let mut per_register: HashMap<usize, Vec<Event>> = HashMap::new();
    for op in &history.registers {
        per_register.entry(op.register).or_default().push(op.event);
    }
    let mut non_linearizable = Vec::new();
    let unknown = history
        .registers
        .iter()
        .filter(|o| o.event.returned.is_none())
        .count();
    for r in 0..args.registers {
        let invoked = shared.now();
        let value = match final_get(store, &keys.register(r)).await? {
            Some(pair) => Some(Versioned::at(value_of(&pair)?, pair.last_index)),
            None => None,
        };
        let events = per_register.entry(r).or_default();
        // In invocation order: the search tries the earliest operations first.
        events.sort_by_key(|e| e.invoked);
        events.push(Event {
            op: Op::Read(value),
            invoked,
            returned: Some(shared.now()),
        });
        let verdict = linearizability::check(None, events);
        if !verdict.is_linearizable() {
            non_linearizable.push(r);
            if let linearizability::Verdict::NotLinearizable { placed }
            | linearizability::Verdict::Undecided { placed } = &verdict
            {
                let what = if matches!(verdict, linearizability::Verdict::Undecided { .. }) {
                    "undecided within the search budget"
                } else {
                    "not linearizable"
                };
                eprintln!(
                    "register {r}: {what} after {} of {} events; next events: {:?}",
                    placed.len(),
                    events.len(),
                    next_unplaced(events, placed)
                );
            }
        }
    }

    // Locks.
    let mut lock_violations = lock_violations(&mut history.acquisitions, &history.guarded);
    lock_violations.extend(overlapping_holds(&mut history.holds));
    let guarded_writes_ok = history.guarded.iter().filter(|g| g.ok).count();

    // Recovery per fault: until every client has succeeded again.
    for (kill, &at) in faults.iter_mut().zip(fault_at) {
        let firsts: Vec<Option<u64>> = history
            .successes
            .iter()
            .map(|s| s.iter().copied().find(|&t| t > at))
            .collect();
        kill.first_success_s = firsts
            .iter()
            .flatten()
            .min()
            .map(|&t| (t - at) as f64 / 1e9);
        kill.first_write_s = history
            .write_successes
            .iter()
            .copied()
            .filter(|&t| t > at)
            .min()
            .map(|t| (t - at) as f64 / 1e9);
        kill.recovery_s = firsts
            .iter()
            .copied()
            .collect::<Option<Vec<u64>>>()
            .and_then(|ts| ts.into_iter().max())
            .map(|t| (t - at) as f64 / 1e9);
    }

    Ok(Report {
        cluster: args.cluster.clone(),
        clients: args.clients,
        operations: history.ops,
        seed: 0,
        faults,
        acked_puts: history.acked_puts.len(),
        lost_puts,
        register_events: history.registers.len(),
        unknown_register_events: unknown,
        non_linearizable_registers: non_linearizable,
        lock_acquisitions: history.acquisitions.len(),
        guarded_writes_ok,
        lock_violations,
        hung_calls: std::mem::take(&mut history.hung),
        errors: std::mem::take(&mut history.errors),
        unexpected_errors: std::mem::take(&mut history.unexpected),
        too_little: too_little(
            history.acquisitions.len(),
            guarded_writes_ok,
            &history.cas_ok,
        ),
        cas_ok_per_client: std::mem::take(&mut history.cas_ok),
        slowest_calls_s: std::mem::take(&mut history.slowest),
        recovery_bound_s: 0.0,
        recovered: false,
        passed: false,
    })
}

/// The acknowledged puts whose key does not hold their value in the final state (`finals`:
/// each key's final value, `None` when absent). Each put writes a key of its own; were a key
/// written several times, its greatest acknowledged value must be the final one.
fn lost_puts(acked: &[(String, u64)], finals: &HashMap<String, Option<u64>>) -> Vec<String> {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (key, seq) in acked {
        let entry = last.entry(key).or_insert(*seq);
        *entry = (*entry).max(*seq);
    }
    let mut lost: Vec<String> = last
        .into_iter()
        .filter_map(|(key, seq)| match finals.get(key).copied().flatten() {
            Some(found) if found == seq => None,
            found => Some(format!("{key}: acknowledged {seq}, found {found:?}")),
        })
        .collect();
    lost.sort();
    lost
}

/// Mutual exclusion and fencing, from the acquisitions and guarded writes: no token granted
/// twice; an acquisition that began after another completed has a greater token; no guarded
/// write with a token succeeded after a write or an acquisition with a greater token had
/// completed. At most 20 violations are returned.
fn lock_violations(acquisitions: &mut [Acquisition], guarded: &[GuardedWrite]) -> Vec<String> {
    let mut violations = Vec::new();
    acquisitions.sort_by_key(|a| a.returned);
    let mut tokens = std::collections::HashSet::new();
    for a in acquisitions.iter() {
        if !tokens.insert(a.token) {
            violations.push(format!("fencing token {} granted twice", a.token));
        }
    }
    for (i, a) in acquisitions.iter().enumerate() {
        for b in &acquisitions[i + 1..] {
            if a.returned < b.invoked && a.token >= b.token {
                violations.push(format!(
                    "acquisition with token {} began after one with token {} completed",
                    b.token, a.token
                ));
            }
        }
    }
    let ok_writes: Vec<&GuardedWrite> = guarded.iter().filter(|g| g.ok).collect();
    for newer in &ok_writes {
        for older in &ok_writes {
            if older.token < newer.token && older.invoked > newer.returned {
                violations.push(format!(
                    "a guarded write with token {} succeeded after one with token {} had completed",
                    older.token, newer.token
                ));
            }
        }
    }
    for newer in acquisitions.iter() {
        for older in &ok_writes {
            if older.token < newer.token && older.invoked > newer.returned {
                violations.push(format!(
                    "a guarded write with token {} succeeded after token {} was granted",
                    older.token, newer.token
                ));
            }
        }
    }
    violations.truncate(20);
    violations
}

/// How much two holds may seem to overlap before it counts: the time a task takes to notice a
/// resolved `LockLost` on a loaded machine. The loss rule itself leaves a gap of at least a
/// fifth of the TTL between a lost hold and the next.
const HOLD_OVERLAP_MARGIN: u64 = 100_000_000;

/// Mutual exclusion, checked directly: no two holds overlap by more than
/// [`HOLD_OVERLAP_MARGIN`]. At most 20 violations.
fn overlapping_holds(holds: &mut [Hold]) -> Vec<String> {
    holds.sort_by_key(|h| h.from);
    let mut violations = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if b.from >= a.to {
                break;
            }
            let overlap = a.to.min(b.to) - b.from;
            if overlap > HOLD_OVERLAP_MARGIN {
                violations.push(format!(
                    "holds with tokens {} ({:.3}–{:.3} s into the run) and {} (from {:.3} s) \
                     overlapped by {:.3} s",
                    a.token,
                    a.from as f64 / 1e9,
                    a.to as f64 / 1e9,
                    b.token,
                    b.from as f64 / 1e9,
                    overlap as f64 / 1e9
                ));
            }
        }
    }
    violations.truncate(20);
    violations
}

/// The least a run must do for its verdict to mean anything: a run that took almost no lock,
/// made almost no guarded write or whose clients almost never completed a CAS would pass every
/// check by having nothing to check. Runs on CI's clusters do one to two orders of magnitude
/// more.
const MIN_ACQUISITIONS: usize = 10;
const MIN_GUARDED_WRITES: usize = 10;
const MIN_CAS_PER_CLIENT: usize = 5;

/// What the run did too little of (empty: enough for a meaningful verdict).
fn too_little(acquisitions: usize, guarded_writes_ok: usize, cas_ok: &[usize]) -> Vec<String> {
    let mut short = Vec::new();
    if acquisitions < MIN_ACQUISITIONS {
        short.push(format!(
            "{acquisitions} lock acquisitions (at least {MIN_ACQUISITIONS})"
        ));
    }
    if guarded_writes_ok < MIN_GUARDED_WRITES {
        short.push(format!(
            "{guarded_writes_ok} acknowledged guarded writes (at least {MIN_GUARDED_WRITES})"
        ));
    }
    for (client, &n) in cas_ok.iter().enumerate() {
        if n < MIN_CAS_PER_CLIENT {
            short.push(format!(
                "client {client}: {n} acknowledged CAS (at least {MIN_CAS_PER_CLIENT})"
            ));
        }
    }
    short
}

/// The first few events the checker could not place, for the report.
fn next_unplaced(events: &[Event], placed: &[usize]) -> Vec<Event> {
    let placed: std::collections::HashSet<usize> = placed.iter().copied().collect();
    let mut rest: Vec<Event> = (0..events.len())
        .filter(|i| !placed.contains(i))
        .map(|i| events[i])
        .collect();
    rest.sort_by_key(|e| e.invoked);
    rest.truncate(5);
    rest
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("never".into(), |s| format!("{s:.2} s"))
}

fn print_report(r: &Report) {
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "== {} failover checks ({} operations)",
        r.cluster, r.operations
    );
    println!("   seed {} (replay with --seed {})", r.seed, r.seed);
    for (i, f) in r.faults.iter().enumerate() {
        let leader = match (&f.new_leader, f.election_s) {
            (Some(l), Some(s)) => format!("; {l} led after {s:.2} s"),
            _ => String::new(),
        };
        println!(
            "   fault {}: {} on {}{leader}; healed after {:.2} s; first call ok after {}, first write after {}, every client after {}",
            i + 1,
            f.nemesis.name(),
            f.members.join(", "),
            f.healed_s,
            seconds(f.first_success_s),
            seconds(f.first_write_s),
            seconds(f.recovery_s),
        );
    }
    println!(
        "   {} no acknowledged put lost ({} acknowledged, {} lost)",
        verdict(r.lost_puts.is_empty()),
        r.acked_puts,
        r.lost_puts.len()
    );
    for lost in r.lost_puts.iter().take(5) {
        println!("        {lost}");
    }
    println!(
        "   {} CAS registers linearizable ({} events, {} with unknown outcome; failing registers: {:?})",
        verdict(r.non_linearizable_registers.is_empty()),
        r.register_events,
        r.unknown_register_events,
        r.non_linearizable_registers
    );
    println!(
        "   {} enough activity for a verdict (CAS acknowledged per client: {:?})",
        verdict(r.too_little.is_empty()),
        r.cas_ok_per_client
    );
    for short in &r.too_little {
        println!("        too little: {short}");
    }
    println!(
        "   {} locks: no overlapping holders ({} acquisitions, {} guarded writes)",
        verdict(r.lock_violations.is_empty()),
        r.lock_acquisitions,
        r.guarded_writes_ok
    );
    for v in &r.lock_violations {
        println!("        {v}");
    }
    let slowest: Vec<String> = r
        .slowest_calls_s
        .iter()
        .map(|(what, s)| format!("{what} {s:.2} s"))
        .collect();
    println!(
        "   {} no call hung ({} hung; slowest: {})",
        verdict(r.hung_calls.is_empty()),
        r.hung_calls.len(),
        slowest.join(", ")
    );
    let slowest_recovery = r
        .faults
        .iter()
        .map(|k| k.recovery_s)
        .try_fold(0.0_f64, |max, s| s.map(|s| max.max(s)));
    println!(
        "   {} every client recovered within {:.0} s of each fault (slowest: {})",
        verdict(r.recovered),
        r.recovery_bound_s,
        seconds(slowest_recovery)
    );
    println!(
        "   {} no error that is neither transient nor a refused condition (errors seen: {:?})",
        verdict(r.unexpected_errors.is_empty()),
        r.errors
    );
    for e in &r.unexpected_errors {
        println!("        neither transient nor a refused condition: {e}");
    }
    println!("   verdict: {}", verdict(r.passed));
}

#[cfg(test)]
mod tests {
    //! The verdict's checks on known-bad histories: each must be caught.

    use super::*;

    fn acquisition(token: u64, invoked: u64, returned: u64) -> Acquisition {
        Acquisition {
            token,
            invoked,
            returned,
        }
    }

    fn write(token: u64, invoked: u64, returned: u64, ok: bool) -> GuardedWrite {
        GuardedWrite {
            token,
            invoked,
            returned,
            ok,
        }
    }

    #[test]
    fn a_lost_acknowledged_put_is_caught() {
        let acked = vec![
            ("k/0".to_owned(), 1),
            ("k/0".to_owned(), 2),
            ("k/1".to_owned(), 7),
        ];
        let mut finals = HashMap::from([("k/0".to_owned(), Some(2)), ("k/1".to_owned(), Some(7))]);
        assert!(lost_puts(&acked, &finals).is_empty());
        finals.insert("k/0".to_owned(), Some(1));
        assert_eq!(
            lost_puts(&acked, &finals),
            ["k/0: acknowledged 2, found Some(1)"]
        );
        finals.insert("k/0".to_owned(), None);
        assert_eq!(
            lost_puts(&acked, &finals).len(),
            1,
            "a vanished key is a lost put"
        );
    }

    #[test]
    fn overlapping_holders_are_caught() {
        // Sequential holders with growing tokens: fine.
        let mut good = [acquisition(1, 0, 10), acquisition(2, 20, 30)];
        assert!(lock_violations(&mut good, &[]).is_empty());
        // The same token granted twice.
        let mut twice = [acquisition(5, 0, 10), acquisition(5, 20, 30)];
        assert!(lock_violations(&mut twice, &[])[0].contains("granted twice"));
        // A later acquisition with a smaller token: a second holder the first never saw end.
        let mut backwards = [acquisition(9, 0, 10), acquisition(4, 20, 30)];
        assert!(lock_violations(&mut backwards, &[])[0].contains("began after"));
    }

    #[test]
    fn a_stale_guarded_write_accepted_is_caught() {
        let mut acquisitions = [acquisition(1, 0, 10), acquisition(2, 50, 60)];
        // Token 1 writes before token 2 is granted, and is refused after: fine.
        let fine = [write(1, 20, 30, true), write(1, 70, 80, false)];
        assert!(lock_violations(&mut acquisitions, &fine).is_empty());
        // Token 1's write accepted after token 2 was granted.
        let stale = [write(1, 70, 80, true)];
        let found = lock_violations(&mut acquisitions, &stale);
        assert!(
            found
                .iter()
                .any(|v| v.contains("after token 2 was granted")),
            "{found:?}"
        );
        // Token 1's write accepted after token 2's write completed.
        let after_write = [write(2, 61, 65, true), write(1, 70, 80, true)];
        let found = lock_violations(&mut acquisitions, &after_write);
        assert!(
            found.iter().any(|v| v.contains("had completed")),
            "{found:?}"
        );
    }

    #[test]
    fn overlapping_holds_are_caught() {
        let s = 1_000_000_000;
        let hold = |token, from, to| Hold { token, from, to };
        assert!(overlapping_holds(&mut [hold(1, 0, 2 * s), hold(2, 3 * s, 4 * s)]).is_empty());
        // Within the margin: a late notice of the loss, not two holders.
        let near = HOLD_OVERLAP_MARGIN / 2;
        assert!(
            overlapping_holds(&mut [hold(1, 0, 2 * s + near), hold(2, 2 * s, 3 * s)]).is_empty()
        );
        let found = overlapping_holds(&mut [hold(2, s, 3 * s), hold(1, 0, 2 * s)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("overlapped by 1.000 s"), "{found:?}");
    }

    #[test]
    fn a_run_that_did_too_little_fails() {
        assert!(too_little(117, 80, &[900, 850, 870, 910]).is_empty());
        let short = too_little(3, 0, &[900, 2]);
        assert_eq!(short.len(), 3, "{short:?}");
        assert!(short[2].contains("client 1"), "{short:?}");
    }

    #[test]
    fn a_non_linearizable_register_is_caught() {
        // A write of 1 completes, then a read that starts later sees the initial value.
        let history = [
            Event {
                op: Op::Write(Versioned::at(1, 5)),
                invoked: 0,
                returned: Some(10),
            },
            Event {
                op: Op::Read(None),
                invoked: 20,
                returned: Some(30),
            },
        ];
        assert!(!linearizability::check(None, &history).is_linearizable());
        assert!(linearizability::check(None, &history[..1]).is_linearizable());
    }
}
