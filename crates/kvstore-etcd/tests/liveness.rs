//! The liveness rule against a real etcd (`KVSTORE_ETCD_URL`, controlled by ci/test.sh): a
//! paused server, a restarted server under a registration, a paused holder process, and the
//! leases left after rewriting a registration. They pause the server the other tests use, so
//! they run one at a time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{Opener, backend_url, ok, scratch_dir};

fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = EtcdConfig::from_str(&url)?;
            Ok(Arc::new(EtcdStore::open(config).await?) as Arc<dyn Store>)
        }
    })
}

/// etcd leases have whole-second TTLs.
const TTL: Duration = Duration::from_secs(2);

kvstore_testutils::liveness_tests!(
    server: "etcd",
    url: "KVSTORE_ETCD_URL",
    opener: opener,
    ttl: TTL,
    // etcd expires the paused holder's lease within its TTL plus its ~1 s expiry check.
    takeover: TTL + Duration::from_secs(3),
    // etcd checks lease expiry about every 500 ms.
    registration_slack: Duration::from_secs(1),
    registrant_pause: TTL * 2 + Duration::from_secs(1),
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_a_registration_leaves_one_lease() {
    let Some(url) = backend_url("KVSTORE_ETCD_URL") else {
        return;
    };
    let _serial = liveness::LIVENESS_SERIAL.lock().await;
    let config = EtcdConfig::from_str(&url).unwrap();
    let mut raw = etcd_client::Client::connect(&config.endpoints, None)
        .await
        .expect("raw client");
    let leases = |raw: &mut etcd_client::Client| {
        let mut raw = raw.clone();
        async move { raw.leases().await.expect("lease list").leases().len() }
    };
    let before = leases(&mut raw).await;
    let store = ok(EtcdStore::open(config).await, "connect");
    let key = format!("{}/svc", scratch_dir("rewrites"));
    kvstore_testutils::rewrite_registration(&store, &key, 1000, Duration::from_secs(30)).await;
    // Replaced leases are revoked in the background; wait (bounded) for them to go.
    let settled = kvstore_testutils::eventually(Duration::from_secs(10), || {
        let mut raw = raw.clone();
        async move { leases(&mut raw).await <= before + 1 }
    })
    .await;
    assert!(
        settled,
        "1,000 rewrites must leave one lease, not {}",
        leases(&mut raw).await - before
    );
    ok(store.delete(&key).await, "delete");
    let gone = kvstore_testutils::eventually(Duration::from_secs(10), || {
        let mut raw = raw.clone();
        async move { leases(&mut raw).await <= before }
    })
    .await;
    assert!(gone, "deleting the key must end its lease");
    ok(store.close().await, "close");
}
