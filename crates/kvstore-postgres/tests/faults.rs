//! Fault tests against a real PostgreSQL: a server restart under a watch and a lock, an
//! unreachable server, a refused password.

use std::str::FromStr;
use std::time::{Duration, Instant};

use kvstore_core::{Error, Store};
use kvstore_postgres::{PostgresConfig, PostgresStore};
use kvstore_testutils::{
    backend_url, controlled_backend_url, next_within, ok, retry_transient, scratch_dir,
    server_control,
};

/// The restart test stops the server that the others use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let store = ok(PostgresStore::open_url(&url).await, "connect");
    let key = format!("{}/k", scratch_dir("restart"));
    ok(store.put(&key, b"before", None).await, "put");
    let mut watch = ok(store.watch(&key, None).await, "watch");
    let first = ok(next_within(&mut watch, "initial").await, "initial");
    assert_eq!(first.map(|p| p.value.to_vec()), Some(b"before".to_vec()));

    server_control("postgres", "restart").await;

    // The pool's connections died with the server; new ones are made on demand, and the
    // listener reconnects and wakes the watch, which reads again.
    retry_transient(Duration::from_secs(30), "put after restart", || {
        store.put(&key, b"after", None)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let item = ok(
            next_within(&mut watch, "item after restart").await,
            "watch item",
        );
        if item.map(|p| p.value.to_vec()) == Some(b"after".to_vec()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never showed the write after the restart"
        );
    }
    ok(store.delete(&key).await, "delete");
    ok(store.close().await, "close");
}

#[tokio::test]
async fn unreachable_server_fails_fast_and_transiently() {
    // A port nothing listens on: refused at once, reported as transient.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config =
        PostgresConfig::from_str(&format!("postgres://u:p@127.0.0.1:{port}/db?timeout=2s"))
            .unwrap();
    let started = Instant::now();
    let err = PostgresStore::open(config).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_wrong_password_is_permission_denied_and_not_shown() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let mut config = PostgresConfig::from_str(&url).unwrap();
    config.password = Some("not-the-password-1234".into());
    let err = PostgresStore::open(config).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(
        !format!("{err:?} {err}").contains("not-the-password-1234"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_missing_database_is_invalid_config() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_URL") else {
        return;
    };
    let config = PostgresConfig::from_str(&url)
        .unwrap()
        .with_database("no_such_db_kvstore");
    let err = PostgresStore::open(config).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
}
