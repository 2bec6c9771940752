//! The liveness rule against a real Consul agent (`KVSTORE_CONSUL_URL`, controlled by
//! ci/test.sh): a paused agent, a restarted agent under a registration, a paused holder process,
//! and the sessions left after rewriting a registration. They pause the agent the other tests
//! use, so they run one at a time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kvstore_consul::{ConsulConfig, ConsulStore};
use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url, eventually, ok, scratch_dir};

fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = ConsulConfig::from_str(&url)?;
            Ok(Arc::new(ConsulStore::open(config).await?) as Arc<dyn Store>)
        }
    })
}

/// Session TTLs are whole seconds; ci/test.sh lowers `session_ttl_min` to 1 s.
const TTL: Duration = Duration::from_secs(2);

kvstore_testutils::liveness_tests!(
    server: "consul",
    url: "KVSTORE_CONSUL_URL",
    opener: opener,
    ttl: TTL,
    // Consul invalidates a session between TTL and 2×TTL after its last renewal.
    takeover: TTL * 2 + Duration::from_secs(3),
    registration_slack: Duration::from_secs(1),
    registrant_pause: TTL * 2 + Duration::from_secs(1),
);

async fn sessions(http: &reqwest::Client, base: &str) -> usize {
    let list: Vec<serde_json::Value> = http
        .get(format!("{base}/v1/session/list"))
        .send()
        .await
        .expect("session list")
        .json()
        .await
        .expect("session list JSON");
    list.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_a_registration_leaves_one_session() {
    let Some(url) = backend_url("KVSTORE_CONSUL_URL") else {
        return;
    };
    let _serial = liveness::LIVENESS_SERIAL.lock().await;
    let config = ConsulConfig::from_str(&url).unwrap();
    let base = config.address.as_str().trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let before = sessions(&http, &base).await;
    let store = ok(ConsulStore::open(config).await, "connect");
    let key = format!("{}/svc", scratch_dir("rewrites"));
    kvstore_testutils::rewrite_registration(&store, &key, 1000, Duration::from_secs(30)).await;
    // Replaced sessions are destroyed in the background; wait (bounded) for them to go.
    let settled = eventually(Duration::from_secs(20), || async {
        sessions(&http, &base).await <= before + 1
    })
    .await;
    assert!(
        settled,
        "1,000 rewrites must leave one session, not {}",
        sessions(&http, &base).await - before
    );
    ok(store.delete(&key).await, "delete");
    let gone = eventually(Duration::from_secs(10), || async {
        sessions(&http, &base).await <= before
    })
    .await;
    assert!(gone, "deleting the key must end its session");
    ok(store.close().await, "close");
}
