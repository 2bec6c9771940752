//! The conformance suite against a 3-server Consul cluster, through a client agent as on an
//! application host (`KVSTORE_CONSUL_CLUSTER_URL`; ci/servers.sh starts it as
//! `consul-cluster`). The failover checks under load are `kvstore-failover` (ci/failover.sh).

use std::sync::Arc;
use std::time::Duration;

use kvstore_consul::{ConsulConfig, ConsulStore};
use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let config = ConsulConfig::from_url(&backend_url("KVSTORE_CONSUL_CLUSTER_URL")?)
        .expect("valid consul URL");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(ConsulStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
