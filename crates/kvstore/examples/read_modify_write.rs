//! Read-modify-write that retries on conflict: `update` for one key, `update_many` for
//! several keys at once (a transaction that checks every key it read).
//!
//! ```text
//! cargo run --example read_modify_write                 # ./kvstore-quickstart.redb
//! cargo run --example read_modify_write -- memory://    # any URL kvstore::open accepts
//! ```

use bytes::Bytes;
use futures::future::join_all;
use kvstore::{KvPair, update, update_many};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";

fn balance(pair: &Option<KvPair>) -> i64 {
    pair.as_ref()
        .and_then(|p| p.value_str()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;

    // One key: append to a list, whatever other writers do meanwhile.
    let written = update(
        &*store,
        "examples/rmw/hosts",
        |current| {
            let mut hosts = current.map(|p| p.value.to_vec()).unwrap_or_default();
            hosts.extend_from_slice(b"10.0.0.7;");
            Some(Bytes::from(hosts))
        },
        None,
    )
    .await?;
    println!(
        "hosts: {}",
        written
            .and_then(|p| p.value_str().map(str::to_owned))
            .unwrap_or_default()
    );

    // Two keys: 8 tasks move money between two accounts; the total never changes.
    let accounts = ["examples/rmw/alice", "examples/rmw/bob"];
    let opened = update_many(
        &*store,
        &accounts,
        |now| {
            now.iter()
                .map(|p| {
                    Some(
                        p.as_ref()
                            .map_or_else(|| Bytes::from("100"), |p| p.value.clone()),
                    )
                })
                .collect()
        },
        None,
    )
    .await?;
    let total = balance(&opened[0]) + balance(&opened[1]);
    let movers = (0..8i64).map(|i| {
        let store = store.clone();
        async move {
            for _ in 0..10 {
                let amount = i % 3 - 1;
                let after = update_many(
                    &*store,
                    &accounts,
                    |now| {
                        vec![
                            Some(Bytes::from((balance(&now[0]) - amount).to_string())),
                            Some(Bytes::from((balance(&now[1]) + amount).to_string())),
                        ]
                    },
                    None,
                )
                .await?;
                assert_eq!(balance(&after[0]) + balance(&after[1]), total);
            }
            Ok::<(), kvstore::Error>(())
        }
    });
    for done in join_all(movers).await {
        done?;
    }
    let now = update_many(
        &*store,
        &accounts,
        |now| {
            now.iter()
                .map(|p| p.as_ref().map(|p| p.value.clone()))
                .collect()
        },
        None,
    )
    .await?;
    println!(
        "alice {} + bob {} = {total}",
        balance(&now[0]),
        balance(&now[1])
    );
    store.close().await?;
    Ok(())
}
