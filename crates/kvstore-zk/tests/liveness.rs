//! The liveness rule against a real ZooKeeper (`KVSTORE_ZK_URL`, controlled by ci/test.sh): a
//! paused server, a restarted server under a registration, and a paused holder process. They
//! pause the server the other tests use, so they run one at a time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::Opener;
use kvstore_zk::{ZkConfig, ZkStore};

/// The store's own session (which pins `keep_alive` keys) has the registration TTL, so a
/// restart longer than that expires it, as a long outage would.
fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = ZkConfig::from_str(&url)?;
            Ok(Arc::new(ZkStore::open(config).await?) as Arc<dyn Store>)
        }
    })
}

const TTL: Duration = Duration::from_secs(2);

kvstore_testutils::liveness_tests!(
    server: "zk",
    url: "KVSTORE_ZK_URL",
    opener: opener,
    ttl: TTL,
    // The server expires the paused holder's session within its timeout (the TTL).
    takeover: TTL + Duration::from_secs(3),
    // 1 s plus the container check interval (100 ms in CI).
    registration_slack: Duration::from_millis(1100),
    // Past the registrant's session timeout, so it comes back on a new session.
    registrant_pause: Duration::from_secs(12),
);
