//! Group membership: members join a directory, a follower sees every join and leave.
//!
//! ```text
//! cargo run --example group                 # ./kvstore-quickstart.redb
//! cargo run --example group -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! A member is a `keep_alive` key: if its process dies, it leaves once its TTL runs out.

use std::time::Duration;

use futures::StreamExt;
use kvstore::{Group, KvPair, WriteOptions};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";
const DIR: &str = "examples/group/workers";

fn names(members: &[KvPair]) -> Vec<&str> {
    members
        .iter()
        .map(|p| p.key.rsplit('/').next().unwrap_or(""))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;
    let opts = WriteOptions::default().with_ttl(Duration::from_secs(10));
    let w1 = Group::join(store.clone(), DIR, "w1", "10.0.0.1:9000", Some(&opts)).await?;
    let w2 = Group::join(store.clone(), DIR, "w2", "10.0.0.2:9000", Some(&opts)).await?;
    let mut members = Group::follow(&*store, DIR).await?;
    let mut next = async || -> Result<Vec<KvPair>, kvstore::Error> {
        members
            .next()
            .await
            .unwrap_or_else(|| Err(kvstore::Error::not_reachable("example", "the watch ended")))
    };
    println!("members: {:?}", names(&next().await?));
    w1.leave().await?;
    loop {
        let now = next().await?;
        println!("members: {:?}", names(&now));
        if names(&now) == ["w2"] {
            break;
        }
    }
    drop(w2);
    store.close().await?;
    Ok(())
}
