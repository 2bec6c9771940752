//! `kvctl status`: what the store is and how far away it is.

use std::time::Instant;

use kvstore::ReadOptions;
use kvstore::backend::redact_url;
use serde_json::json;

use crate::cli::{Context, Output};
use crate::exit::Failure;

/// The key whose existence the round trip asks about (a consistent read; nothing is written).
const PROBE_KEY: &str = "kvctl-status-probe";

pub(crate) async fn status(ctx: &Context) -> Result<(), Failure> {
    let url = redact_url(ctx.url()?);
    let opened = Instant::now();
    let store = ctx.open().await?;
    let open_time = opened.elapsed();
    let consistent = ReadOptions::default().with_consistent(true);
    let sent = Instant::now();
    let probe = ctx
        .bounded(store.exists(PROBE_KEY, Some(&consistent)))
        .await;
    let round_trip = sent.elapsed();
    let backend = store.backend();
    let caps = store.capabilities();
    let _ = store.close().await;
    probe?;
    match ctx.output {
        Output::Text => {
            println!("backend      {backend}");
            println!("url          {url}");
            println!("open         {:.1} ms", open_time.as_secs_f64() * 1e3);
            println!(
                "round trip   {:.1} ms (a consistent read)",
                round_trip.as_secs_f64() * 1e3
            );
            println!("ttl          {}", caps.ttl);
            println!("keep_alive   {}", caps.keep_alive);
            println!("watch        {}", caps.watch);
            println!("watch_tree   {}", caps.watch_tree);
            println!("lock         {}", caps.lock);
            println!("max_value    {} bytes", caps.max_value_size);
            println!("min_ttl      {}", humantime::format_duration(caps.min_ttl));
            println!("max_txn_ops  {}", caps.max_txn_ops);
        }
        Output::Json => println!(
            "{}",
            json!({
                "backend": backend,
                "url": url,
                "open_ms": open_time.as_secs_f64() * 1e3,
                "round_trip_ms": round_trip.as_secs_f64() * 1e3,
                "capabilities": {
                    "ttl": caps.ttl,
                    "keep_alive": caps.keep_alive,
                    "watch": caps.watch,
                    "watch_tree": caps.watch_tree,
                    "lock": caps.lock,
                    "max_value_size": caps.max_value_size,
                    "min_ttl_ms": u64::try_from(caps.min_ttl.as_millis()).unwrap_or(u64::MAX),
                    "max_txn_ops": caps.max_txn_ops,
                },
            })
        ),
    }
    Ok(())
}
