//! The conformance suite against a 3-node ZooKeeper ensemble through its multi-host URL
//! (`KVSTORE_ZK_CLUSTER_URL` = `zk://h1,h2,h3`; ci/servers.sh starts it as `zk-cluster`). The
//! failover checks under load are `kvstore-failover` (ci/failover.sh).

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::{ZkConfig, ZkStore};

fn opener() -> Option<Opener> {
    let config = ZkConfig::from_url(&backend_url("KVSTORE_ZK_CLUSTER_URL")?)
        .expect("valid zk URL")
        .with_session_timeout(Duration::from_secs(2));
    assert_eq!(config.hosts.len(), 3, "the URL names every server");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(ZkStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
