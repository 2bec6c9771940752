//! The conformance suite against a 3-member etcd 3.6 cluster through its multi-endpoint URL
//! (`KVSTORE_ETCD_CLUSTER_URL` = `etcd://h1,h2,h3`; ci/servers.sh starts it as
//! `etcd-cluster`). The failover checks under load are `kvstore-failover` (ci/failover.sh).

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let config =
        EtcdConfig::from_url(&backend_url("KVSTORE_ETCD_CLUSTER_URL")?).expect("valid etcd URL");
    assert_eq!(config.endpoints.len(), 3, "the URL names every member");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(EtcdStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
