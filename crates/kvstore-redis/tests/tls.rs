//! Against a Redis that demands TLS with a client certificate and an ACL user
//! (`KVSTORE_REDIS_TLS_URL`; ci/servers.sh starts `redis-tls`): the whole conformance suite,
//! and every refusal as `PermissionDenied`.

use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::backend_url;
use kvstore_testutils::secure::{self, Credential, tls_dir};

kvstore_testutils::secure_suite!(
    backend: kvstore_redis::Redis,
    var: "KVSTORE_REDIS_TLS_URL",
    ttl: Duration::from_secs(1),
    slack: Duration::from_secs(1),
);

#[tokio::test]
async fn refusals_are_permission_denied() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_REDIS_TLS_URL"), tls_dir()) else {
        return;
    };
    let wrong = secure::with_credential(&url, Credential::Password, "wrong-secret");
    secure::refused_credentials_and_certificates(open, &url, &wrong, &dir).await;
    // A user the server does not know is refused like a wrong password.
    let unknown = secure::with_user(&url, "nobody");
    secure::assert_refused(&open, &unknown, "kvstore-conformance/x", "unknown user").await;
    // The client verifies the URL's host (no `tls_server_name` here): a TLS endpoint on
    // 127.0.0.1 whose certificate, from the trusted CA, names another host is refused.
    secure::assert_other_host_endpoint_refused(&open, &url, &dir).await;
}

#[tokio::test]
async fn read_only_user_cannot_write() {
    let Some(url) = backend_url("KVSTORE_REDIS_TLS_URL") else {
        return;
    };
    secure::read_only_url_cannot_write(open, &url, &secure::with_user(&url, "reader")).await;
}
