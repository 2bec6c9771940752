//! The liveness rule against a real Redis (`KVSTORE_REDIS_URL`, controlled by ci/test.sh): a
//! paused server, a restarted server under a registration (ci/test.sh runs Redis without
//! persistence, so the restart loses every key), a paused holder process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::Opener;

fn opener(url: String) -> Opener {
    Opener::new(move || {
        let url = url.clone();
        async move {
            let config = RedisConfig::from_str(&url)?;
            Ok(Arc::new(RedisStore::open(config).await?) as Arc<dyn Store>)
        }
    })
}

const TTL: Duration = Duration::from_secs(2);

kvstore_testutils::liveness_tests!(
    server: "redis",
    url: "KVSTORE_REDIS_URL",
    opener: opener,
    ttl: TTL,
    // The lock key's PX expiry frees it once the paused holder stops renewing.
    takeover: TTL + Duration::from_secs(2),
    // Redis expires the key itself, within ~100 ms of its deadline.
    registration_slack: Duration::from_secs(1),
    registrant_pause: TTL * 2 + Duration::from_secs(1),
);
