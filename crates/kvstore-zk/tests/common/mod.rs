//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::{ZkConfig, ZkStore};

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    let config = ZkConfig::from_url(url)
        .expect("valid zk URL")
        .with_session_timeout(Duration::from_secs(2));
    Opener::new(move || {
        let config = config.clone();
        async move { Ok(Arc::new(ZkStore::open(config).await?) as Arc<dyn Store>) }
    })
    .with_ttl(Duration::from_secs(1))
    // The server reaps expired TTL nodes every 100 ms (znode.container.checkIntervalMs);
    // 2 s covers that and a loaded machine.
    .with_ttl_slack(Duration::from_secs(2))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}
