//! `--events`: a Traefik-shaped load — a directory of N keys, a writer changing one key at a
//! time at a fixed rate — consumed four ways: `watch_tree` (the whole listing per change),
//! `watch_tree` plus a `list` per item (what Traefik's KV provider does), `watch_events`, and a
//! `Cache` (its `events()`). Per change delivered: the consumer's CPU time and bytes read from
//! its sockets, the requests the server counted (writer included), and the delivery latency
//! from the writer's send to the consumer's sight.
//!
//! The consumer runs on a thread of its own with a single-threaded runtime, on a store it
//! opens there, so its thread's CPU time (`cpu_time::ThreadTime`) is the consumer's alone; the
//! bytes are what the kernel received on the sockets that store opened (`ss -tie`,
//! `bytes_received`). The in-memory store has no
//! sockets and shares the writer's store; its reads of more than 1,024 keys run on the store's
//! own threads, which its CPU figure leaves out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kvstore::{Cache, KvPair, Store, WatchEvent};
use serde::Serialize;

use crate::counters::Counter;
use crate::measure::percentile;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Directory sizes, in keys.
    pub(crate) sizes: Vec<usize>,
    /// Changes per second.
    pub(crate) rate: u32,
    /// How long the writer writes, per size and consumer.
    pub(crate) duration: Duration,
}

/// How the directory is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    WatchTree,
    WatchTreeAndList,
    WatchEvents,
    Cache,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::WatchTree => "watch_tree",
            Mode::WatchTreeAndList => "watch_tree + list",
            Mode::WatchEvents => "watch_events",
            Mode::Cache => "Cache",
        }
    }
}

/// One backend, size and mode.
#[derive(Debug, Serialize)]
pub(crate) struct EventsRecord {
    pub(crate) backend: &'static str,
    pub(crate) keys: usize,
    pub(crate) mode: Mode,
    pub(crate) written: usize,
    pub(crate) seen: usize,
    pub(crate) cpu_us_per_change: f64,
    pub(crate) bytes_per_change: f64,
    pub(crate) requests_per_change: Option<f64>,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Runs every size and mode on one backend.
pub(crate) async fn run(
    name: &'static str,
    url: &str,
    store: Arc<dyn Store>,
    counter: Option<&Counter>,
    plan: &Plan,
) -> anyhow::Result<Vec<EventsRecord>> {
    let mut records = Vec::new();
    for &keys in &plan.sizes {
        let dir = format!("kvstore-bench/events-{keys}-{:08x}", rand::random::<u32>());
        populate(&*store, &dir, keys).await?;
        for mode in [
            Mode::WatchTree,
            Mode::WatchTreeAndList,
            Mode::WatchEvents,
            Mode::Cache,
        ] {
            eprintln!("{name}: {keys} keys, {}", mode.name());
            let record = measure(name, url, &store, counter, &dir, keys, mode, plan).await?;
            records.push(record);
        }
        store.delete_tree(&dir).await?;
    }
    Ok(records)
}

/// Writes `keys` keys under `dir`, 32 at a time.
async fn populate(store: &dyn Store, dir: &str, keys: usize) -> anyhow::Result<()> {
    stream::iter(0..keys)
        .map(|i| async move {
            store
                .put(&format!("{dir}/router{i:05}"), b"0", None)
                .await
                .map(drop)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<kvstore::Result<()>>()?;
    Ok(())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The delivery latency of a value the writer stamped.
fn latency(value: &[u8]) -> Option<Duration> {
    let sent: u128 = std::str::from_utf8(value).ok()?.parse().ok()?;
    let nanos = u64::try_from(now_nanos().saturating_sub(sent)).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(nanos))
}

/// The inodes of this process's sockets (from /proc/self/fd).
fn socket_inodes() -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let name = target.to_str()?;
        name.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// Bytes the kernel received on the TCP sockets `inodes` (`ss -tie`: `bytes_received`).
fn bytes_received(inodes: &HashSet<u64>) -> u64 {
    if inodes.is_empty() {
        return 0;
    }
    let Ok(out) = std::process::Command::new("ss").arg("-tine").output() else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut current = None;
    for line in text.lines() {
        if let Some(ino) = line.split_whitespace().find_map(|w| w.strip_prefix("ino:")) {
            current = ino.parse::<u64>().ok().filter(|i| inodes.contains(i));
        }
        if current.is_some()
            && let Some(n) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes_received:"))
        {
            total += n.parse::<u64>().unwrap_or(0);
            current = None;
        }
    }
    total
}

/// What the consumer thread measured.
struct Consumed {
    latencies: Vec<Duration>,
    cpu: Duration,
    bytes: u64,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    name: &'static str,
    url: &str,
    store: &Arc<dyn Store>,
    counter: Option<&Counter>,
    dir: &str,
    keys: usize,
    mode: Mode,
    plan: &Plan,
) -> anyhow::Result<EventsRecord> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // The in-memory store is per process: the consumer shares the writer's.
    let shared = (name == "memory").then(|| store.clone());
    let consumer = {
        let (url, dir, stop) = (url.to_owned(), dir.to_owned(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<Consumed> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(consume(url, shared, dir, mode, stop, ready_tx))
        })
    };
    ready_rx.await.context("the consumer did not start")?;
    let before = match counter {
        Some(c) => Some(c.read().await?),
        None => None,
    };
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < plan.duration {
        tick.tick().await;
        let key = format!("{dir}/router{:05}", rand::random_range(0..keys));
        store
            .put(&key, now_nanos().to_string().as_bytes(), None)
            .await?;
        written += 1;
    }
    let requests = match (counter, before) {
        (Some(c), Some(before)) => Some((c.read().await? - before) / written as f64),
        _ => None,
    };
    // Let the consumer catch up (bounded), then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let consumed = tokio::task::spawn_blocking(move || consumer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let seen = consumed.latencies.len().max(1);
    let mut latencies = consumed.latencies;
    latencies.sort();
    Ok(EventsRecord {
        backend: name,
        keys,
        mode,
        written,
        seen: latencies.len(),
        cpu_us_per_change: consumed.cpu.as_secs_f64() * 1e6 / seen as f64,
        bytes_per_change: consumed.bytes as f64 / seen as f64,
        requests_per_change: requests,
        p50_ms: percentile(&latencies, 0.50) / 1e3,
        p99_ms: percentile(&latencies, 0.99) / 1e3,
    })
}

/// The consumer: sets up its stream (not measured), says it is ready, then measures itself
/// until `stop`.
async fn consume(
    url: String,
    shared: Option<Arc<dyn Store>>,
    dir: String,
    mode: Mode,
    stop: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Consumed> {
    let sockets_before = socket_inodes();
    let store = match shared {
        Some(store) => store,
        None => kvstore::open(&url).await?,
    };
    let mut latencies = Vec::new();
    let mut last: Vec<KvPair> = Vec::new();
    // Per mode: a stream of listings, or of event items.
    let mut listings: Option<BoxStream<'static, kvstore::Result<Vec<KvPair>>>> = None;
    let mut items: Option<kvstore::EventStream> = None;
    let mut _cache = None;
    match mode {
        Mode::WatchTree | Mode::WatchTreeAndList => {
            let mut s = store.watch_tree(&dir, None).await?;
            last = s.next().await.context("no first listing")??;
            listings = Some(s);
        }
        Mode::WatchEvents => {
            let mut s = store.watch_events(&dir, None).await?;
            s.next().await.context("no Snapshot")??;
            items = Some(s);
        }
        Mode::Cache => {
            let cache = Cache::new(store.clone(), &dir).await?;
            let mut s = cache.events();
            s.next().await.context("no Snapshot")??;
            items = Some(s);
            _cache = Some(cache);
        }
    }
    // The sockets the consumer's store opened (none for the in-memory store).
    let mine: HashSet<u64> = socket_inodes()
        .difference(&sockets_before)
        .copied()
        .collect();
    let _ = ready.send(());
    let bytes0 = bytes_received(&mine);
    let cpu0 = cpu_time::ThreadTime::now();
    let slice = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        if let Some(s) = listings.as_mut() {
            let Ok(Some(listing)) = tokio::time::timeout(slice, s.next()).await else {
                continue;
            };
            let listing = match mode {
                // Traefik reads the whole tree again on every watch event.
                Mode::WatchTreeAndList => {
                    drop(listing?);
                    store.list(&dir, None).await?
                }
                _ => listing?,
            };
            changed(&last, &listing, &mut latencies);
            last = listing;
        } else if let Some(s) = items.as_mut() {
            let Ok(Some(item)) = tokio::time::timeout(slice, s.next()).await else {
                continue;
            };
            if let WatchEvent::Changes { events, .. } = item? {
                latencies.extend(events.iter().filter_map(|e| latency(&e.value)));
            }
        }
    }
    let cpu = cpu0.elapsed();
    let consumed = Consumed {
        latencies,
        cpu,
        bytes: bytes_received(&mine).saturating_sub(bytes0),
    };
    drop((listings, items, _cache));
    if url != "memory://" {
        store.close().await?;
    }
    Ok(consumed)
}

/// The latencies of the pairs that changed from `before` to `after` (both sorted by key).
fn changed(before: &[KvPair], after: &[KvPair], latencies: &mut Vec<Duration>) {
    let mut old = before.iter().peekable();
    for new in after {
        while old.next_if(|o| o.key < new.key).is_some() {}
        let same = old
            .next_if(|o| o.key == new.key)
            .is_some_and(|o| o.last_index == new.last_index);
        if !same && let Some(latency) = latency(&new.value) {
            latencies.push(latency);
        }
    }
}

/// The records as a Markdown table.
pub(crate) fn markdown(records: &[Vec<EventsRecord>]) -> String {
    let mut out = String::from(
        "| backend | keys | consumer | changes written / seen | client CPU per change (µs) | bytes read per change | server requests per change (writer included) | latency p50 / p99 (ms) |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in records.iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {:.1} | {:.0} | {} | {:.2} / {:.2} |\n",
            r.backend,
            r.keys,
            r.mode.name(),
            r.written,
            r.seen,
            r.cpu_us_per_change,
            r.bytes_per_change,
            r.requests_per_change
                .map_or_else(|| "—".to_owned(), |n| format!("{n:.2}")),
            r.p50_ms,
            r.p99_ms,
        ));
    }
    out
}
