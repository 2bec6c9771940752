//! The conformance suite against a real Consul agent (`KVSTORE_CONSUL_URL`, set by
//! ci/test.sh, which starts `consul agent -dev` with `session_ttl_min = "1s"`).

use std::sync::Arc;
use std::time::Duration;

use kvstore_consul::{ConsulConfig, ConsulStore};
use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let config =
        ConsulConfig::from_url(&backend_url("KVSTORE_CONSUL_URL")?).expect("valid consul URL");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(ConsulStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        // Consul invalidates a session between TTL and 2×TTL after its last renewal; 2 s
        // covers that and a loaded machine.
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
