//! Metrics of every store call, exported in the Prometheus text format.
//!
//! ```text
//! cargo run --example metrics --features metrics                 # the in-memory store
//! cargo run --example metrics --features metrics,redis -- redis://127.0.0.1:6379
//! ```
//!
//! Installs the `metrics-exporter-prometheus` recorder, wraps the store in
//! [`MetricsLayer`](kvstore::layer::MetricsLayer), makes a few calls (one of which fails,
//! a lock, a watch, a registration) and prints what a Prometheus server scraping `/metrics`
//! would read. In a service, install the exporter's HTTP listener instead
//! (`PrometheusBuilder::new().with_http_listener(addr).install()`, feature `http-listener`).

use std::time::Duration;

use futures::StreamExt;
use kvstore::layer::metrics::OPERATION_DURATION;
use kvstore::layer::{MetricsLayer, StoreExt};
use kvstore::{LockOptions, WriteOptions};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".to_owned());
    // Histogram buckets (seconds) as OpenTelemetry recommends for this metric; without them
    // the exporter writes a summary.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(OPERATION_DURATION.to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0],
        )?
        .build_recorder();
    let exporter = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    let store = kvstore::open(&url).await?.layer(MetricsLayer::new());
    for i in 0..10 {
        store.put(&format!("metrics-demo/{i}"), b"v", None).await?;
    }
    store.list("metrics-demo", None).await?;
    // A failed call is counted with its error.type.
    let _ = store.get("metrics-demo/missing", None).await;
    // A registration, a held lock and an open watch show in the gauges.
    let keep = WriteOptions::default()
        .with_ttl(Duration::from_secs(5))
        .with_keep_alive(true);
    store
        .put("metrics-demo/instance", b"up", Some(&keep))
        .await?;
    let mut lock = store
        .new_lock("metrics-demo/lock", Some(&LockOptions::default()))
        .await?;
    let _lost = lock.lock().await?;
    let mut watch = store.watch("metrics-demo/0", None).await?;
    let _ = watch.next().await;

    println!("{}", exporter.render());

    lock.unlock().await?;
    store.delete_tree("metrics-demo").await?;
    store.close().await?;
    Ok(())
}
