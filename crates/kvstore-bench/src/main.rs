//! `kvstore-bench`: kvstore against the raw client of each backend, side by side.
//!
//! For every reachable backend and every operation it runs the same workload through
//! kvstore's `Store` and through the backend's own client, interleaved over several rounds on
//! the same server, and reports throughput, latency percentiles, the kvstore/raw throughput
//! ratio with its spread over the rounds, and the requests the server counted per call.
//!
//! Servers come from the `KVSTORE_*_URL` variables that `ci/servers.sh` exports; run it
//! through `ci/bench.sh`, which starts them. Results go to a Markdown table (`--markdown`)
//! and JSON (`--json`).

mod counters;
mod events;
mod kv;
mod layers;
mod measure;
mod raw;
mod soak;
mod valkeyrie;
mod watchers;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use counters::Counter;
use indicatif::{ProgressBar, ProgressStyle};
use kvstore::Store;
use measure::{Batch, OpFn, median};
use serde::Serialize;

/// The operations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    /// `get` of an existing key.
    Get,
    /// `get` with `ReadOptions::with_consistent(false)`: a read any server may answer from
    /// its own state (ZooKeeper: no `sync` first; etcd: a serializable read). The raw client
    /// reads the same way (etcd: serializable; Consul: `?stale`; ZooKeeper's `getData` and
    /// Redis have one kind of read); valkeyrie does its usual `get`.
    GetStale,
    /// `put` (overwrites after the first round).
    Put,
    /// `atomic_put` chained on the previous pair (a CAS that always succeeds).
    AtomicPut,
    /// `list` of a directory of 100 keys.
    List,
    /// `list` of a directory of 10,000 keys (concurrency 1; with the client's peak heap).
    #[value(name = "list-10k")]
    List10k,
    /// `list` of a directory of 100,000 keys (concurrency 1; with the client's peak heap).
    #[value(name = "list-100k")]
    List100k,
    /// Watch latency: from just before a write to the delivery of its event (concurrency 1).
    Watch,
    /// `lock()` + `unlock()` of an uncontended lock (one `Locker` per worker, reused).
    Lock,
    /// `new_lock()` + `lock()` + `unlock()`: a new `Locker` per call, as valkeyrie's callers
    /// make one (`NewLock`) per lock. The raw client and valkeyrie do what they do for `lock`.
    LockPerCall,
    /// A transaction of 2 unconditional puts (the raw client's own transaction).
    Txn2,
    /// A transaction of 8 unconditional puts.
    Txn8,
}

impl Op {
    /// The keys in the listed directory of a list operation (0 for the others).
    pub(crate) fn list_keys(self) -> usize {
        match self {
            Op::List => 100,
            Op::List10k => 10_000,
            Op::List100k => 100_000,
            _ => 0,
        }
    }

    /// Measured at concurrency 1 only: watch latency, and lists of large directories (32
    /// copies of 100,000 pairs at once would measure the machine's memory).
    fn single_worker(self) -> bool {
        matches!(self, Op::Watch | Op::List10k | Op::List100k)
    }

    /// The puts per transaction of `Txn2`/`Txn8`.
    pub(crate) fn txn_puts(self) -> usize {
        match self {
            Op::Txn2 => 2,
            Op::Txn8 => 8,
            _ => 0,
        }
    }
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetStale => "get (consistent=false)",
            Op::Put => "put",
            Op::AtomicPut => "atomic_put",
            Op::List => "list (100 keys)",
            Op::List10k => "list (10,000 keys)",
            Op::List100k => "list (100,000 keys)",
            Op::Watch => "watch latency",
            Op::Lock => "lock + unlock",
            Op::LockPerCall => "new_lock + lock + unlock",
            Op::Txn2 => "txn (2 puts)",
            Op::Txn8 => "txn (8 puts)",
        }
    }
}

/// kvstore against each backend's raw client, on the same servers, interleaved.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Rounds per measurement; kvstore and the raw client alternate within each round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of one batch, in milliseconds; a round runs one batch of kvstore and one of the
    /// raw client.
    #[arg(long, default_value_t = 1000)]
    batch_ms: u64,
    /// Calls per worker over which the server's request counter is read (at each concurrency).
    #[arg(long, default_value_t = 50)]
    counted_calls: usize,
    /// Backends to run (default: every one reachable).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Operations to run (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    operations: Vec<Op>,
    /// Write the results as a Markdown table here.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Instead of the operations: this many watchers on distinct keys under 10 directories of
    /// one store per backend (time to open, delivery latency of one write per key, client RSS,
    /// TCP connections to the server, server-side watches).
    #[arg(long)]
    watchers: Option<usize>,
    /// Instead of the operations: the per-call cost of each layer of `kvstore::layer` (and of
    /// all of them stacked) on the in-memory store, against the bare store, interleaved.
    #[arg(long)]
    layers: bool,
    /// Instead of the operations: the Traefik-shaped event benchmark, for each of these
    /// directory sizes (`200,2000,20000`): one writer changing a key at `--events-rate` per
    /// second for `--events-duration`, consumed by `watch_tree`, `watch_tree` plus `list`,
    /// `watch_events` and a `Cache`.
    #[arg(long, value_delimiter = ',')]
    events: Vec<usize>,
    /// Changes per second during `--events`.
    #[arg(long, default_value_t = 100)]
    events_rate: u32,
    /// How long the writer writes per size and consumer during `--events`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    events_duration: std::time::Duration,
    /// Instead of the operations: a soak of this length (`10m`) on each backend, one after
    /// another: a mixed load with watchers, `keep_alive` registrations and lock churn, sampling
    /// the client's RSS and open file descriptors (run one process per backend, as ci/soak.sh
    /// does, so each figure is one backend's alone).
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<std::time::Duration>,
    /// Watchers during `--soak`.
    #[arg(long, default_value_t = 1000)]
    soak_watchers: usize,
    /// `keep_alive` registrations during `--soak`.
    #[arg(long, default_value_t = 100)]
    soak_registrations: usize,
    /// Sampling period during `--soak`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    soak_sample: std::time::Duration,
    /// The warm-up of `--soak`: memory and descriptor growth is measured from the first sample
    /// after it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    soak_settle: std::time::Duration,
    /// Query options for the redb store's URL (`cache_size=4194304`), to compare settings.
    #[arg(long)]
    redb_options: Option<String>,
    /// After each cell's closed-loop rounds, also measure latency in an open loop (calls
    /// started on a fixed schedule, timed from it) at 50 % and 80 % of each side's measured
    /// throughput, kvstore and raw client, one batch each (not for watch latency, nor for
    /// locks, whose calls on one worker's key would contend).
    #[arg(long)]
    open_loop: bool,
    /// The `valkeyrie-bench` binary (built from `go/` by ci/bench.sh): also run each operation
    /// through valkeyrie v1 on the same server, interleaved, and report kvstore/valkeyrie.
    #[arg(long)]
    valkeyrie: Option<std::path::PathBuf>,
}

/// How to reach one backend, both ways.
enum Raw {
    Redb(Arc<redb::Database>),
    Redis(String),
    Etcd(String),
    Zk(String),
    Consul(String),
    Postgres(String),
}

impl Raw {
    /// Deletes what the raw side of a cell wrote under `dir` (`raw/<dir>` on a server).
    async fn cleanup(&self, dir: &str) -> anyhow::Result<()> {
        match self {
            Raw::Redb(db) => raw::cleanup::redb(db.clone(), dir).await,
            _ => self.cleanup_exact(&format!("raw/{dir}")).await,
        }
    }

    /// Deletes everything under `path` on the server (a redb file: under `path` in its table).
    async fn cleanup_exact(&self, path: &str) -> anyhow::Result<()> {
        match self {
            Raw::Redb(db) => raw::cleanup::redb(db.clone(), path).await,
            Raw::Redis(url) => raw::cleanup::redis(url, path).await,
            Raw::Etcd(endpoint) => raw::cleanup::etcd(endpoint, path).await,
            Raw::Zk(hosts) => raw::cleanup::zk(hosts, path).await,
            Raw::Consul(base) => raw::cleanup::consul(base, path).await,
            Raw::Postgres(url) => raw::cleanup::postgres(url, path).await,
        }
    }
}

struct Backend {
    name: &'static str,
    url: String,
    raw: Raw,
    counter: Option<Counter>,
}

#[derive(Debug, Serialize)]
struct Side {
    /// Median over the rounds.
    ops_per_sec: f64,
    /// Latency percentiles, microseconds: of every call of every round (the rounds' latency
    /// histograms merged), or for valkeyrie, which reports only percentiles, their median over
    /// the rounds.
    p50_us: f64,
    p99_us: f64,
    /// `None` for valkeyrie.
    p999_us: Option<f64>,
    /// Requests the server counted per call (`None` for embedded stores).
    round_trips: Option<f64>,
    /// Client CPU time per call, microseconds (median over the rounds).
    cpu_us: Option<f64>,
    /// The most heap one call allocated beyond what was in use before it, MiB (lists of
    /// 10,000 keys and more; not for valkeyrie, another process).
    heap_peak_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Record {
    backend: &'static str,
    op: Op,
    concurrency: usize,
    kvstore: Side,
    raw: Option<Side>,
    /// kvstore throughput / raw throughput: the geometric mean over the rounds, and its 95 %
    /// confidence interval (`measure::ratio_ci`).
    ratio: Option<[f64; 3]>,
    /// valkeyrie v1 doing the same, when `--valkeyrie` is given and it has the operation.
    valkeyrie: Option<Side>,
    /// kvstore throughput / valkeyrie throughput: geometric mean and 95 % confidence interval.
    vs_valkeyrie: Option<[f64; 3]>,
    /// Open-loop latency (`--open-loop`).
    open_loop: Vec<OpenLoop>,
    /// Why valkeyrie has no figures for this cell, when it failed.
    valkeyrie_error: Option<String>,
}

/// Latency of one side at a fixed offered load (`measure::run_open`).
#[derive(Debug, Serialize)]
struct OpenLoop {
    /// `kvstore` or `raw`.
    side: &'static str,
    /// The offered load as a fraction of the side's closed-loop throughput.
    load: f64,
    /// Calls started per second, and completed per second over the batch.
    offered_per_sec: f64,
    completed_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

/// Fractions of each side's closed-loop throughput at which `--open-loop` measures.
const OPEN_LOOP_LOADS: [f64; 2] = [0.5, 0.8];

/// Calls an open-loop batch keeps in flight at most (the rest wait for a slot, and the wait
/// counts): below Consul's 200 connections per client (`limits.http_max_conns_per_client`),
/// past which it answers 429, which ended a whole run when this was 4,096.
const OPEN_LOOP_IN_FLIGHT: usize = 128;

#[derive(Debug, Serialize)]
struct Report {
    rounds: usize,
    batch_ms: u64,
    records: Vec<Record>,
    skipped: Vec<Skipped>,
}

/// A backend that was not run, and why.
type Skipped = (String, String);

fn host_port(url: &str, scheme: &str) -> String {
    url.trim_start_matches(scheme)
        .trim_end_matches('/')
        .to_owned()
}

/// The redb store's file in the benchmark's temporary directory.
const REDB_FILE: &str = "kvstore.redb";

fn backends(
    wanted: &[String],
    redb_options: Option<&str>,
    tmp: &std::path::Path,
) -> anyhow::Result<(Vec<Backend>, Vec<Skipped>)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    if want("redb") {
        found.push(Backend {
            name: "redb",
            url: format!(
                "redb://{}{}",
                tmp.join(REDB_FILE).display(),
                redb_options.map_or(String::new(), |query| format!("?{query}"))
            ),
            raw: Raw::Redb(Arc::new(redb::Database::create(tmp.join("raw.redb"))?)),
            counter: None,
        });
    }
    if want("memory") {
        found.push(Backend {
            name: "memory",
            url: "memory://".into(),
            raw: Raw::Redb(Arc::new(
                redb::Database::builder()
                    .create_with_backend(redb::backends::InMemoryBackend::new())?,
            )),
            counter: None,
        });
    }
    let mut network =
        |name: &'static str, var: &str, make: &dyn Fn(&str) -> (Raw, Option<Counter>)| {
            if !want(name) {
                return;
            }
            match std::env::var(var) {
                Ok(url) if !url.is_empty() => {
                    let (raw, counter) = make(&url);
                    found.push(Backend {
                        name,
                        url,
                        raw,
                        counter,
                    });
                }
                _ => skipped.push((
                    name.to_owned(),
                    format!("{var} is not set (start the servers with ci/bench.sh)"),
                )),
            }
        };
    network("redis", "KVSTORE_REDIS_URL", &|url| {
        (
            Raw::Redis(url.to_owned()),
            Some(Counter::Redis(url.to_owned())),
        )
    });
    network("etcd", "KVSTORE_ETCD_URL", &|url| {
        let http = format!("http://{}", host_port(url, "etcd://"));
        (Raw::Etcd(http.clone()), Some(Counter::Etcd(http)))
    });
    network("zk", "KVSTORE_ZK_URL", &|url| {
        let hosts = host_port(url, "zk://");
        (Raw::Zk(hosts.clone()), Some(Counter::Zk(hosts)))
    });
    network("consul", "KVSTORE_CONSUL_URL", &|url| {
        let http = format!("http://{}", host_port(url, "consul://"));
        (Raw::Consul(http.clone()), Some(Counter::Consul(http)))
    });
    // No request counter: PostgreSQL's statistics views are flushed by each backend process
    // at most once a second, so a cell's count would not be exact.
    network("postgres", "KVSTORE_POSTGRES_URL", &|url| {
        (Raw::Postgres(url.to_owned()), None)
    });
    Ok((found, skipped))
}

async fn prepare_raw(raw: &Raw, op: Op, workers: usize, dir: &str) -> anyhow::Result<Option<OpFn>> {
    match raw {
        Raw::Redb(db) => raw::redb(db.clone(), op, workers, dir).await,
        Raw::Redis(url) => raw::redis(url, op, workers, dir).await,
        Raw::Etcd(endpoint) => raw::etcd(endpoint, op, workers, dir).await,
        Raw::Zk(hosts) => raw::zk(hosts, op, workers, dir).await,
        Raw::Consul(base) => raw::consul(base, op, workers, dir).await,
        Raw::Postgres(url) => raw::postgres(url, op, workers, dir).await,
    }
}

fn side(batches: &[Batch], round_trips: Option<f64>) -> Side {
    let pick = |f: fn(&Batch) -> f64| median(&batches.iter().map(f).collect::<Vec<_>>());
    let cpu: Vec<f64> = batches.iter().filter_map(|b| b.cpu_us).collect();
    let merged = batches.iter().try_fold(measure::histogram(), |mut all, b| {
        all.add(b.latencies.as_ref()?).ok()?;
        Some(all)
    });
    let at = |q| merged.as_ref().map(|h| h.value_at_quantile(q) as f64);
    Side {
        ops_per_sec: pick(|b| b.ops_per_sec),
        p50_us: at(0.50).unwrap_or_else(|| pick(|b| b.p50_us)),
        p99_us: at(0.99).unwrap_or_else(|| pick(|b| b.p99_us)),
        p999_us: at(0.999),
        round_trips,
        cpu_us: (!cpu.is_empty()).then(|| median(&cpu)),
        heap_peak_mib: None,
    }
}

/// Every allocation is counted, so a call's peak heap can be read (`heap_peak_mib`).
#[global_allocator]
static HEAP: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// The peak heap one call of `op_fn` allocates above what is in use before it, in MiB.
async fn heap_peak_mib(op_fn: &OpFn) -> anyhow::Result<f64> {
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    op_fn(0, 0).await?;
    Ok(HEAP.peak_usage().saturating_sub(before) as f64 / (1024.0 * 1024.0))
}

/// Measures one operation at one concurrency on one backend.
async fn measure(
    args: &Args,
    backend: &Backend,
    store: &Arc<dyn Store>,
    op: Op,
    concurrency: usize,
    progress: &ProgressBar,
    go_slot: &mut Option<valkeyrie::Valkeyrie>,
) -> anyhow::Result<Option<Record>> {
    let dir = format!(
        "kvstore-bench/{}-{op:?}-c{concurrency}-{:08x}",
        backend.name,
        rand::random::<u32>()
    );
    let Some(kv_op) = kv::prepare(store.clone(), op, concurrency, &dir).await? else {
        return Ok(None);
    };
    let raw_op = prepare_raw(&backend.raw, op, concurrency, &dir).await?;
    // valkeyrie failing a cell (a list of 100,000 keys slower than its driver's deadline) is
    // reported with the cell, and its process is dropped (its answers may be out of step); a
    // new one runs the next cell. kvstore and the raw client are still measured.
    let mut valkeyrie_error = None;
    let go_failed = |err: anyhow::Error, slot: &mut Option<valkeyrie::Valkeyrie>| {
        progress.println(format!(
            "{} {} c={concurrency}: valkeyrie failed: {err:#}",
            backend.name,
            op.name()
        ));
        *slot = None;
        Some(format!("{err:#}"))
    };
    let mut valkeyrie = false;
    if let Some(go) = go_slot.as_mut() {
        let warmup = std::time::Duration::from_millis(args.batch_ms / 4);
        let ready = async {
            let prepared = go
                .prepare(op, concurrency, &format!("{dir}-valkeyrie"))
                .await?;
            if prepared {
                go.run(warmup).await?;
            }
            anyhow::Ok(prepared)
        };
        match ready.await {
            Ok(prepared) => valkeyrie = prepared,
            Err(err) => valkeyrie_error = go_failed(err, go_slot),
        }
    }
    let batch = std::time::Duration::from_millis(args.batch_ms);
    // Warm up both (connections, caches, JIT on the server side).
    let warmup = batch / 4;
    measure::run(&kv_op, warmup, concurrency).await?;
    if let Some(raw_op) = &raw_op {
        measure::run(raw_op, warmup, concurrency).await?;
    }
    let (mut kv_batches, mut raw_batches, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut go_batches, mut go_ratios) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        progress.set_message(format!(
            "{} {} c={concurrency} round {}",
            backend.name,
            op.name(),
            round + 1
        ));
        // Each side goes first, second and third in turn, so drift in the machine's load hits
        // them alike.
        let (mut kv_batch, mut raw_batch, mut go_batch) = (None, None, None);
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => kv_batch = Some(measure::run(&kv_op, batch, concurrency).await?),
                1 => {
                    if let Some(raw_op) = &raw_op {
                        raw_batch = Some(measure::run(raw_op, batch, concurrency).await?);
                    }
                }
                _ => {
                    if let Some(go) = go_slot.as_mut().filter(|_| valkeyrie) {
                        match go.run(batch).await {
                            Ok(b) => go_batch = Some(b),
                            Err(err) => {
                                valkeyrie_error = go_failed(err, go_slot);
                                valkeyrie = false;
                                go_batches.clear();
                                go_ratios.clear();
                            }
                        }
                    }
                }
            }
        }
        let kv_batch = kv_batch.context("kvstore batch")?;
        if let Some(go_batch) = go_batch {
            go_ratios.push(kv_batch.ops_per_sec / go_batch.ops_per_sec);
            go_batches.push(go_batch);
        }
        if let Some(raw_batch) = raw_batch {
            ratios.push(kv_batch.ops_per_sec / raw_batch.ops_per_sec);
            raw_batches.push(raw_batch);
        }
        kv_batches.push(kv_batch);
        progress.inc(1);
    }
    let mut open_loop = Vec::new();
    if args.open_loop && !matches!(op, Op::Watch | Op::Lock | Op::LockPerCall) {
        let median_rate =
            |batches: &[Batch]| median(&batches.iter().map(|b| b.ops_per_sec).collect::<Vec<_>>());
        let mut sides = vec![("kvstore", &kv_op, median_rate(&kv_batches))];
        if let Some(raw_op) = &raw_op {
            sides.push(("raw", raw_op, median_rate(&raw_batches)));
        }
        for load in OPEN_LOOP_LOADS {
            for (side, op_fn, peak) in &sides {
                progress.set_message(format!(
                    "{} {} c={concurrency} open loop {side} at {:.0} %",
                    backend.name,
                    op.name(),
                    load * 100.0
                ));
                let offered = peak * load;
                let (latencies, completed) =
                    measure::run_open(op_fn, offered, batch, concurrency, OPEN_LOOP_IN_FLIGHT)
                        .await?;
                open_loop.push(OpenLoop {
                    side,
                    load,
                    offered_per_sec: offered,
                    completed_per_sec: completed,
                    p50_us: latencies.value_at_quantile(0.50) as f64,
                    p99_us: latencies.value_at_quantile(0.99) as f64,
                    p999_us: latencies.value_at_quantile(0.999) as f64,
                });
            }
        }
    }
    let (mut kv_heap, mut raw_heap) = (None, None);
    if op.list_keys() >= 10_000 {
        kv_heap = Some(heap_peak_mib(&kv_op).await?);
        if let Some(raw_op) = &raw_op {
            raw_heap = Some(heap_peak_mib(raw_op).await?);
        }
    }
    let (mut kv_rt, mut raw_rt, mut go_rt) = (None, None, None);
    if let Some(counter) = &backend.counter {
        // At concurrency 32 too: calls may share requests there (ZooKeeper's `sync`s). Lists
        // of large directories count 2 calls (valkeyrie's Redis `List` of 100,000 keys takes
        // half a minute).
        let per_worker = if op.list_keys() >= 10_000 {
            2
        } else {
            args.counted_calls
        };
        let n = per_worker * concurrency;
        kv_rt = Some(
            counters::per_op(counter, n, || measure::run_count(&kv_op, n, concurrency)).await?,
        );
        if let Some(raw_op) = &raw_op {
            raw_rt = Some(
                counters::per_op(counter, n, || measure::run_count(raw_op, n, concurrency)).await?,
            );
        }
        if let Some(go) = go_slot.as_mut().filter(|_| valkeyrie) {
            go_rt = Some(counters::per_op(counter, n, || go.calls(n)).await?);
        }
    }
    // Every side's keys go after each cell, so no cell runs over an earlier one's keys (a
    // SCAN-based list slows with every key left behind).
    let go_dir = format!("{dir}-valkeyrie");
    match (go_slot.as_mut(), &backend.raw) {
        // valkeyrie's ZooKeeper `DeleteTree` refuses a znode with grandchildren ("node has
        // children"); its keys are plain znodes, which the raw cleanup deletes.
        (_, Raw::Zk(hosts)) if valkeyrie || valkeyrie_error.is_some() => {
            raw::cleanup::zk(hosts, &go_dir).await?;
        }
        (Some(go), _) if valkeyrie => go.cleanup(&go_dir).await?,
        // A failed valkeyrie's keys are plain keys on the server.
        (_, raw) if valkeyrie_error.is_some() => raw.cleanup_exact(&go_dir).await?,
        _ => {}
    }
    backend.raw.cleanup(&dir).await?;
    let _ = store.delete_tree(&dir).await;
    let ratio = measure::ratio_ci(&ratios);
    Ok(Some(Record {
        backend: backend.name,
        op,
        concurrency,
        kvstore: Side {
            heap_peak_mib: kv_heap,
            ..side(&kv_batches, kv_rt)
        },
        raw: (!raw_batches.is_empty()).then(|| Side {
            heap_peak_mib: raw_heap,
            ..side(&raw_batches, raw_rt)
        }),
        ratio,
        valkeyrie: (!go_batches.is_empty()).then(|| side(&go_batches, go_rt)),
        vs_valkeyrie: measure::ratio_ci(&go_ratios),
        open_loop,
        valkeyrie_error,
    }))
}

/// A ratio with its 95 % confidence interval, `0.95 (0.90–1.02)`, or `—`.
fn spread_text(ratio: Option<[f64; 3]>) -> String {
    ratio.map_or("—".into(), |[m, lo, hi]| {
        format!("{m:.2} ({lo:.2}–{hi:.2})")
    })
}

/// `p50 / p99 / p99.9` in microseconds (`p50 / p99` where p99.9 is unknown).
fn latency_text(side: &Side) -> String {
    match side.p999_us {
        Some(p999) => format!("{:.0} / {:.0} / {p999:.0}", side.p50_us, side.p99_us),
        None => format!("{:.0} / {:.0}", side.p50_us, side.p99_us),
    }
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("| backend | operation | conc. | kvstore ops/s | raw ops/s | kvstore/raw (95 % CI) | kvstore p50 / p99 / p99.9 µs | raw p50 / p99 / p99.9 µs | requests per call kvstore / raw | client CPU µs per call kvstore / raw |\n");
    out.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |\n");
    let rt = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2}"));
    let cpu = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1}"));
    for r in &report.records {
        let raw = r.raw.as_ref();
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} / {} | {} / {} |\n",
            r.backend,
            r.op.name(),
            r.concurrency,
            r.kvstore.ops_per_sec,
            raw.map_or("—".into(), |s| format!("{:.0}", s.ops_per_sec)),
            spread_text(r.ratio),
            latency_text(&r.kvstore),
            raw.map_or("—".into(), latency_text),
            rt(r.kvstore.round_trips),
            rt(raw.and_then(|s| s.round_trips)),
            cpu(r.kvstore.cpu_us),
            cpu(raw.and_then(|s| s.cpu_us)),
        ));
    }
    for (name, why) in &report.skipped {
        out.push_str(&format!("\nSkipped {name}: {why}\n"));
    }
    let large: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.kvstore.heap_peak_mib.is_some())
        .collect();
    if !large.is_empty() {
        out.push_str("\nLarge directories: one `list` at a time; heap is the most one call allocated above what was in use before it.\n\n");
        out.push_str("| backend | keys | kvstore ms per list | raw ms per list | kvstore heap MiB | raw heap MiB | valkeyrie ms per list |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
        let ms = |s: &Side| format!("{:.1}", 1000.0 / s.ops_per_sec);
        let mib = |s: Option<&Side>| {
            s.and_then(|s| s.heap_peak_mib)
                .map_or("—".into(), |m| format!("{m:.1}"))
        };
        for r in large {
            let go = match (&r.valkeyrie, &r.valkeyrie_error) {
                (Some(go), _) => ms(go),
                (None, Some(err)) => format!("failed: {err}"),
                (None, None) => "—".into(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.backend,
                r.op.list_keys(),
                ms(&r.kvstore),
                r.raw.as_ref().map_or("—".into(), ms),
                mib(Some(&r.kvstore)),
                mib(r.raw.as_ref()),
                go,
            ));
        }
    }
    let compared: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.valkeyrie.is_some())
        .collect();
    if !compared.is_empty() {
        out.push_str("\n| backend | operation | conc. | kvstore ops/s | valkeyrie ops/s | kvstore/valkeyrie (95 % CI) | kvstore p50 / p99 / p99.9 µs | valkeyrie p50 / p99 µs | requests per call kvstore / valkeyrie | client CPU µs per call kvstore / valkeyrie |\n");
        out.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |\n");
        for r in compared {
            let go = r.valkeyrie.as_ref().expect("filtered");
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {} / {} |\n",
                r.backend,
                r.op.name(),
                r.concurrency,
                r.kvstore.ops_per_sec,
                go.ops_per_sec,
                spread_text(r.vs_valkeyrie),
                latency_text(&r.kvstore),
                latency_text(go),
                rt(r.kvstore.round_trips),
                rt(go.round_trips),
                cpu(r.kvstore.cpu_us),
                cpu(go.cpu_us),
            ));
        }
    }
    let open: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| !r.open_loop.is_empty())
        .collect();
    if !open.is_empty() {
        out.push_str("\nOpen loop: calls started on a fixed schedule at a fraction of the side's own closed-loop throughput, each timed from when the generator reached it (its schedule, or the timer tick just after).\n\n");
        out.push_str("| backend | operation | conc. | side | load | offered / completed per s | p50 / p99 / p99.9 µs |\n");
        out.push_str("| --- | --- | ---: | --- | ---: | ---: | ---: |\n");
        for r in open {
            for o in &r.open_loop {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {:.0} % | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |\n",
                    r.backend,
                    r.op.name(),
                    r.concurrency,
                    o.side,
                    o.load * 100.0,
                    o.offered_per_sec,
                    o.completed_per_sec,
                    o.p50_us,
                    o.p99_us,
                    o.p999_us,
                ));
            }
        }
    }
    out
}

/// The valkeyrie backend and address for one of kvstore-bench's backends (`None` for the
/// memory store, which valkeyrie lacks).
fn valkeyrie_target(backend: &Backend, tmp: &std::path::Path) -> Option<(&'static str, String)> {
    let host = |scheme| host_port(&backend.url, scheme);
    match backend.name {
        "redb" => Some(("boltdb", tmp.join("valkeyrie.bolt").display().to_string())),
        "redis" => Some(("redis", host("redis://"))),
        "etcd" => Some(("etcd", host("etcd://"))),
        "zk" => Some(("zk", host("zk://"))),
        "consul" => Some(("consul", host("consul://"))),
        _ => None,
    }
}

/// Runs `run` on a store of each backend in turn, then prints the records' Markdown table and
/// writes it and the JSON where `--markdown` and `--json` say.
async fn each_backend<R, F, Fut>(
    args: &Args,
    backends: &[Backend],
    markdown: fn(&[R]) -> String,
    mut run: F,
) -> anyhow::Result<Vec<R>>
where
    R: Serialize,
    F: FnMut(&Backend, Arc<dyn Store>) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut records = Vec::new();
    for backend in backends {
        let shown = kvstore::backend::redact_url(&backend.url);
        let store = kvstore::open(&backend.url)
            .await
            .with_context(|| format!("opening {shown}"))?;
        records.push(
            run(backend, store.clone())
                .await
                .with_context(|| format!("{} on {shown}", backend.name))?,
        );
        store.close().await?;
    }
    emit(args, &markdown(&records), &records)?;
    Ok(records)
}

/// Prints `table`, and writes it and `records` as JSON where `--markdown` and `--json` say.
fn emit<R: Serialize>(args: &Args, table: &str, records: &[R]) -> anyhow::Result<()> {
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, table)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(records)?)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.layers {
        let records =
            layers::run(args.rounds, std::time::Duration::from_millis(args.batch_ms)).await?;
        return emit(&args, &layers::markdown(&records), &records);
    }
    let tmp = tempfile::tempdir()?;
    let (backends, skipped) = backends(&args.backends, args.redb_options.as_deref(), tmp.path())?;
    if let Some(duration) = args.soak {
        let plan = soak::Plan {
            duration,
            watchers: args.soak_watchers,
            registrations: args.soak_registrations,
            sample: args.soak_sample,
            settle: args.soak_settle,
        };
        let records = each_backend(&args, &backends, soak::markdown, |backend, store| {
            let name = backend.name;
            let file = (name == "redb").then(|| tmp.path().join(REDB_FILE));
            let plan = &plan;
            async move { soak::run(name, store, file.as_deref(), plan).await }
        })
        .await?;
        let failures: Vec<String> = records.iter().flat_map(soak::failures).collect();
        if !failures.is_empty() {
            anyhow::bail!("the soak failed: {}", failures.join("; "));
        }
        return Ok(());
    }
    if !args.events.is_empty() {
        let plan = events::Plan {
            sizes: args.events.clone(),
            rate: args.events_rate,
            duration: args.events_duration,
        };
        return each_backend(&args, &backends, events::markdown, |backend, store| {
            let (name, url, counter) = (backend.name, backend.url.clone(), backend.counter.clone());
            let plan = &plan;
            async move { events::run(name, &url, store, counter.as_ref(), plan).await }
        })
        .await
        .map(drop);
    }
    if let Some(n) = args.watchers {
        return each_backend(&args, &backends, watchers::markdown, |backend, store| {
            let (name, url) = (backend.name, backend.url.clone());
            eprintln!("{name}: {n} watchers");
            async move { watchers::run(name, &url, store, n).await }
        })
        .await
        .map(drop);
    }
    let ops: Vec<Op> = if args.operations.is_empty() {
        vec![
            Op::Get,
            Op::GetStale,
            Op::Put,
            Op::AtomicPut,
            Op::List,
            Op::List10k,
            Op::List100k,
            Op::Watch,
            Op::Lock,
            Op::LockPerCall,
            Op::Txn2,
            Op::Txn8,
        ]
    } else {
        args.operations.clone()
    };
    let steps = backends.len()
        * ops
            .iter()
            .map(|o| if o.single_worker() { 1 } else { 2 })
            .sum::<usize>()
        * args.rounds;
    let progress = ProgressBar::new(steps as u64);
    progress.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
    )?);
    let mut report = Report {
        rounds: args.rounds,
        batch_ms: args.batch_ms,
        records: Vec::new(),
        skipped,
    };
    for backend in &backends {
        let store = match kvstore::open(&backend.url).await {
            Ok(store) => store,
            Err(err) => {
                report.skipped.push((
                    backend.name.to_owned(),
                    format!(
                        "cannot open {}: {err}",
                        kvstore::backend::redact_url(&backend.url)
                    ),
                ));
                continue;
            }
        };
        let target = valkeyrie_target(backend, tmp.path());
        let mut go = None;
        for &op in &ops {
            let levels: &[usize] = if op.single_worker() { &[1] } else { &[1, 32] };
            for &concurrency in levels {
                let cell = format!(
                    "{} {} at concurrency {concurrency}",
                    backend.name,
                    op.name()
                );
                // (Again after a cell where it failed.)
                if go.is_none()
                    && let (Some(bin), Some((name, addr))) = (&args.valkeyrie, &target)
                {
                    go = Some(valkeyrie::Valkeyrie::start(bin, name, addr).await?);
                }
                match measure(&args, backend, &store, op, concurrency, &progress, &mut go).await {
                    Ok(record) => report.records.extend(record),
                    // One failed cell (a server's rate limit, a timeout) is reported, and the
                    // run goes on: its other cells stay measured.
                    Err(err) => {
                        progress.println(format!("{cell} failed: {err:#}"));
                        report.skipped.push((cell, format!("failed: {err:#}")));
                    }
                }
            }
        }
        store.close().await?;
    }
    progress.finish_and_clear();
    let table = markdown(&report);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
