//! Service registration and discovery: instances register themselves with `keep_alive` keys,
//! a client follows the membership with `watch_tree`.
//!
//! ```text
//! cargo run --example service_discovery                 # ./kvstore-quickstart.redb
//! cargo run --example service_discovery -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! A registration is a key with a TTL that its `Store` keeps alive while it is open: if the
//! process dies, the key expires after its TTL and every watcher sees the instance leave.

use std::time::Duration;

use futures::StreamExt;
use kvstore::{Error, Store, WriteOptions};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";
const DIR: &str = "examples/services/web";

fn members(pairs: &[kvstore::KvPair]) -> Vec<String> {
    pairs
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p.key.rsplit('/').next().unwrap_or(""),
                String::from_utf8_lossy(&p.value)
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;
    match store.delete_tree(DIR).await {
        Ok(()) | Err(Error::KeyNotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }

    // The discovering side: the full membership first, then after every change.
    let mut membership = store.watch_tree(DIR, None).await?;
    let mut next = async || -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let pairs = tokio::time::timeout(Duration::from_secs(10), membership.next())
            .await?
            .ok_or("watch ended")??;
        Ok(members(&pairs))
    };
    println!("members at start: {:?}", next().await?);

    // The registering side: each instance writes its address with a TTL, kept alive.
    let registration = WriteOptions::default()
        .with_ttl(Duration::from_secs(5))
        .with_keep_alive(true);
    for (id, addr) in [("1", "10.0.0.1:80"), ("2", "10.0.0.2:80")] {
        store
            .put(&format!("{DIR}/{id}"), addr.as_bytes(), Some(&registration))
            .await?;
        println!("registered {id}: members {:?}", next().await?);
    }

    // Instance 2 shuts down cleanly: it deregisters at once instead of waiting for its TTL.
    store.delete(&format!("{DIR}/2")).await?;
    println!("deregistered 2: members {:?}", next().await?);

    // Instance 1 outlives its TTL because the store keeps it alive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = store.list(DIR, None).await?;
    println!(
        "after 6 s (TTL 5 s, kept alive): members {:?}",
        members(&still)
    );
    if still.len() != 1 {
        return Err("the kept-alive registration should still be there".into());
    }

    store.delete_tree(DIR).await?;
    store.close().await?;
    Ok(())
}
