//! Leader election: two candidates campaign for one key, a follower prints every change of
//! leader with its term, the first leader resigns and the second takes over at once.
//!
//! ```text
//! cargo run -p kvstore-any --example election                 # ./kvstore-quickstart.redb
//! cargo run -p kvstore-any --example election -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! A leader does its work only while `is_leader()` is true and stops when `lost()` resolves
//! (for example when its server cannot be reached for longer than the TTL); the term is a
//! fencing token for whatever the leader writes to.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore::{Candidate, ElectionOptions, Store, follow};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";
const KEY: &str = "examples/election/scheduler";
/// Every bounded wait of this example.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store: Arc<dyn Store> = kvstore::open(&url).await?;
    let opts = ElectionOptions::default().with_ttl(Duration::from_secs(10));
    // The follower: the current leader first (none yet), then every change.
    let mut leaders = follow(store.clone(), KEY);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        while let Some(leader) = leaders.next().await {
            let leader = leader?;
            match &leader {
                // The leader's value carries its term as last_index.
                Some(pair) => println!(
                    "follower: leader is {} (term {})",
                    String::from_utf8_lossy(&pair.value),
                    pair.last_index
                ),
                None => println!("follower: no leader"),
            }
            let _ = seen_tx.send(leader.map(|p| p.value));
        }
        Ok::<_, kvstore::Error>(())
    });
    // Waits until the follower has printed `want` as the current state.
    let mut follower_shows = async |want: Option<&str>| {
        tokio::time::timeout(WAIT, async {
            while let Some(state) = seen.recv().await {
                if state.as_deref() == want.map(str::as_bytes) {
                    return;
                }
            }
        })
        .await
        .expect("the follower reports the change");
    };
    follower_shows(None).await;

    let alpha = Candidate::new(store.clone(), KEY, "node-alpha", Some(&opts));
    let beta = Candidate::new(store.clone(), KEY, "node-beta", Some(&opts));
    let first = tokio::time::timeout(WAIT, alpha.campaign()).await??;
    println!("node-alpha: leading in term {}", first.term());
    follower_shows(Some("node-alpha")).await;

    // node-beta queues behind node-alpha.
    let campaign = tokio::spawn(async move {
        let leadership = beta.campaign().await;
        (beta, leadership)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("node-alpha: resigning");
    first.resign().await?;

    let (_beta, second) = tokio::time::timeout(WAIT, campaign).await??;
    let second = second?;
    println!(
        "node-beta: leading in term {} (is_leader: {})",
        second.term(),
        second.is_leader()
    );
    follower_shows(Some("node-beta")).await;
    println!("node-beta: resigning");
    second.resign().await?;
    follower_shows(None).await;

    store.close().await?;
    tokio::time::timeout(WAIT, follower).await???;
    Ok(())
}
