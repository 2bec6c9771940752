//! The conformance suite against a Redis primary found through Redis Sentinel
//! (`KVSTORE_REDIS_SENTINEL_URL`: ci/servers.sh starts a primary, one replica and three
//! Sentinels as `redis-sentinel`), with every write confirmed by the replica
//! (`wait_replicas=1`), so the `WAIT` path runs under every case.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use kvstore_core::Store;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testutils::{Opener, backend_url, secure};

fn opener() -> Option<Opener> {
    let url = backend_url("KVSTORE_REDIS_SENTINEL_URL")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    // A 2 s TTL, not the single server's 1 s: every renewal here also waits for the replica
    // (`WAIT`), and with the whole suite running on two cores one such renewal took long
    // enough to lose a 1 s hold (a false loss in `lock_bookkeeping_unreachable`, CI
    // 2026-12-03).
    Some(
        common::opener_for_url(&format!("{url}{sep}wait_replicas=1"))
            .with_ttl(std::time::Duration::from_secs(2)),
    )
}

kvstore_testutils::conformance_tests!(optional: opener());

/// The monitored servers take only an ACL login (ci/servers.sh turns the default user off)
/// and the Sentinels a password of their own: a wrong password, an unknown user or no login at
/// all, for either, is `PermissionDenied` within the suite's event timeout, never a transient
/// error or a hang.
#[tokio::test]
async fn a_refused_login_is_permission_denied() {
    let Some(url) = backend_url("KVSTORE_REDIS_SENTINEL_URL") else {
        return;
    };
    // `redis+sentinel://USER:PASSWORD@HOSTS/SERVICE?sentinel_password=…`: the multi-host form
    // is not a URL the url crate edits, so the logins are replaced as text.
    let (scheme, rest) = url.split_once("://").expect("a Sentinel URL");
    let (login, rest) = rest
        .split_once('@')
        .expect("the Sentinel URL carries the servers' login (ci/servers.sh sets one)");
    let (hosts, query) = rest
        .split_once("?sentinel_password=")
        .expect("the Sentinel URL carries the Sentinels' password (ci/servers.sh sets one)");
    let (user, _) = login.split_once(':').expect("a user and a password");
    let open = |url: String| async move {
        let config = RedisConfig::from_str(&url)?;
        Ok(Arc::new(RedisStore::open(config).await?) as Arc<dyn Store>)
    };
    let sentinels_login = format!("?sentinel_password={query}");
    for (login, sentinels_login, what) in [
        (
            format!("{user}:wrong-secret@"),
            sentinels_login.as_str(),
            "wrong password",
        ),
        (
            "nobody:wrong-secret@".to_owned(),
            &sentinels_login,
            "unknown user",
        ),
        (String::new(), &sentinels_login, "no login"),
        (
            format!("{login}@"),
            "?sentinel_password=wrong-secret",
            "wrong Sentinel password",
        ),
        (format!("{login}@"), "", "no Sentinel password"),
    ] {
        let refused = format!("{scheme}://{login}{hosts}{sentinels_login}");
        secure::assert_refused(&open, &refused, "kvstore-conformance/sentinel-auth", what).await;
    }
}
