//! The liveness rule against a real ZooKeeper (`KVSTORE_ZK_URL`, controlled by ci/test.sh): a
//! paused server, a restarted server under a registration, and a paused holder process. They
//! pause the server the other tests use, so they run one at a time.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url, controlled_backend_url};
use kvstore_zk::{ZkConfig, ZkStore};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The store's own session (which pins `keep_alive` keys) has the registration TTL, so a
/// restart longer than that expires it, as a long outage would.
fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = ZkConfig::from_url(&url)?.with_session_timeout(TTL);
            Ok(Arc::new(ZkStore::connect(config).await?) as Arc<dyn Store>)
        }
    })
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_ends_the_hold_within_its_ttl() {
    let Some(url) = controlled_backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    kvstore_testutils::paused_server_loses_lock(
        &opener(url),
        "zk",
        TTL,
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_comes_back_after_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    kvstore_testutils::restarted_server_keeps_registration(&opener(url), "zk", TTL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_replaced_and_knows_it_on_resuming() {
    let Some(url) = backend_url("KVSTORE_ZK_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // The server expires the paused holder's session within its timeout (the TTL).
    kvstore_testutils::paused_holder_is_replaced(
        &opener(url),
        "a_paused_holder_is_replaced_and_knows_it_on_resuming",
        TTL,
        TTL + Duration::from_secs(3),
    )
    .await;
}
