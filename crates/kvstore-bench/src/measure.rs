//! Running a batch of operations and summarizing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;

/// One operation: `(worker, iteration)` → `Some(latency)` when the operation measures its own
/// latency (watch delivery), `None` when the call's duration is the latency.
pub(crate) type OpFn =
    Arc<dyn Fn(usize, usize) -> BoxFuture<'static, anyhow::Result<Option<Duration>>> + Send + Sync>;

/// The outcome of one batch.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Batch {
    /// Operations per second over the batch's wall time.
    pub(crate) ops_per_sec: f64,
    /// Median latency, microseconds.
    pub(crate) p50_us: f64,
    /// 99th-percentile latency, microseconds.
    pub(crate) p99_us: f64,
    /// CPU time of this whole process per call, microseconds (`CLOCK_PROCESS_CPUTIME_ID`:
    /// every thread, the client library's background tasks included). `None` for another
    /// process's batch (valkeyrie's).
    #[serde(default)]
    pub(crate) cpu_us: Option<f64>,
}

/// Runs the operation on `concurrency` workers for `duration` (each worker finishes the call
/// it is in), so fast and slow backends get batches of equal length.
pub(crate) async fn run(
    op: &OpFn,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<Batch> {
    let started = Instant::now();
    let cpu_started = cpu_time::ProcessTime::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let own = op(worker, i).await?;
                    latencies.push(own.unwrap_or_else(|| t0.elapsed()));
                    i += 1;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_started.elapsed();
    latencies.sort();
    Ok(Batch {
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        cpu_us: Some(cpu.as_secs_f64() * 1e6 / latencies.len().max(1) as f64),
    })
}

/// Runs exactly `ops` calls of the operation, one at a time (for counting requests).
pub(crate) async fn run_count(op: &OpFn, ops: usize, concurrency: usize) -> anyhow::Result<()> {
    // Worker `w` runs calls w, w + concurrency, …, so each worker keeps to its own keys.
    let workers = (0..concurrency).map(|w| async move {
        for i in (w..ops).step_by(concurrency) {
            op(w, i / concurrency).await?;
        }
        anyhow::Ok(())
    });
    for result in futures::future::join_all(workers).await {
        result?;
    }
    Ok(())
}

/// The `q` quantile of sorted latencies, in microseconds (nearest rank).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

/// Median of values (not empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&lat, 0.5), 50.0);
        assert_eq!(percentile(&lat, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
