//! The conformance suite against a real Redis server (`KVSTORE_REDIS_URL`, set by ci/test.sh).

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let config =
        RedisConfig::from_url(&backend_url("KVSTORE_REDIS_URL")?).expect("valid Redis URL");
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(RedisStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        // Redis's active expiry cycle runs at 10 Hz; 1 s of slack covers a loaded machine.
        .with_ttl_slack(Duration::from_secs(1)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
