//! The conformance suite against etcd 3.6, the current upstream release (`KVSTORE_ETCD36_URL`;
//! ci/servers.sh builds the version pinned in `ci/etcd/go.mod` and starts it as `etcd36`), beside
//! Debian's 3.4 in `conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let config = EtcdConfig::from_url(&backend_url("KVSTORE_ETCD36_URL")?).expect("valid etcd URL");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(EtcdStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        // etcd checks lease expiry about every 500 ms; 2 s covers that and a loaded machine.
        .with_ttl_slack(Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
