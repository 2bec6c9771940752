//! Against an etcd that demands TLS with a client certificate and a user (auth enabled, a 2 s token TTL)
//! (`KVSTORE_ETCD_TLS_URL`; ci/servers.sh starts `etcd-tls`): the whole conformance suite,
//! and every refusal as `PermissionDenied`.

use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::secure::{self, Credential, tls_dir};
use kvstore_testutils::{backend_url, ok};

kvstore_testutils::secure_suite!(
    backend: kvstore_etcd::Etcd,
    var: "KVSTORE_ETCD_TLS_URL",
    ttl: Duration::from_secs(1),
    slack: Duration::from_secs(2),
);

#[tokio::test]
async fn refusals_are_permission_denied() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_ETCD_TLS_URL"), tls_dir()) else {
        return;
    };
    let wrong = secure::with_credential(&url, Credential::Password, "wrong-secret");
    secure::refused_credentials_and_certificates(open, &url, &wrong, &dir).await;
    // A user the server does not know is refused like a wrong password.
    let unknown = secure::with_user(&url, "nobody");
    secure::assert_refused(&open, &unknown, "kvstore-conformance/x", "unknown user").await;
    secure::assert_other_host_refused(&open, &url).await;
}

#[tokio::test]
async fn read_only_user_cannot_write() {
    let Some(url) = backend_url("KVSTORE_ETCD_TLS_URL") else {
        return;
    };
    secure::read_only_url_cannot_write(open, &url, &secure::with_user(&url, "reader")).await;
}

/// The token TTL `ci/servers.sh` gives `etcd-tls` (`--auth-token-ttl 2`, seconds).
const TOKEN_TTL: Duration = Duration::from_secs(2);

/// A store idle past its token's TTL (the server drops an unused simple token after it) keeps
/// working: the client authenticates again and retries. No event marks the expiry on the
/// server, so the test waits it out.
#[tokio::test]
async fn store_outlives_its_token() {
    let Some(url) = backend_url("KVSTORE_ETCD_TLS_URL") else {
        return;
    };
    let store = ok(open(url).await, "open");
    let dir = kvstore_testutils::scratch_dir("token-ttl");
    let key = format!("{dir}/k");
    ok(store.put(&key, b"1", None).await, "put with a fresh token");
    for round in 0..2 {
        tokio::time::sleep(TOKEN_TTL * 2 + Duration::from_millis(500)).await;
        let pair = ok(store.get(&key, None).await, "get after the token expired");
        ok(
            store.atomic_put(&key, b"2", Some(&pair), None).await,
            &format!("atomic_put after the token expired (round {round})"),
        );
        ok(store.put(&key, b"1", None).await, "put");
    }
    kvstore_testutils::cleanup(&*store, &dir).await;
    let _ = store.close().await;
}
