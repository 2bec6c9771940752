//! Against a ZooKeeper that demands TLS with a client certificate (`secureClientPort`,
//! `ssl.clientAuth=need`; `KVSTORE_ZK_TLS_URL`, ci/servers.sh starts `zk-tls`), with digest
//! credentials and creator ACLs: the whole conformance suite, and every refusal as
//! `PermissionDenied`.

use kvstore_core::Store;
use kvstore_testutils::backend_url;
use kvstore_testutils::secure::{self, Credential, tls_dir};

kvstore_testutils::secure_suite!(
    backend: kvstore_zk::Zk,
    var: "KVSTORE_ZK_TLS_URL",
);

/// A wrong digest password is another identity to ZooKeeper: it connects, and the creator
/// ACLs of the real user's znodes refuse its writes. The creator ACL (`auth`) grants every
/// identity of the creating session, its client certificate's too, so the wrong password is
/// tried with another valid certificate ("reader").
#[tokio::test]
async fn refusals_are_permission_denied() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_ZK_TLS_URL"), tls_dir()) else {
        return;
    };
    let wrong = secure::with_credential(
        &secure::with_client_certificate(&url, &dir, "reader"),
        Credential::Password,
        "wrong-secret",
    );
    secure::refused_credentials_and_certificates(open, &url, &wrong, &dir).await;
    // The client verifies the URL's host (no `tls_server_name` here): a TLS endpoint on
    // 127.0.0.1 whose certificate, from the trusted CA, names another host is refused.
    secure::assert_other_host_endpoint_refused(&open, &url, &dir).await;
}

/// Znodes created with `acl=creator_read` are readable by anyone and writable only by their
/// creator.
#[tokio::test]
async fn read_only_user_cannot_write() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_ZK_TLS_URL"), tls_dir()) else {
        return;
    };
    let writer_url = secure::with_query(&url, "acl", Some("creator_read"));
    let reader_url =
        secure::with_client_certificate(&secure::with_user(&url, "reader"), &dir, "reader");
    secure::read_only_url_cannot_write(open, &writer_url, &reader_url).await;
}
