//! The schema against a real PostgreSQL (`KVSTORE_POSTGRES_URL`): created on first use by
//! several stores at once, in the schema and table the URL names, versioned (a newer version is
//! refused), and a change log trimmed to `log_retention` revisions, after which a resume starts
//! with a `Snapshot`.

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{Error, Store, WatchEvent, WatchOptions};
use kvstore_postgres::{PostgresConfig, PostgresStore};
use kvstore_testutils::{backend_url, eventually, next_within, ok, scratch_dir};

mod common;

/// A plain client on the server, for what only SQL shows.
async fn sql(url: &str) -> tokio_postgres::Client {
    common::sql(url).await.expect("connect")
}

/// How many sessions carry the application name `name`.
async fn sessions(client: &tokio_postgres::Client, name: &str) -> i64 {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Drops the four tables of the store `table` in the public schema.
async fn drop_tables(client: &tokio_postgres::Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE \"{table}\", \"{table}_meta\", \"{table}_log\", \"{table}_locks\""
        ))
        .await
        .unwrap();
}

/// A name no other run uses: `prefix` and 8 random hex digits.
fn fresh(prefix: &str) -> String {
    let random = scratch_dir("n");
    format!("{prefix}_{}", &random[random.len() - 8..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_at_once_create_one_schema_where_the_url_says() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let (schema, table) = (fresh("kv_app"), fresh("kv"));
    let at = format!("{url}?schema={schema}&table={table}");
    let opens = (0..6).map(|_| PostgresStore::open_url(&at));
    let stores: Vec<_> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|s| ok(s, "open while others create the schema"))
        .collect();
    ok(stores[0].put("k", b"v", None).await, "put");
    assert_eq!(&ok(stores[5].get("k", None).await, "get").value[..], b"v");
    let client = sql(&url).await;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = ["", "_locks", "_log", "_meta"]
        .iter()
        .map(|s| format!("{table}{s}"))
        .collect();
    assert_eq!(tables, want);
    for store in stores {
        ok(store.close().await, "close");
    }
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_a_newer_version_is_refused() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let table = fresh("kv_newer");
    let at = format!("{url}?table={table}");
    ok(
        ok(PostgresStore::open_url(&at).await, "create")
            .close()
            .await,
        "close",
    );
    let client = sql(&url).await;
    client
        .batch_execute(&format!("UPDATE \"{table}_meta\" SET version = 99"))
        .await
        .unwrap();
    match PostgresStore::open_url(&at).await {
        Err(Error::InvalidConfig { source, .. }) => {
            assert!(source.to_string().contains("99"), "{source}");
        }
        other => panic!(
            "a newer schema must be InvalidConfig, got {:?}",
            other.map(|_| ())
        ),
    }
    drop_tables(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_trimmed_log_starts_with_a_snapshot() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    // Keep 10 revisions; trim every 40 reaps of 25 ms (each second).
    let table = fresh("kv_trim");
    let at = format!("{url}?table={table}&log_retention=10&reap_interval=25ms");
    let store = ok(PostgresStore::open_url(&at).await, "open");
    let dir = scratch_dir("trim");
    ok(store.put(&format!("{dir}/a"), b"1", None).await, "put a");
    let (_, early) = ok(store.list_at(&dir, None).await, "list_at");
    // A resume from a revision the log still holds gives exactly the missed change.
    ok(store.put(&format!("{dir}/b"), b"2", None).await, "put b");
    let opts = WatchOptions::default().with_since(early);
    let mut events = ok(store.watch_events(&dir, Some(&opts)).await, "watch_events");
    match ok(next_within(&mut events, "resume").await, "resume") {
        WatchEvent::Changes { events, .. } => {
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0].key, format!("{dir}/b"));
        }
        other => panic!("a resume within the log gives the changes, got {other:?}"),
    }
    drop(events);
    for i in 0..30 {
        ok(store.put(&format!("{dir}/c{i}"), b"3", None).await, "put c");
    }
    let client = sql(&url).await;
    let trimmed = eventually(Duration::from_secs(10), || {
        let client = &client;
        let query = format!("SELECT compacted FROM \"{table}_meta\"");
        async move {
            let row = client.query_one(&query, &[]).await.unwrap();
            u64::try_from(row.get::<_, i64>(0)).unwrap() > early
        }
    })
    .await;
    assert!(trimmed, "the log must be trimmed to its retention");
    let mut events = ok(store.watch_events(&dir, Some(&opts)).await, "watch_events");
    match ok(next_within(&mut events, "resume").await, "resume") {
        WatchEvent::Snapshot { pairs, .. } => assert_eq!(pairs.len(), 32),
        other => panic!("a resume from before the log gives a Snapshot, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "nothing more without a change"
    );
    ok(store.close().await, "close");
    drop_tables(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_holds_at_most_its_pool_and_one_listener_however_many_watches() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let name = fresh("kvstore_conns");
    let at = format!("{url}?pool_size=3&application_name={name}");
    let config = PostgresConfig::from_str(&at).unwrap();
    let store = ok(PostgresStore::open(config).await, "open");
    let dir = scratch_dir("conns");
    let mut watches = Vec::new();
    for i in 0..200 {
        watches.push(ok(
            store.watch(&format!("{dir}/k{}", i % 20), None).await,
            "watch",
        ));
    }
    // Every watch wakes and reads at once.
    for i in 0..20 {
        ok(store.put(&format!("{dir}/k{i}"), b"v", None).await, "put");
    }
    for watch in &mut watches {
        ok(next_within(watch, "first").await, "first");
        ok(next_within(watch, "after the put").await, "after the put");
    }
    let client = sql(&url).await;
    // The store's sessions carry its application name.
    let open = sessions(&client, &name).await;
    assert!(
        (1..=4).contains(&open),
        "200 watches: {open} sessions, not at most the pool (3) and the listener"
    );
    drop(watches);
    ok(store.close().await, "close");
    // Closing ends them all.
    let gone = eventually(Duration::from_secs(5), || {
        let (client, name) = (&client, &name);
        async move { sessions(client, name).await == 0 }
    })
    .await;
    assert!(gone, "close must end every session of the store");
}
