//! Running a batch of operations and summarizing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
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
    /// Every call's latency (microseconds, 3 significant digits), so the rounds of a cell
    /// merge into one distribution; `None` for another process's batch (valkeyrie's), which
    /// reports only its percentiles.
    #[serde(skip)]
    pub(crate) latencies: Option<Histogram<u64>>,
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
                let mut latencies = histogram();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let own = op(worker, i).await?;
                    latencies.saturating_record(micros(own.unwrap_or_else(|| t0.elapsed())));
                    i += 1;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = histogram();
    for worker in workers {
        latencies.add(worker.await??)?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_started.elapsed();
    let calls = latencies.len();
    Ok(Batch {
        ops_per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.50) as f64,
        p99_us: latencies.value_at_quantile(0.99) as f64,
        latencies: Some(latencies),
        cpu_us: Some(cpu.as_secs_f64() * 1e6 / calls.max(1) as f64),
    })
}

/// Longest latency a histogram tells apart, microseconds (a minute); longer calls count as
/// this long.
const LONGEST_US: u64 = 60_000_000;

/// An empty latency histogram: 1 µs to [`LONGEST_US`], 3 significant digits. Every histogram
/// has the same bounds, so any two merge.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LONGEST_US, 3).expect("valid bounds and precision")
}

/// A latency in whole microseconds (at least 1, the histogram's lowest value).
fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The geometric mean of per-round ratios with its 95 % confidence interval, from Student's t
/// over their logarithms (ratios multiply, so their logarithms are what averages): `[mean,
/// low, high]`. One round gives no interval: `[r, r, r]`.
pub(crate) fn ratio_ci(ratios: &[f64]) -> Option<[f64; 3]> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len();
    if n == 0 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some([mean.exp(); 3]);
    }
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("n - 1 >= 1 degrees of freedom")
        .inverse_cdf(0.975);
    let half = t * (var / n as f64).sqrt();
    Some([mean.exp(), (mean - half).exp(), (mean + half).exp()])
}

/// Latency under a fixed offered load: calls start on a schedule of `rate` per second for
/// `duration`, whether or not earlier ones have finished (an open loop, as independent clients
/// would send them), so no slow call holds back the ones after it (no coordinated omission).
/// Each call is timed from when the generator reached it: its scheduled time, or later by the
/// timer's lateness (tokio's timer wakes at millisecond ticks, so calls due within one tick
/// start together; timing them from their exact schedule would add up to a millisecond of
/// the generator's own to every call). Call `i` runs as worker `i % workers`. At most
/// `max_in_flight` calls run at once; a call that finds no free slot waits for one, and that
/// wait counts. Returns the latencies and the rate that completed.
pub(crate) async fn run_open(
    op: &OpFn,
    rate: f64,
    duration: Duration,
    workers: usize,
    max_in_flight: usize,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let calls = (duration.as_secs_f64() * rate).max(1.0) as usize;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let started = tokio::time::Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..calls {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let reached = tokio::time::Instant::now();
        let slot = slots.clone().acquire_owned().await?;
        let op = op.clone();
        running.spawn(async move {
            let own = op(i % workers.max(1), i / workers.max(1)).await?;
            drop(slot);
            anyhow::Ok(own.unwrap_or_else(|| reached.elapsed()))
        });
    }
    let mut latencies = histogram();
    while let Some(done) = running.join_next().await {
        latencies.saturating_record(micros(done??));
    }
    let rate_done = calls as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, rate_done))
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
    fn ratio_intervals() {
        assert_eq!(ratio_ci(&[]), None);
        assert_eq!(ratio_ci(&[2.0]), Some([2.0, 2.0, 2.0]));
        // Equal ratios: no spread, the interval is the point.
        let [m, lo, hi] = ratio_ci(&[1.5; 5]).unwrap();
        assert!((m - 1.5).abs() < 1e-12 && (lo - 1.5).abs() < 1e-12 && (hi - 1.5).abs() < 1e-12);
        // 0.5 and 2.0 average to 1 in log space; t(0.975, 1 df) = 12.706 over a log-sd of
        // ln 4 / sqrt 2 and sqrt 2 samples: exp(±12.706 × ln 2).
        let [m, lo, hi] = ratio_ci(&[0.5, 2.0]).unwrap();
        assert!((m - 1.0).abs() < 1e-12);
        let half = 12.706_2_f64 * 2f64.ln();
        assert!(
            (lo.ln() + half).abs() < 1e-3 && (hi.ln() - half).abs() < 1e-3,
            "{lo} {hi}"
        );
    }

    #[test]
    fn histograms_merge() {
        let mut a = histogram();
        let mut b = histogram();
        for us in 1..=50 {
            a.record(us).unwrap();
        }
        for us in 51..=100 {
            b.record(us).unwrap();
        }
        a.add(b).unwrap();
        assert_eq!(a.len(), 100);
        // A 5 s call is kept as 5 s (within 3 significant digits), not clamped.
        let mut slow = histogram();
        slow.saturating_record(micros(Duration::from_secs(5)));
        assert!(slow.max().abs_diff(5_000_000) <= 5_000, "{}", slow.max());
        assert_eq!(a.value_at_quantile(0.5), 50);
        assert_eq!(a.value_at_quantile(0.99), 99);
    }

    #[test]
    fn percentiles_and_median() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&lat, 0.5), 50.0);
        assert_eq!(percentile(&lat, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
