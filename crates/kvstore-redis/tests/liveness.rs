//! The liveness rule against a real Redis (`KVSTORE_REDIS_URL`, controlled by ci/test.sh): a
//! paused server, a restarted server under a registration, a paused holder process. They stop
//! the server the other tests use, so they run one at a time.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{Opener, backend_url, controlled_backend_url};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = RedisConfig::from_url(&url::Url::parse(&url).unwrap())?;
            Ok(Arc::new(RedisStore::connect(config).await?) as Arc<dyn Store>)
        }
    })
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_ends_the_hold_within_its_ttl() {
    let Some(url) = controlled_backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    kvstore_testutils::paused_server_loses_lock(
        &opener(url),
        "redis",
        TTL,
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_comes_back_after_a_server_restart() {
    let Some(url) = controlled_backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // ci/test.sh runs Redis without persistence: the restart loses every key.
    kvstore_testutils::restarted_server_keeps_registration(&opener(url), "redis", TTL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_replaced_and_knows_it_on_resuming() {
    let Some(url) = backend_url("KVSTORE_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // The lock key's PX expiry frees it once the paused holder stops renewing.
    kvstore_testutils::paused_holder_is_replaced(
        &opener(url),
        "a_paused_holder_is_replaced_and_knows_it_on_resuming",
        TTL,
        TTL + Duration::from_secs(2),
    )
    .await;
}
