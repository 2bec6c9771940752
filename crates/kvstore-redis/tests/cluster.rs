//! A Redis in Cluster mode (`KVSTORE_REDIS_CLUSTER_URL`; ci/servers.sh starts `redis-cluster`)
//! is refused at connect with a permanent `InvalidConfig` that names the reason, before
//! anything is written.

use kvstore_core::Error;
use kvstore_redis::RedisStore;
use kvstore_testutils::{backend_url, error_chain};

#[tokio::test]
async fn a_cluster_mode_server_is_refused_at_connect() {
    let Some(url) = backend_url("KVSTORE_REDIS_CLUSTER_URL") else {
        return;
    };
    match RedisStore::open_url(&url).await {
        Err(err @ Error::InvalidConfig { .. }) => {
            assert!(!err.is_transient());
            let text = error_chain(&err);
            assert!(text.contains("Cluster mode"), "{text}");
        }
        other => panic!("a Cluster-mode server must be refused, got {other:?}"),
    }
}
