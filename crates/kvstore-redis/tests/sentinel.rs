//! The conformance suite against a Redis primary found through Redis Sentinel
//! (`KVSTORE_REDIS_SENTINEL_URL`: ci/servers.sh starts a primary, one replica and three
//! Sentinels as `redis-sentinel`), with every write confirmed by the replica
//! (`wait_replicas=1`), so the `WAIT` path runs under every case.

use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let url = backend_url("KVSTORE_REDIS_SENTINEL_URL")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}wait_replicas=1");
    let config = RedisConfig::from_url(&url).expect("valid Redis Sentinel URL");
    assert_eq!(config.wait_replicas, 1);
    Some(
        Opener::new(move || {
            let config = config.clone();
            async move { Ok(Arc::new(RedisStore::connect(config).await?) as Arc<dyn Store>) }
        })
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(1)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());
