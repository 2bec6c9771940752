//! A configuration watcher: a service applies every change of its configuration key as it
//! happens, starting from the current value.
//!
//! ```text
//! cargo run --example config_watcher                 # ./kvstore-quickstart.redb
//! cargo run --example config_watcher -- memory://    # any URL kvstore::open accepts
//! ```
//!
//! A watch yields the current state first (`None` if the key is absent), then every change in
//! order. A slow consumer may see changes coalesced, but never misses the latest value.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore::Store;

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";
const KEY: &str = "examples/config/log_level";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store: Arc<dyn Store> = kvstore::open(&url).await?;
    store.put(KEY, b"info", None).await?;

    // An operator changes the setting a few times, then removes it.
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for level in ["debug", "warn"] {
                tokio::time::sleep(Duration::from_millis(200)).await;
                store.put(KEY, level.as_bytes(), None).await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            store.delete(KEY).await
        })
    };

    let mut watch = store.watch(KEY, None).await?;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await?
            .ok_or("watch ended")??;
        match item {
            Some(pair) => println!(
                "apply log_level = {} (last_index {})",
                String::from_utf8_lossy(&pair.value),
                pair.last_index
            ),
            None => {
                println!("log_level removed: back to the built-in default");
                break;
            }
        }
    }
    writer.await??;
    store.close().await?;
    Ok(())
}
