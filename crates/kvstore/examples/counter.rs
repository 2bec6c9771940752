//! A counter that any number of processes add to at once, without losing an update.
//!
//! ```text
//! cargo run --example counter                 # ./kvstore-quickstart.redb
//! cargo run --example counter -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! `Counter::add` reads the value and writes the sum with a compare-and-swap, retrying a lost
//! race, so 8 tasks adding 100 each always end 800 higher.

use futures::future::join_all;
use kvstore::Counter;

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;
    let visits = Counter::new(store.clone(), "examples/counter/visits");
    let before = visits.get().await?;
    let adders = (0..8).map(|_| {
        let visits = visits.clone();
        async move {
            for _ in 0..100 {
                visits.add(1).await?;
            }
            Ok::<(), kvstore::Error>(())
        }
    });
    for done in join_all(adders).await {
        done?;
    }
    let after = visits.get().await?;
    println!("visits: {before} -> {after}");
    assert_eq!(after - before, 800, "no update lost");
    store.close().await?;
    Ok(())
}
