//! The liveness rule against a real PostgreSQL (`KVSTORE_POSTGRES_URL`, controlled by
//! ci/test.sh): a paused server (the postmaster and every connection's process), a restarted
//! server under a registration, a paused holder process, and a client cut off through the fault
//! proxy. They pause the server the other tests use, so they run one at a time.

use std::time::Duration;

use kvstore_testutils::Opener;

fn opener(url: String) -> Opener {
    Opener::backend::<kvstore_postgres::Postgres>(&url)
}

/// PostgreSQL measures expiry in microseconds on its own clock.
const TTL: Duration = Duration::from_secs(2);

kvstore_testutils::liveness_tests!(
    server: "postgres",
    url: "KVSTORE_POSTGRES_URL",
    opener: opener,
    ttl: TTL,
    // A waiter looks again at the holder's expiry, and at least every second.
    takeover: TTL + Duration::from_millis(1500),
    // Every store reaps expired keys every 250 ms.
    registration_slack: Duration::from_secs(1),
    registrant_pause: TTL * 2 + Duration::from_secs(1),
);
