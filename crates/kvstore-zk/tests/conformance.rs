//! The conformance suite against a real ZooKeeper (`KVSTORE_ZK_URL`, set by ci/test.sh, which
//! runs the server with TTL nodes enabled and a 100 ms container check interval).

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::{ZkConfig, ZkStore};

fn opener() -> Option<Opener> {
    let config = ZkConfig::from_url(&backend_url("KVSTORE_ZK_URL")?)
        .expect("valid zk URL")
        .with_session_timeout(Duration::from_secs(2));
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(ZkStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        // The server reaps expired TTL nodes every 100 ms (znode.container.checkIntervalMs);
        // 2 s covers that and a loaded machine.
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
