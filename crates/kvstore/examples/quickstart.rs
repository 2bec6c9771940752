//! A tour of kvstore on a real store: by default an embedded redb file.
//!
//! ```text
//! cargo run --example quickstart                          # ./kvstore-quickstart.redb
//! cargo run --example quickstart -- memory://             # any URL kvstore::open accepts
//! ```
//!
//! Safe to run repeatedly: it works under `quickstart/` and clears that directory first.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore::{Error, LockOptions, Store, WriteOptions};

const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";

fn show(pair: &kvstore::KvPair) -> String {
    format!(
        "{} = {:?} (last_index {})",
        pair.key,
        String::from_utf8_lossy(&pair.value),
        pair.last_index
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let store = kvstore::open(&url).await?;
    println!("opened {url} (backend: {})", store.backend());
    match store.delete_tree("quickstart").await {
        Ok(()) => println!("cleared quickstart/ left by an earlier run"),
        Err(Error::KeyNotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }

    println!("\n1. put and get");
    let written = store
        .put("quickstart/config/db_url", b"postgres://10.0.0.5/app", None)
        .await?;
    println!("   put  {}", show(&written));
    println!(
        "   get  {}",
        show(&store.get("/quickstart/config/db_url/", None).await?)
    );

    println!("\n2. list a directory (recursive, sorted)");
    store
        .put("quickstart/services/web/1", b"10.0.0.1:80", None)
        .await?;
    store
        .put("quickstart/services/web/2", b"10.0.0.2:80", None)
        .await?;
    store
        .put("quickstart/services/worker/1", b"10.0.0.3:9000", None)
        .await?;
    store
        .put("quickstart/servicesX", b"not below services/", None)
        .await?;
    for pair in store.list("quickstart/services", None).await? {
        println!("   {}", show(&pair));
    }

    println!("\n3. compare-and-swap");
    let current = store.get("quickstart/config/db_url", None).await?;
    let swapped = store
        .atomic_put(
            "quickstart/config/db_url",
            b"postgres://10.0.0.6/app",
            Some(&current),
            None,
        )
        .await?;
    println!(
        "   CAS with last_index {} succeeded: {}",
        current.last_index,
        show(&swapped)
    );
    match store
        .atomic_put(
            "quickstart/config/db_url",
            b"stale write",
            Some(&current),
            None,
        )
        .await
    {
        Err(err @ Error::KeyModified { .. }) => println!(
            "   CAS with stale last_index {} refused: {err}",
            current.last_index
        ),
        other => return Err(format!("expected KeyModified, got {other:?}").into()),
    }

    println!("\n4. watch a key");
    let mut watch = store.watch("quickstart/feature_flag", None).await?;
    let initial = watch.next().await.ok_or("watch ended")??;
    println!(
        "   initial state: {}",
        initial.as_ref().map_or("absent".to_owned(), show)
    );
    for value in ["on", "off"] {
        store
            .put("quickstart/feature_flag", value.as_bytes(), None)
            .await?;
        let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await?
            .ok_or("watch ended")??;
        println!(
            "   change seen:   {}",
            seen.as_ref().map_or("deleted".to_owned(), show)
        );
    }
    drop(watch);

    println!("\n5. a lock with a fencing token");
    let opts = LockOptions::default()
        .with_value("quickstart-pid-1")
        .with_ttl(Duration::from_secs(5));
    let mut lock = store
        .new_lock("quickstart/locks/nightly-job", Some(&opts))
        .await?;
    let lost = lock.lock().await?;
    println!(
        "   locked; fencing token {}",
        lock.fencing_token().ok_or("no token while held")?
    );
    println!(
        "   lock value: {}",
        show(&store.get("quickstart/locks/nightly-job", None).await?)
    );
    lock.unlock().await?;
    println!("   unlocked; lost signal resolved: {}", lost.is_lost());

    println!("\n6. a key with a TTL");
    let ttl = Duration::from_secs(1);
    store
        .put(
            "quickstart/session/abc",
            b"user-42",
            Some(&WriteOptions::default().with_ttl(ttl)),
        )
        .await?;
    let mut expiry = store.watch("quickstart/session/abc", None).await?;
    let start = Instant::now();
    println!(
        "   written with TTL {ttl:?}: exists = {}",
        store.exists("quickstart/session/abc", None).await?
    );
    expiry.next().await.ok_or("watch ended")??;
    let gone = tokio::time::timeout(Duration::from_secs(10), expiry.next())
        .await?
        .ok_or("watch ended")??;
    println!(
        "   expired after {:?}: watch saw {}, exists = {}",
        start.elapsed(),
        if gone.is_none() { "None" } else { "a value" },
        store.exists("quickstart/session/abc", None).await?
    );

    store.close().await?;
    println!("\ndone; data kept in {url}");
    Ok(())
}
