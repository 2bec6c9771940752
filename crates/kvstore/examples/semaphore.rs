//! A semaphore: at most three jobs run at once, across every process that shares the store.
//!
//! ```text
//! cargo run --example semaphore                 # ./kvstore-quickstart.redb
//! cargo run --example semaphore -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! Each permit is a lock (`<key>/0`, `<key>/1`, …) with a fencing token that guarded writes
//! (`Txn::when_held`) check, and it is lost like a lock when its holder dies or is cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use kvstore::{LockOptions, Semaphore, Txn};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;
    let opts = LockOptions::default().with_ttl(Duration::from_secs(10));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let jobs = (0..8).map(|job| {
        let (store, running, most) = (store.clone(), running.clone(), most.clone());
        let opts = opts.clone();
        async move {
            let crawlers =
                Semaphore::new(store.clone(), "examples/semaphore/crawl", 3, Some(&opts))?;
            let permit = crawlers.acquire().await?;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // A write that only lands while this permit is held.
            let token = permit.fencing_token().expect("held");
            store
                .txn(
                    &Txn::new()
                        .when_held(permit.key(), token)
                        .put(&format!("examples/semaphore/job{job}"), "done"),
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            permit.release().await
        }
    });
    for done in join_all(jobs).await {
        done?;
    }
    let most = most.load(Ordering::SeqCst);
    println!("8 jobs ran, at most {most} at once");
    assert!(most <= 3);
    store.close().await?;
    Ok(())
}
