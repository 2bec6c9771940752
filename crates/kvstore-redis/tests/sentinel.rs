//! The conformance suite against a Redis primary found through Redis Sentinel
//! (`KVSTORE_REDIS_SENTINEL_URL`: ci/servers.sh starts a primary, one replica and three
//! Sentinels as `redis-sentinel`), with every write confirmed by the replica
//! (`wait_replicas=1`), so the `WAIT` path runs under every case.

mod common;

use kvstore_testutils::{Opener, backend_url};

fn opener() -> Option<Opener> {
    let url = backend_url("KVSTORE_REDIS_SENTINEL_URL")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(common::opener_for_url(&format!(
        "{url}{sep}wait_replicas=1"
    )))
}

kvstore_testutils::conformance_tests!(optional: opener());
