//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{Opener, backend_url};

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    let config = RedisConfig::from_url(url).expect("valid Redis URL");
    Opener::new(move || {
        let config = config.clone();
        async move { Ok(Arc::new(RedisStore::open(config).await?) as Arc<dyn Store>) }
    })
    .with_ttl(Duration::from_secs(1))
    // Redis's active expiry cycle runs at 10 Hz; 1 s of slack covers a loaded machine.
    .with_ttl_slack(Duration::from_secs(1))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}
