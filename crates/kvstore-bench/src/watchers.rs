//! `--watchers N`: N watchers on distinct keys under 10 directories of one store. Measures the
//! time to open them all, the delivery latency of one write to each key (p50/p99, from the
//! write's start to the watch's new state) beside the writes' own latency (a delivery cannot
//! come before its write is committed, so the write's p99 is the floor of the delivery's), the
//! process's RSS, its TCP connections to the server, and the watches the server counts where
//! it can (ZooKeeper `mntr` → `zk_watch_count`, etcd `/metrics` →
//! `etcd_debugging_mvcc_watcher_total`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::future::join_all;
use kvstore::Store;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::measure::percentile;

/// Writes in flight at once while delivering.
const WRITERS: usize = 32;

/// One backend's figures.
#[derive(Debug, Serialize)]
pub(crate) struct WatcherRecord {
    pub(crate) backend: &'static str,
    pub(crate) watchers: usize,
    pub(crate) open_secs: f64,
    pub(crate) delivered: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The writes' own latency, p50 and p99, in ms.
    pub(crate) write_p50_ms: f64,
    pub(crate) write_p99_ms: f64,
    pub(crate) rss_mib: f64,
    pub(crate) connections: Option<usize>,
    pub(crate) server_watches: Option<f64>,
}

/// The process's resident set, in MiB.
pub(crate) fn rss_mib() -> f64 {
    status_field("VmRSS:").map_or(0.0, |kb| kb / 1024.0)
}

/// Threads of this process (`Threads` in /proc/self/status).
pub(crate) fn threads() -> usize {
    status_field("Threads:").map_or(0, |n| n as usize)
}

/// A numeric field of /proc/self/status (`VmRSS:` is in kB).
fn status_field(name: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
}

/// Established TCP connections of this process to 127.0.0.1:`port` (from /proc/self/net/tcp).
fn connections_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/self/net/tcp") else {
        return 0;
    };
    // Sockets of this process: the inodes behind /proc/self/fd.
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

/// The server's own count of watches, where it has one.
async fn server_watches(backend: &str, url: &str) -> Option<f64> {
    let host_port = url.split("://").nth(1)?.trim_end_matches('/').to_owned();
    match backend {
        "zk" => {
            let mut stream = tokio::net::TcpStream::connect(&host_port).await.ok()?;
            stream.write_all(b"mntr").await.ok()?;
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
                .await
                .ok()?
                .ok()?;
            out.lines()
                .find_map(|l| l.strip_prefix("zk_watch_count\t"))?
                .trim()
                .parse()
                .ok()
        }
        "etcd" => {
            let text = reqwest::get(format!("http://{host_port}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))?
                .trim()
                .parse()
                .ok()
        }
        _ => None,
    }
}

/// Runs the watcher benchmark on one store.
pub(crate) async fn run(
    backend: &'static str,
    url: &str,
    store: Arc<dyn Store>,
    n: usize,
) -> anyhow::Result<WatcherRecord> {
    let dir = format!("kvstore-bench/watchers-{:08x}", rand::random::<u32>());
    let keys: Vec<String> = (0..n)
        .map(|i| format!("{dir}/d{}/k{i:05}", i % 10))
        .collect();
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    let started = Instant::now();
    let mut watches = Vec::with_capacity(n);
    for chunk in keys.chunks(WRITERS) {
        let opened = join_all(chunk.iter().map(|k| store.watch(k, None))).await;
        for watch in opened {
            let mut watch = watch.context("watch")?;
            watch.next().await.context("first state")??;
            watches.push(watch);
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let connections = port.map(connections_to);
    let watches_on_server = server_watches(backend, url).await;
    // Each watch's delivery of its key's write: a task per watch waits for it.
    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..n).map(|_| std::sync::OnceLock::new()).collect());
    let mut waiters = tokio::task::JoinSet::new();
    for (i, mut watch) in watches.into_iter().enumerate() {
        let sent = sent.clone();
        waiters.spawn(async move {
            let seen = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(Ok(state)) = watch.next().await {
                    if state.is_some() {
                        return Some(Instant::now());
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()?;
            Some(seen.duration_since(*sent[i].get()?))
        });
    }
    let writes = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, key)| {
            let (store, sent) = (store.clone(), sent.clone());
            async move {
                let start = Instant::now();
                let _ = sent[i].set(start);
                let written = store.put(key, b"v", None).await;
                (written, start.elapsed())
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<_>>()
        .await;
    let mut write_latencies = Vec::with_capacity(n);
    for (written, took) in writes {
        written.context("put")?;
        write_latencies.push(took);
    }
    write_latencies.sort();
    let mut latencies = Vec::with_capacity(n);
    while let Some(joined) = waiters.join_next().await {
        if let Some(latency) = joined? {
            latencies.push(latency);
        }
    }
    latencies.sort();
    let rss = rss_mib();
    let _ = store.delete_tree(&dir).await;
    Ok(WatcherRecord {
        backend,
        watchers: n,
        open_secs,
        delivered: latencies.len(),
        p50_ms: percentile(&latencies, 0.50) / 1000.0,
        p99_ms: percentile(&latencies, 0.99) / 1000.0,
        write_p50_ms: percentile(&write_latencies, 0.50) / 1000.0,
        write_p99_ms: percentile(&write_latencies, 0.99) / 1000.0,
        rss_mib: rss,
        connections,
        server_watches: watches_on_server,
    })
}

/// The results as a Markdown table.
pub(crate) fn markdown(records: &[WatcherRecord]) -> String {
    let mut out = String::from(
        "| backend | watchers | time to open | delivered | delivery p50 / p99 | the writes' own p50 / p99 | client RSS | TCP connections to the server | server-side watches |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in records {
        out.push_str(&format!(
            "| {} | {} | {:.2} s | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.0} MiB | {} | {} |\n",
            r.backend,
            r.watchers,
            r.open_secs,
            r.delivered,
            r.p50_ms,
            r.p99_ms,
            r.write_p50_ms,
            r.write_p99_ms,
            r.rss_mib,
            r.connections.map_or("—".into(), |c| c.to_string()),
            r.server_watches.map_or("—".into(), |w| format!("{w:.0}")),
        ));
    }
    out
}
