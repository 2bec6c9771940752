//! `--layers`: the hidden per-call cost of each layer of `kvstore::layer`, on the in-memory
//! store (no network to hide it): the same workload through the bare store and through the
//! store wrapped in one layer (or all of them stacked), interleaved over the rounds, one
//! worker.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use kvstore::Store;
use kvstore::layer::{
    ConcurrencyLimitLayer, MetricsLayer, PrefixLayer, RetryLayer, StoreExt, TimeoutLayer,
    TracingLayer,
};
use serde::Serialize;

use crate::measure::{self, median};
use crate::{Op, kv};

/// The layers measured, by name.
const VARIANTS: [&str; 8] = [
    "prefix", "timeout", "limit", "retry", "tracing", "metrics", "stacked", "none",
];

/// The operations measured (the rest wait on something other than the call's own path).
const OPS: [Op; 5] = [Op::Get, Op::Put, Op::AtomicPut, Op::List, Op::Txn2];

fn wrap(variant: &str, store: Arc<dyn Store>) -> anyhow::Result<Arc<dyn Store>> {
    let limit = || ConcurrencyLimitLayer::new(NonZeroUsize::new(64).expect("64"));
    Ok(match variant {
        "prefix" => store.layer(PrefixLayer::new("layered")?),
        "timeout" => store.layer(TimeoutLayer::new(Duration::from_secs(10))),
        "limit" => store.layer(limit()),
        "retry" => store.layer(RetryLayer::new()),
        "tracing" => store.layer(TracingLayer::new()),
        "metrics" => store.layer(MetricsLayer::new()),
        "stacked" => store
            .layer(PrefixLayer::new("layered")?)
            .layer(TimeoutLayer::new(Duration::from_secs(10)))
            .layer(RetryLayer::new())
            .layer(limit())
            .layer(MetricsLayer::new())
            .layer(TracingLayer::new()),
        // The bare store against itself: the noise floor of this measurement.
        _ => store,
    })
}

/// One layer on one operation.
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    layer: &'static str,
    op: Op,
    /// Median over the rounds of the bare store's median latency, microseconds.
    bare_p50_us: f64,
    /// The same through the layer.
    layered_p50_us: f64,
    /// Median over the rounds of layered / bare throughput.
    ratio: f64,
}

/// Measures every layer on every operation.
pub(crate) async fn run(rounds: usize, batch: Duration) -> anyhow::Result<Vec<Record>> {
    // A real recorder, so the metrics layer's cost includes recording (not the facade's no-op).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder)?;
    let mut records = Vec::new();
    for layer in VARIANTS {
        for op in OPS {
            let base: Arc<dyn Store> = Arc::new(
                kvstore::redb::RedbStore::open(kvstore::redb::RedbConfig::memory()).await?,
            );
            let layered = wrap(layer, base.clone())?;
            let bare_op = kv::prepare(base.clone(), op, 1, "bench/bare").await?;
            let layered_op = kv::prepare(layered, op, 1, "bench/layered").await?;
            let (Some(bare_op), Some(layered_op)) = (bare_op, layered_op) else {
                continue;
            };
            let (mut bare, mut through, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let b = measure::run(&bare_op, batch, 1).await?;
                let l = measure::run(&layered_op, batch, 1).await?;
                bare.push(b.p50_us);
                through.push(l.p50_us);
                ratios.push(l.ops_per_sec / b.ops_per_sec);
            }
            eprintln!("{layer} {op:?}: done");
            records.push(Record {
                layer,
                op,
                bare_p50_us: median(&bare),
                layered_p50_us: median(&through),
                ratio: median(&ratios),
            });
            base.close().await?;
        }
    }
    Ok(records)
}

/// The records as a Markdown table.
pub(crate) fn markdown(records: &[Record]) -> String {
    let mut out = String::from(
        "| layer | operation | bare p50 (µs) | layered p50 (µs) | added p50 (µs) | throughput layered/bare |\n\
         | --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in records {
        out.push_str(&format!(
            "| {} | {:?} | {:.1} | {:.1} | {:+.1} | {:.2} |\n",
            r.layer,
            r.op,
            r.bare_p50_us,
            r.layered_p50_us,
            r.layered_p50_us - r.bare_p50_us,
            r.ratio
        ));
    }
    out
}
