//! A process doing acknowledged writes is SIGKILLed at random points (five times, each within
//! a bounded time); after each kill the file reopens, passes redb's integrity check, and holds
//! every write that was acknowledged — the group commit answers a caller only after the commit
//! holding its write is durable. Half the writers write through `txn` (two keys at once), which
//! shares the group commit too: both of its keys must be there.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redb::{RedbConfig, RedbStore};
use tokio::io::AsyncBufReadExt;

/// Makes this test binary, re-run, the writing child (the value is the file's path).
const WRITER_VAR: &str = "KVSTORE_TEST_CRASH_WRITER";
/// Concurrent writers in the child, so commits carry batches.
const WRITERS: usize = 16;
/// Kills per test run.
const KILLS: usize = 5;

fn value_of(key: &str) -> Vec<u8> {
    // A value of a few hundred bytes that names its key, so a torn or misplaced value shows.
    key.repeat(1 + 300 / key.len()).into_bytes()
}

/// The sibling key a transaction writes with `key`.
fn sibling(key: &str) -> String {
    format!("{key}.txn")
}

/// The child: writes `round-<r>/<writer>/<n>` from many tasks (odd writers through a `txn` that
/// also writes its [`sibling`]) and prints each key once its write was acknowledged. Stops by itself after 20 s in case the parent is gone.
async fn write_until_killed(path: &Path, round: &str) {
    let store = std::sync::Arc::new(RedbStore::open(RedbConfig::file(path)).await.expect("open"));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let round = round.to_owned();
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("{round}/{writer}/{n}");
                if writer % 2 == 0 {
                    store.put(&key, &value_of(&key), None).await.expect("put");
                } else {
                    let txn = kvstore_core::Txn::new()
                        .put(&key, value_of(&key))
                        .put(&sibling(&key), value_of(&key));
                    store.txn(&txn).await.expect("txn");
                }
                let mut out = std::io::stdout().lock();
                writeln!(out, "{key}")
                    .and_then(|()| out.flush())
                    .expect("stdout");
            }
        }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(tasks)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    if let Ok(path) = std::env::var(WRITER_VAR) {
        let round = std::env::var("KVSTORE_TEST_CRASH_ROUND").unwrap_or_default();
        write_until_killed(Path::new(&path), &round).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut acknowledged: BTreeMap<String, ()> = BTreeMap::new();
    for round in 0..KILLS {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "acknowledged_writes_survive_sigkill",
                "--nocapture",
            ])
            .env(WRITER_VAR, &path)
            .env("KVSTORE_TEST_CRASH_ROUND", format!("round-{round}"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of acknowledged writes (at least one), reading on until
        // then; every line read before the kill is an acknowledged write.
        let kill_after = 1 + rand::random::<u32>() as usize % 400;
        let mut seen = 0;
        let read = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("round-") {
                    acknowledged.insert(line, ());
                    seen += 1;
                    if seen >= kill_after {
                        return;
                    }
                }
            }
            panic!("the writer exited before it was killed");
        })
        .await;
        read.expect("the writer acknowledges writes");
        child.start_kill().unwrap(); // SIGKILL
        // Lines already written to the pipe before the kill are acknowledged writes too.
        child.wait().await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("round-") {
                acknowledged.insert(line, ());
            }
        }

        // The file is whole and holds every acknowledged write.
        let check = path.clone();
        let intact = tokio::task::spawn_blocking(move || {
            // The previous round's handle closes on the blocking pool; wait for it (bounded).
            let started = std::time::Instant::now();
            let mut db = loop {
                match redb::Database::open(&check) {
                    Err(redb::DatabaseError::DatabaseAlreadyOpen)
                        if started.elapsed() < Duration::from_secs(5) =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => break other.expect("the file reopens"),
                }
            };
            db.check_integrity().expect("the integrity check runs")
        })
        .await
        .unwrap();
        assert!(intact, "round {round}: redb's integrity check failed");
        let store = RedbStore::open(RedbConfig::file(&path))
            .await
            .expect("reopen");
        for key in acknowledged.keys() {
            let pair = store
                .get(key, None)
                .await
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {key} is lost: {e}"));
            assert_eq!(pair.value, value_of(key), "round {round}: {key}");
            let writer: usize = key
                .split('/')
                .nth(1)
                .and_then(|w| w.parse().ok())
                .expect("writer");
            if writer % 2 == 1 {
                let other = store.get(&sibling(key), None).await.unwrap_or_else(|e| {
                    panic!("round {round}: the txn's other key of {key} is lost: {e}")
                });
                assert_eq!(other.value, value_of(key), "round {round}: {key}'s txn");
            }
        }
        store.close().await.unwrap();
        drop(store);
    }
    assert!(
        acknowledged.len() >= KILLS,
        "{} writes checked",
        acknowledged.len()
    );
}
