//! `kvstore-failover`: injects faults into a cluster under load — a leader kill, then nemeses
//! chosen by a printed seed — and checks the recorded history.
//!
//! N clients, each with its own store, run three workloads against one cluster while this
//! program injects each fault through `ci/restart.sh` (`KVSTORE_RESTART_SCRIPT`) and heals it:
//! the leader (the Redis primary) SIGKILLed and started again on the same port, or paused
//! (SIGSTOP) past the election timeout and resumed, or cut off from its peers by a packet
//! filter while its clients still reach it; a follower killed; two of
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
//!
//! Modules: `workload` (the clients), `history` (what they record), `nemesis` (which faults
//! a run injects), `control` (injecting them through testutils' server control), `verify`
//! (the checks) and `report`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use kvstore::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod control;
mod history;
mod nemesis;
mod report;
mod verify;
mod workload;

use control::*;
use history::*;
use nemesis::Nemesis;
use report::*;
use verify::*;
use workload::*;

#[derive(Parser, Debug)]
#[command(about = "Inject faults into a cluster under load and check the recorded history")]
pub(crate) struct Args {
    /// The cluster (ci/servers.sh name): etcd-cluster, zk-cluster, consul-cluster or
    /// redis-sentinel.
    #[arg(long)]
    pub(crate) cluster: String,
    /// The URL to connect with (default: `KVSTORE_<CLUSTER>_URL`).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Clients, each with its own store and running all three workloads.
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// CAS registers shared by the clients.
    #[arg(long, default_value_t = 8)]
    pub(crate) registers: usize,
    /// The faults to inject, in order (default: a leader kill, then `--per-run` more of the
    /// cluster's nemeses chosen by `--seed`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) nemeses: Vec<Nemesis>,
    /// Picks the nemeses beyond the leader kill (default: the day number); the report prints
    /// it, and the same seed replays the same choice.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// How many nemeses beyond the leader kill a run picks.
    #[arg(long, default_value_t = 2)]
    pub(crate) per_run: usize,
    /// Load before the first fault, and after each one heals.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub(crate) settle: Duration,
    /// How long a killed or paused member stays down (a paused one at least until another
    /// member leads).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) down: Duration,
    /// A call that has not returned after this long counts as hung.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) hang_bound: Duration,
    /// Every client must complete an acknowledged operation within this long after each fault.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) recovery_bound: Duration,
    /// Lock TTL.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) lock_ttl: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
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

pub(crate) async fn retry_connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
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
