//! Against a Consul agent that serves only HTTPS, demands a client certificate
//! (`verify_incoming`) and enforces ACLs with `default_policy = "deny"`
//! (`KVSTORE_CONSUL_TLS_URL` with the management token; ci/servers.sh starts `consul-tls`):
//! the whole conformance suite, and every refusal as `PermissionDenied`.

use std::time::Duration;

use kvstore_core::Store;
use kvstore_testutils::secure::{self, Credential, tls_dir};
use kvstore_testutils::{backend_url, ok};

kvstore_testutils::secure_suite!(
    backend: kvstore_consul::Consul,
    var: "KVSTORE_CONSUL_TLS_URL",
    ttl: Duration::from_secs(2),
    slack: Duration::from_secs(4),
);

#[tokio::test]
async fn refusals_are_permission_denied() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_CONSUL_TLS_URL"), tls_dir()) else {
        return;
    };
    let wrong = secure::with_credential(&url, Credential::Query("token"), "wrong-secret");
    secure::refused_credentials_and_certificates(open, &url, &wrong, &dir).await;
    let none = secure::with_query(&url, "token", None);
    secure::assert_refused(&open, &none, "kvstore-conformance/x", "no token").await;
    secure::assert_other_host_refused(&open, &url).await;
}

/// A token whose policy reads every key and writes none (`key_prefix "" { policy = "read" }`).
#[tokio::test]
async fn read_only_token_cannot_write() {
    let (Some(url), Some(reader)) = (
        backend_url("KVSTORE_CONSUL_TLS_URL"),
        backend_url("KVSTORE_CONSUL_TLS_READER_TOKEN"),
    ) else {
        return;
    };
    let reader_url = secure::with_credential(&url, Credential::Query("token"), &reader);
    secure::read_only_url_cannot_write(open, &url, &reader_url).await;
}

/// The agent's ACL HTTP API, called with the management token over the same mutual TLS.
struct AclApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AclApi {
    fn new(url: &str, dir: &std::path::Path) -> AclApi {
        let parsed = url::Url::parse(url).unwrap();
        let token = parsed
            .query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .expect("the URL holds the management token");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let identity = [read("client.pem"), read("client-key.pem")].concat();
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&read("ca.pem")).unwrap())
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .build()
            .unwrap();
        let base = format!(
            "https://{}:{}",
            parsed.host_str().unwrap(),
            parsed.port().unwrap()
        );
        AclApi { http, base, token }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: &str) -> serde_json::Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Consul-Token", &self.token)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

/// A store whose token is deleted while it holds a lock: its next call is `PermissionDenied`
/// and its lock reports the loss within the TTL (the session renewal is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_permission_denied_and_loses_locks() {
    let (Some(url), Some(dir)) = (backend_url("KVSTORE_CONSUL_TLS_URL"), tls_dir()) else {
        return;
    };
    let acl = AclApi::new(&url, &dir);
    let token = acl
        .call(
            reqwest::Method::PUT,
            "/v1/acl/token",
            r#"{"Description":"kvstore revoked-token test","Policies":[{"Name":"global-management"}]}"#,
        )
        .await;
    let (accessor, secret) = (
        token["AccessorID"].as_str().unwrap().to_owned(),
        token["SecretID"].as_str().unwrap().to_owned(),
    );
    let store = ok(
        open(secure::with_credential(
            &url,
            Credential::Query("token"),
            &secret,
        ))
        .await,
        "open with the new token",
    );
    let key = format!("{}/k", kvstore_testutils::scratch_dir("revoked"));
    ok(
        store.put(&key, b"before", None).await,
        "put before the revoke",
    );
    let ttl = Duration::from_secs(2);
    let opts = kvstore_core::LockOptions::default().with_ttl(ttl);
    let mut lock = ok(
        store.new_lock(&format!("{key}-lock"), Some(&opts)).await,
        "new_lock",
    );
    let lost = ok(lock.lock().await, "lock");

    acl.call(
        reqwest::Method::DELETE,
        &format!("/v1/acl/token/{accessor}"),
        "",
    )
    .await;
    match store.put(&key, b"after", None).await {
        Err(err @ kvstore_core::Error::PermissionDenied { .. }) => assert!(!err.is_transient()),
        other => panic!("a put with a deleted token must be PermissionDenied, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(ttl, lost).await.is_ok(),
        "the lock must report its loss within the TTL once its token is deleted"
    );
    assert_eq!(lock.fencing_token(), None);
    let admin = ok(open(url.clone()).await, "open with the management token");
    let pair = ok(admin.get(&key, None).await, "get");
    assert_eq!(&pair.value[..], b"before", "the refused put wrote nothing");
    kvstore_testutils::cleanup(&*admin, &key).await;
    let _ = (store.close().await, admin.close().await);
}
