//! Data written by other clients, against a real Consul agent (`KVSTORE_CONSUL_URL`): keys
//! written the way valkeyrie and `consul kv put` write them are read exactly by kvstore, and
//! what kvstore writes is what `consul kv get` shows. Pins the claims of docs/go-migration.md.

use kvstore_consul::{ConsulConfig, ConsulStore};
use kvstore_core::Store;
use kvstore_testutils::{
    backend_url, cas_on_foreign_key, foreign_sample, ok, reads_foreign_sample, scratch_dir,
    watches_see_foreign_write,
};
use std::str::FromStr;

struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(url: &str) -> Raw {
        let config = ConsulConfig::from_str(url).unwrap();
        Raw {
            http: reqwest::Client::new(),
            base: config.address.as_str().trim_end_matches('/').to_owned(),
        }
    }

    /// `consul kv put KEY VALUE`: the raw bytes as the body (Consul docs, "KV Store - HTTP
    /// API"); with `session`, acquired by that session (valkeyrie's TTL keys).
    async fn put(&self, key: &str, value: &[u8], session: Option<&str>) {
        let mut url = format!("{}/v1/kv/{key}", self.base);
        if let Some(session) = session {
            url.push_str(&format!("?acquire={session}"));
        }
        let response = self
            .http
            .put(url)
            .body(value.to_vec())
            .send()
            .await
            .expect("raw put");
        assert!(response.status().is_success(), "{}", response.status());
        assert_eq!(response.text().await.unwrap(), "true");
    }

    /// `consul kv get KEY`: the raw bytes (`?raw`).
    async fn get(&self, key: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("{}/v1/kv/{key}?raw", self.base))
            .send()
            .await
            .expect("raw get");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.unwrap().to_vec()
    }

    /// A session with a TTL and `Behavior=delete`, as valkeyrie creates for a TTL key.
    async fn ttl_session(&self) -> String {
        let body: serde_json::Value = self
            .http
            .put(format!("{}/v1/session/create", self.base))
            .json(&serde_json::json!({"TTL": "30s", "Behavior": "delete"}))
            .send()
            .await
            .expect("session create")
            .json()
            .await
            .unwrap();
        body["ID"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn keys_written_like_valkeyrie_read_exactly() {
    let Some(url) = backend_url("KVSTORE_CONSUL_URL") else {
        return;
    };
    let raw = Raw::new(&url);
    let store = ok(ConsulStore::open_url(&url).await, "connect");
    let dir = scratch_dir("foreign");
    let session = raw.ttl_session().await;
    for (key, value) in foreign_sample() {
        let session = (key == "ttl30").then_some(session.as_str());
        raw.put(&format!("{dir}/{key}"), &value, session).await;
    }
    reads_foreign_sample(&store, &dir, &[]).await;
    cas_on_foreign_key(&store, &format!("{dir}/a/b/c")).await;

    let key = format!("{dir}/live");
    watches_see_foreign_write(&store, &dir, &key, b"from consul kv", || async {
        raw.put(&key, b"from consul kv", None).await;
    })
    .await;

    // The reverse: `consul kv get` sees kvstore's bytes under the same key.
    let value: Vec<u8> = (0..=255u8).rev().collect();
    ok(store.put(&format!("{dir}/mine"), &value, None).await, "put");
    assert_eq!(raw.get(&format!("{dir}/mine")).await, value);
    ok(store.delete_tree(&dir).await, "delete_tree");
}
