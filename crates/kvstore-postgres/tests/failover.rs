//! Failover: the primary (`postgres-p1`) SIGKILLed under a held lock, a `keep_alive`
//! registration and a watch; no primary until the holder has been told it lost the lock (as
//! while an operator or a failover manager decides); then its asynchronous streaming replica
//! (`postgres-r1`) promoted. The stores name both hosts with `target_session_attrs=read-write`
//! (`KVSTORE_POSTGRES_FAILOVER_URL`, started by ci/test.sh). What a client sees, and that the
//! loss rule still holds: the holder is told it lost the lock while there is no primary, before
//! anyone can take it on the new one, and the registration comes back there.

use std::time::{Duration, Instant};

use kvstore_core::{Store, WriteOptions};
use kvstore_testutils::{
    Opener, backend_url, controlled_backend_url, eventually, lock_ttl, next_within, ok,
    retry_transient, scratch_dir, server_control, take_lock,
};

const TTL: Duration = Duration::from_secs(2);

mod common;

/// Whether the replica has applied `key` = `value` (a read on the standby itself).
async fn replicated(replica: &str, key: &str, value: &[u8]) -> bool {
    let Ok(client) = common::sql(replica).await else {
        return false;
    };
    let row = client
        .query_opt("SELECT value FROM kvstore WHERE key = $1", &[&key])
        .await;
    matches!(row, Ok(Some(row)) if row.get::<_, Vec<u8>>(0) == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_over_and_the_loss_rule_holds() {
    let Some(url) = controlled_backend_url("KVSTORE_POSTGRES_FAILOVER_URL") else {
        return;
    };
    let replica = backend_url("KVSTORE_POSTGRES_REPLICA_URL").expect("the replica's URL");
    // A 1 s request timeout, so calls to the dead primary fail fast.
    let opener = Opener::backend::<kvstore_postgres::Postgres>(&format!(
        "{url}&request_timeout=1s&timeout=1s"
    ));
    let (holder, other) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("failover");
    let (key, lock_key, service) = (
        format!("{dir}/k"),
        format!("{dir}/lock"),
        format!("{dir}/service"),
    );

    let registration = WriteOptions::default().with_ttl(TTL).with_keep_alive(true);
    ok(
        holder.put(&service, b"up", Some(&registration)).await,
        "register",
    );
    let (locker, lost, token) = take_lock(&*holder, &lock_key, TTL).await;
    ok(other.put(&key, b"before", None).await, "put before");
    let mut watch = ok(other.watch(&key, None).await, "watch");
    let first = ok(next_within(&mut watch, "first").await, "first item");
    assert_eq!(first.map(|p| p.value.to_vec()), Some(b"before".to_vec()));
    // Asynchronous replication: wait (bounded) until the replica has applied the write, so
    // that the write acknowledged here is one the failover must keep.
    assert!(
        eventually(Duration::from_secs(10), || replicated(
            &replica, &key, b"before"
        ))
        .await,
        "the replica never applied the write"
    );

    let killed = Instant::now();
    server_control("postgres-p1", "kill").await;
    // No primary: the holder cannot renew, so it gives the lock up by the loss rule.
    assert!(
        tokio::time::timeout(TTL, lost.clone()).await.is_ok(),
        "the holder must be told within the TTL that it lost the lock"
    );
    let told = killed.elapsed();
    server_control("postgres-r1", "promote").await;
    let promoted = killed.elapsed();

    // The stores find the new primary by themselves (the pool's next connection skips the dead
    // host and the read-only one).
    retry_transient(Duration::from_secs(30), "put after the failover", || {
        other.put(&key, b"after", None)
    })
    .await;
    let writes_back = killed.elapsed();
    let kept = ok(other.get(&key, None).await, "get after the failover");
    assert_eq!(&kept.value[..], b"after");

    // The watch carries on on the new primary and shows the write made there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let item = ok(
            next_within(&mut watch, "watch after the failover").await,
            "watch item",
        );
        if item.map(|p| p.value.to_vec()) == Some(b"after".to_vec()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never showed the write after the failover"
        );
    }

    // The registration is on the new primary: kept by renewals, or written again.
    let registered = eventually(TTL * 3, || async {
        matches!(other.get(&service, None).await, Ok(p) if &p.value[..] == b"up")
    })
    .await;
    assert!(registered, "the registration must be on the new primary");

    // The lock: the replicated hold ran out while there was no primary; a contender on the
    // new primary takes it, with a greater token, and the old holder knew first.
    let mut contender = ok(
        other.new_lock(&lock_key, Some(&lock_ttl(TTL))).await,
        "new_lock",
    );
    let taken = tokio::time::timeout(TTL * 3, contender.lock()).await;
    ok(
        taken.expect("the lock taken on the new primary"),
        "lock after the failover",
    );
    assert!(lost.is_lost() && locker.fencing_token().is_none());
    assert!(
        contender.fencing_token().unwrap() > token,
        "tokens only grow"
    );
    ok(contender.unlock().await, "unlock");
    println!(
        "postgres failover: holder told {told:?} after the kill, replica promoted at {promoted:?}, writes back at {writes_back:?}"
    );
    drop((locker, contender, watch));
    kvstore_testutils::cleanup(&*other, &dir).await;
    let _ = holder.close().await;
    let _ = other.close().await;
}
