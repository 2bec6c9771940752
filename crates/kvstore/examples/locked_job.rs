//! A lock-guarded job: several workers contend for one lock; whoever holds it runs the job and
//! stamps its output with the lock's fencing token, so a reader can reject stale writers.
//!
//! ```text
//! cargo run --example locked_job                 # ./kvstore-quickstart.redb
//! cargo run --example locked_job -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! The fencing token is strictly greater for every later holder of the same lock. `lock()`
//! returns a `LockLost` future that resolves if the hold is lost (for example when the server
//! cannot be reached for longer than the TTL); a job should stop when it does.

use std::sync::Arc;
use std::time::Duration;

use kvstore::{LockOptions, Store};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";
const LOCK: &str = "examples/locks/report";
const OUTPUT: &str = "examples/reports/latest";

async fn worker(store: Arc<dyn Store>, name: &'static str) -> kvstore::Result<u64> {
    let opts = LockOptions::default()
        .with_value(name)
        .with_ttl(Duration::from_secs(10));
    let mut lock = store.new_lock(LOCK, Some(&opts)).await?;
    let lost = lock.lock().await?;
    let token = lock.fencing_token().expect("a held lock has a token");
    // The job itself; abandoned if the lock is lost meanwhile.
    let job = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = format!("written by {name} under token {token}");
        store.put(OUTPUT, report.as_bytes(), None).await
    };
    tokio::select! {
        written = job => { written?; }
        () = lost => println!("{name}: lock lost, job abandoned"),
    }
    lock.unlock().await?;
    println!("{name}: ran the job with fencing token {token}");
    Ok(token)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store: Arc<dyn Store> = kvstore::open(&url).await?;

    let workers: Vec<_> = ["worker-a", "worker-b", "worker-c"]
        .into_iter()
        .map(|name| tokio::spawn(worker(Arc::clone(&store), name)))
        .collect();
    let mut tokens = Vec::new();
    for handle in workers {
        tokens.push(tokio::time::timeout(Duration::from_secs(30), handle).await???);
    }
    tokens.sort_unstable();
    tokens.dedup();
    if tokens.len() != 3 {
        return Err("every holder must get its own token".into());
    }
    println!(
        "last report: {}",
        String::from_utf8_lossy(&store.get(OUTPUT, None).await?.value)
    );
    store.close().await?;
    Ok(())
}
