//! Against a PostgreSQL that demands TLS with a client certificate and a password
//! (`KVSTORE_POSTGRES_TLS_URL`; ci/servers.sh starts `postgres-tls`): the whole conformance
//! suite, and every refusal as `PermissionDenied`.

use std::time::Duration;

use kvstore_testutils::backend_url;
use kvstore_testutils::secure::{self, Credential, tls_dir};

kvstore_testutils::secure_suite!(
    backend: kvstore_postgres::Postgres,
    var: "KVSTORE_POSTGRES_TLS_URL",
    // 2 s: a check at 80 % of a 1 s TTL could be answered only after the TTL when four suites
    // ran at once and the pool was opening TLS connections.
    ttl: Duration::from_secs(2),
    slack: Duration::from_secs(1),
);

#[tokio::test]
async fn refusals_are_permission_denied() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_POSTGRES_TLS_URL"), tls_dir()) else {
        return;
    };
    let wrong = secure::with_credential(&url, Credential::Password, "wrong-secret");
    secure::refused_credentials_and_certificates(open, &url, &wrong, &dir).await;
    // A user the server does not know is refused like a wrong password.
    let unknown = secure::with_user(&url, "nobody");
    secure::assert_refused(&open, &unknown, "kvstore-conformance/x", "unknown user").await;
    secure::assert_other_host_refused(&open, &url).await;
    // TLS off: the server has no line for a plain connection.
    let plain = ["tls_ca", "tls_cert", "tls_key"]
        .iter()
        .fold(url.clone(), |u, name| secure::with_query(&u, name, None));
    secure::assert_refused(&open, &plain, "kvstore-conformance/x", "no TLS").await;
}

#[tokio::test]
async fn read_only_user_cannot_write() {
    let Some(url) = backend_url("KVSTORE_POSTGRES_TLS_URL") else {
        return;
    };
    secure::read_only_url_cannot_write(open, &url, &secure::with_user(&url, "reader")).await;
}
