//! Against the TLS ZooKeeper of `tls.rs` (`KVSTORE_ZK_TLS_URL`), authenticating with SASL
//! DIGEST-MD5 (`auth=sasl`; ci/servers.sh gives the server a JAAS `Server` section with the
//! users `kv` and `reader`): the whole conformance suite, and a wrong password refused at
//! connect.

use std::str::FromStr;
use std::sync::Arc;

use kvstore_core::{Result, Store};
use kvstore_testutils::secure::{self, Credential};
use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::{ZkAuth, ZkConfig, ZkStore};

async fn open(url: String) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(ZkStore::open_url(&url).await?) as Arc<dyn Store>)
}

fn sasl_url() -> Option<String> {
    let url = backend_url("KVSTORE_ZK_TLS_URL")?;
    Some(secure::with_query(&url, "auth", Some("sasl")))
}

fn opener() -> Option<Opener> {
    let url = sasl_url()?;
    Some(Opener::new(move || open(url.clone())))
}

kvstore_testutils::conformance_tests!(optional: opener());

#[tokio::test]
async fn sasl_refuses_a_wrong_password_and_other_users() {
    let Some(url) = sasl_url() else { return };
    assert_eq!(
        ZkConfig::from_str(&url).unwrap().auth,
        ZkAuth::SaslDigestMd5
    );
    let wrong = secure::with_credential(&url, Credential::Password, "wrong-secret");
    secure::assert_refused(
        &open,
        &wrong,
        "kvstore-conformance/sasl",
        "wrong SASL password",
    )
    .await;
    // Znodes of `sasl:kv` with `acl=creator_read`: `sasl:reader` reads but cannot write. (The
    // creator ACL also grants the creator's certificate, so the reader brings its own.)
    let Some(dir) = secure::tls_dir() else { return };
    let writer_url = secure::with_query(&url, "acl", Some("creator_read"));
    let reader_url =
        secure::with_client_certificate(&secure::with_user(&url, "reader"), &dir, "reader");
    secure::read_only_url_cannot_write(open, &writer_url, &reader_url).await;
}
