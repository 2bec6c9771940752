//! A client for the fault proxy the partition tests put between one client and a running
//! server: [Toxiproxy](https://github.com/Shopify/toxiproxy), whose HTTP API `ci/servers.sh`
//! serves on 127.0.0.1 (`KVSTORE_TOXIPROXY_URL`). A [`FaultProxy`] forwards a local port to
//! the server; [`cut`](FaultProxy::cut) drops every byte both ways while the sockets stay open
//! (the server goes on expiring the client's leases, as in a real partition),
//! [`delay`](FaultProxy::delay) adds latency, [`reset`](FaultProxy::reset) resets every
//! connection, and [`heal`](FaultProxy::heal) removes every fault.
//!
//! Toxiproxy's API (source: Toxiproxy README, "HTTP API" and "Toxics"): `POST /proxies`
//! creates a proxy (`listen` port 0 picks a free one, returned in the answer), `POST
//! /proxies/{name}/toxics` adds a toxic per direction (`stream`: `upstream` or `downstream`):
//! `timeout` with `timeout: 0` drops data until removed, `latency` delays each chunk,
//! `reset_peer` resets connections; `DELETE` removes a toxic or a proxy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{EVENT_TIMEOUT, backend_url};

/// Environment variable holding the Toxiproxy API's URL (`http://127.0.0.1:PORT`).
pub const TOXIPROXY_VAR: &str = "KVSTORE_TOXIPROXY_URL";

/// One proxy in front of a server; removed from Toxiproxy when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    api: String,
    name: String,
    listen: String,
    http: reqwest::Client,
}

impl FaultProxy {
    /// A proxy from a free port on 127.0.0.1 to `upstream` (`host:port`), or `None` (after
    /// saying so) when no Toxiproxy runs; with `KVSTORE_REQUIRE_BACKENDS` on, a missing one
    /// panics, like a missing server.
    ///
    /// # Panics
    ///
    /// When Toxiproxy refuses the proxy or does not answer within [`EVENT_TIMEOUT`].
    pub async fn start(upstream: &str) -> Option<FaultProxy> {
        let api = backend_url(TOXIPROXY_VAR)?;
        let http = reqwest::Client::builder()
            .timeout(EVENT_TIMEOUT)
            .build()
            .expect("an HTTP client");
        let name = format!("kvstore-{}", rand::random::<u64>());
        let created: Value = http
            .post(format!("{api}/proxies"))
            .json(&json!({
                "name": name,
                "listen": "127.0.0.1:0",
                "upstream": upstream,
                "enabled": true,
            }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("Toxiproxy creates the proxy")
            .json()
            .await
            .expect("Toxiproxy's answer");
        let listen = created["listen"]
            .as_str()
            .expect("the proxy's listen address")
            .to_owned();
        Some(FaultProxy {
            api,
            name,
            listen,
            http,
        })
    }

    /// The proxy's address (`127.0.0.1:PORT`): connect here instead of to the server.
    pub fn address(&self) -> &str {
        &self.listen
    }

    /// `url` with the server's address `upstream` replaced by the proxy's.
    pub fn url_through(&self, url: &str, upstream: &str) -> String {
        assert!(url.contains(upstream), "{url} does not name {upstream}");
        url.replacen(upstream, &self.listen, 1)
    }

    async fn add(&self, toxic: &str, kind: &str, attributes: Value) {
        for stream in ["upstream", "downstream"] {
            self.http
                .post(format!("{}/proxies/{}/toxics", self.api, self.name))
                .json(&json!({
                    "name": format!("{toxic}-{stream}"),
                    "type": kind,
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": attributes,
                }))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .unwrap_or_else(|e| panic!("Toxiproxy adds the {kind} toxic: {e}"));
        }
    }

    /// Cuts the client off: from now on no byte gets through in either direction, and no
    /// connection is closed, until [`heal`](Self::heal).
    pub async fn cut(&self) {
        self.add("cut", "timeout", json!({ "timeout": 0 })).await;
    }

    /// Delays every chunk by `latency` in each direction.
    pub async fn delay(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.add("delay", "latency", json!({ "latency": ms, "jitter": 0 }))
            .await;
    }

    /// Resets every connection (TCP RST) as data arrives, until [`heal`](Self::heal).
    pub async fn reset(&self) {
        self.add("reset", "reset_peer", json!({ "timeout": 0 }))
            .await;
    }

    /// Removes every fault: bytes flow again.
    pub async fn heal(&self) {
        let toxics: Vec<Value> = self
            .http
            .get(format!("{}/proxies/{}/toxics", self.api, self.name))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("Toxiproxy lists the toxics")
            .json()
            .await
            .expect("Toxiproxy's answer");
        for toxic in toxics {
            let name = toxic["name"].as_str().expect("a toxic's name");
            self.http
                .delete(format!("{}/proxies/{}/toxics/{name}", self.api, self.name))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .expect("Toxiproxy removes the toxic");
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Removing the proxy closes its connections; done in the background so that dropping
        // never blocks (there is always a runtime in the tests that create one).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (http, url) = (
                self.http.clone(),
                format!("{}/proxies/{}", self.api, self.name),
            );
            runtime.spawn(async move {
                let _ = http.delete(url).send().await;
            });
        }
    }
}
