//! The slice of Consul's HTTP API kvstore uses: KV reads (plain and blocking), `/v1/txn`,
//! and sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use backon::ExponentialBuilder;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kvstore_core::{Error, Result};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::BACKEND;
use crate::config::ConsulConfig;
use crate::error::{from_reqwest, from_status, refused_session_ttl_min, ttl_below_minimum};

/// Everything but RFC 3986 unreserved characters is escaped in a key segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One KV entry as Consul returns it (source: Consul docs, "KV Store - HTTP API", read key).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub(crate) key: String,
    /// Base64 of the value; `null` for an empty value.
    #[serde(default)]
    pub(crate) value: Option<String>,
    pub(crate) modify_index: u64,
    #[serde(default)]
    pub(crate) session: Option<String>,
}

impl Entry {
    pub(crate) fn value(&self) -> Result<Vec<u8>> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(b64) => BASE64
                .decode(b64)
                .map_err(|e| Error::backend(BACKEND, format!("bad base64 from Consul: {e}"))),
        }
    }
}

/// The outcome of a transaction (source: Consul docs, "Transactions - HTTP API").
pub(crate) enum Txn {
    /// Committed; the KV results in order.
    Done(Vec<Entry>),
    /// Rolled back; the index of the first failed operation and why.
    Failed { op: usize, what: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: Option<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// A KV operation of a transaction.
pub(crate) fn op(verb: &str, key: &str) -> Value {
    json!({ "KV": { "Verb": verb, "Key": key } })
}

/// A KV operation with a value.
pub(crate) fn op_value(verb: &str, key: &str, value: &[u8]) -> Value {
    json!({ "KV": { "Verb": verb, "Key": key, "Value": BASE64.encode(value) } })
}

/// A KV operation checked against an index.
pub(crate) fn op_index(verb: &str, key: &str, index: u64) -> Value {
    json!({ "KV": { "Verb": verb, "Key": key, "Index": index } })
}

/// `lock` of `key` by `session` with a value.
pub(crate) fn op_lock(key: &str, value: &[u8], session: &str) -> Value {
    json!({ "KV": { "Verb": "lock", "Key": key, "Value": BASE64.encode(value), "Session": session } })
}

/// A check that `key` is locked by `session` (source: Consul docs, "Transactions" → KV
/// operations, verb `check-session`: the transaction fails unless it is).
pub(crate) fn op_check_session(key: &str, session: &str) -> Value {
    json!({ "KV": { "Verb": "check-session", "Key": key, "Session": session } })
}

/// How a read is served (source: Consul docs, "Consistency Modes").
#[derive(Debug, Clone, Copy)]
pub(crate) enum Consistency {
    /// `?consistent`: the leader confirms it is still the leader before answering.
    Consistent,
    /// `?stale`: any server answers.
    Stale,
}

impl Consistency {
    /// `Consistent` for a consistent read, else `Stale`.
    pub(crate) fn of(consistent: bool) -> Self {
        if consistent {
            Consistency::Consistent
        } else {
            Consistency::Stale
        }
    }
}

/// Adds `tls` to the HTTP client: only the CA file's roots (else the platform's), the client
/// identity, and, for another server name, `address` rewritten to that name and resolved to
/// the original address.
fn tls_client(
    mut builder: reqwest::ClientBuilder,
    tls: &kvstore_core::TlsConfig,
    address: &mut url::Url,
) -> Result<reqwest::ClientBuilder> {
    let invalid = |e: reqwest::Error| Error::invalid_config(BACKEND, e);
    kvstore_core::backend::tls::install_crypto_provider();
    let files = kvstore_core::backend::load_tls(tls, BACKEND)?;
    if let Some(ca) = &files.ca {
        builder =
            builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(ca).map_err(invalid)?);
    }
    if let Some((cert, key)) = &files.identity {
        // reqwest reads the certificate chain and the key from one PEM buffer.
        let pem = [cert.as_slice(), b"\n", key.as_slice()].concat();
        builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(invalid)?);
    }
    if let Some(name) = &files.server_name {
        let host_port = format!(
            "{}:{}",
            address.host_str().unwrap_or_default(),
            address.port_or_known_default().unwrap_or(8500)
        );
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
            .map_err(|e| Error::invalid_config(BACKEND, format!("{host_port}: {e}")))?
            .collect();
        builder = builder.resolve_to_addrs(name, &addrs);
        address
            .set_host(Some(name))
            .map_err(|e| Error::invalid_config(BACKEND, format!("tls_server_name={name}: {e}")))?;
    }
    Ok(builder)
}

/// Typed access to one agent.
#[derive(Debug)]
pub(crate) struct Api {
    http: reqwest::Client,
    pub(crate) config: ConsulConfig,
    /// The agent's `session_ttl_min` in ms once a refusal has told it (0: not known yet).
    min_session_ttl_ms: AtomicU64,
    /// Requests in flight at once, blocking queries aside (`max_requests`).
    request_budget: Semaphore,
    /// Blocking queries in flight at once (`max_watch_queries`).
    watch_budget: Semaphore,
}

/// A whole answer of the agent, read within the budget.
struct Reply {
    status: StatusCode,
    /// `X-Consul-Index` (0 when absent).
    index: u64,
    body: bytes::Bytes,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::backend(BACKEND, e))
    }
}

impl Api {
    pub(crate) fn new(mut config: ConsulConfig) -> Result<Self> {
        // Connection pooling is reqwest's default; proxies from the environment are not used
        // (the agent is usually local).
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .no_proxy();
        if let Some(tls) = &config.tls {
            builder = tls_client(builder, tls, &mut config.address)?;
        }
        let http = builder
            .build()
            .map_err(|e| Error::invalid_config(BACKEND, e))?;
        Ok(Api {
            http,
            request_budget: Semaphore::new(config.max_requests),
            watch_budget: Semaphore::new(config.max_watch_queries),
            config,
            min_session_ttl_ms: AtomicU64::new(0),
        })
    }

    /// The agent's `session_ttl_min`, once a refused session has told it.
    pub(crate) fn min_session_ttl(&self) -> Duration {
        Duration::from_millis(self.min_session_ttl_ms.load(Ordering::Relaxed))
    }

    /// `/v1/kv/<key>` with the key's segments percent-encoded.
    fn kv_url(&self, key: &str) -> url::Url {
        let encoded: Vec<String> = key
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        let mut url = self.config.address.clone();
        url.set_path(&format!("v1/kv/{}", encoded.join("/")));
        url
    }

    fn request(&self, method: Method, mut url: url::Url) -> RequestBuilder {
        {
            let mut query = url.query_pairs_mut();
            if let Some(dc) = &self.config.datacenter {
                query.append_pair("dc", dc);
            }
            if let Some(ns) = &self.config.namespace {
                query.append_pair("ns", ns);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.config.token {
            request = request.header("X-Consul-Token", token);
        }
        request
    }

    /// Sends a request within the request budget (a blocking query within the watch budget),
    /// reads the whole answer, and maps transport failures and the agent's error statuses.
    /// A `429 Too Many Requests` (the agent's per-client limits) is retried with backoff
    /// (10 ms doubling to 1 s) until `timeout` has passed, then reported as `Timeout`.
    async fn send(
        &self,
        request: RequestBuilder,
        timeout: Duration,
        blocking: bool,
    ) -> Result<Reply> {
        let budget = if blocking {
            &self.watch_budget
        } else {
            &self.request_budget
        };
        let started = tokio::time::Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let attempt = request
                .try_clone()
                .ok_or_else(|| Error::backend(BACKEND, "a request body that cannot be resent"))?;
            let reply = {
                // Queued here, never failed, when the budget is in use.
                let _permit = budget
                    .acquire()
                    .await
                    .map_err(|_| Error::Closed { backend: BACKEND })?;
                let response = attempt
                    .timeout(timeout.saturating_sub(started.elapsed()))
                    .send()
                    .await
                    .map_err(from_reqwest)?;
                let status = response.status();
                let index = response
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let body = response.bytes().await.map_err(from_reqwest)?;
                Reply {
                    status,
                    index,
                    body,
                }
            };
            let status = reply.status;
            if status.is_success()
                || status == StatusCode::NOT_FOUND
                || status == StatusCode::CONFLICT
            {
                return Ok(reply);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                if started.elapsed() + delay >= timeout {
                    return Err(Error::Timeout);
                }
                tracing::debug!(
                    backend = BACKEND,
                    "the agent answered 429 Too Many Requests; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            let body = String::from_utf8_lossy(&reply.body);
            if let Some(min) = refused_session_ttl_min(&body) {
                let min_ms = u64::try_from(min.as_millis()).unwrap_or(u64::MAX);
                self.min_session_ttl_ms.store(min_ms, Ordering::Relaxed);
            }
            return Err(from_status(status, &body));
        }
    }

    /// Reads `key` (with `recurse`, every key starting with it). With `block`, a blocking
    /// query that returns when the index passes the given one or the wait ends (source:
    /// Consul docs, "Blocking Queries"). Returns the entries (empty for 404) and
    /// `X-Consul-Index`.
    pub(crate) async fn get(
        &self,
        key: &str,
        recurse: bool,
        consistency: Consistency,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<Entry>, u64)> {
        let mut url = self.kv_url(key);
        {
            let mut query = url.query_pairs_mut();
            if recurse {
                query.append_key_only("recurse");
            }
            match consistency {
                Consistency::Consistent if block.is_none() => {
                    query.append_key_only("consistent");
                }
                Consistency::Consistent => {}
                Consistency::Stale => {
                    query.append_key_only("stale");
                }
            }
            if let Some((index, wait)) = block {
                query.append_pair("index", &index.to_string());
                query.append_pair("wait", &format!("{}ms", wait.as_millis()));
            }
        }
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = self.config.request_timeout
            + block.map_or(Duration::ZERO, |(_, wait)| wait + wait / 16);
        let reply = self
            .send(self.request(Method::GET, url), timeout, block.is_some())
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), reply.index));
        }
        Ok((reply.json::<Vec<Entry>>()?, reply.index))
    }

    /// Runs a transaction (at most 64 operations; source: Consul docs, "Transactions").
    pub(crate) async fn txn(&self, ops: Vec<Value>) -> Result<Txn> {
        let mut url = self.config.address.clone();
        url.set_path("v1/txn");
        let request = self.request(Method::PUT, url).json(&ops);
        let reply = self
            .send(request, self.config.request_timeout, false)
            .await?;
        let conflict = reply.status == StatusCode::CONFLICT;
        let body: TxnResponse = reply.json()?;
        if conflict || body.errors.as_ref().is_some_and(|e| !e.is_empty()) {
            let first = body.errors.unwrap_or_default().into_iter().next();
            return Ok(match first {
                Some(err) => Txn::Failed {
                    op: err.op_index,
                    what: err.what,
                },
                None => Txn::Failed {
                    op: 0,
                    what: "transaction rolled back".into(),
                },
            });
        }
        Ok(Txn::Done(
            body.results
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.kv)
                .collect(),
        ))
    }

    /// Creates a session with this TTL (whole seconds, rounded up), invalidation `behavior`
    /// (`delete` or `release`) and no lock delay; returns its ID (source: Consul docs,
    /// "Session - HTTP API").
    pub(crate) async fn create_session(
        &self,
        ttl: Duration,
        behavior: &str,
        name: &str,
    ) -> Result<String> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let min = self.min_session_ttl();
        if ttl < min {
            return Err(ttl_below_minimum(min));
        }
        let mut url = self.config.address.clone();
        url.set_path("v1/session/create");
        let body = json!({
            "Name": name,
            "TTL": format!("{}s", session_seconds(ttl)),
            "Behavior": behavior,
            "LockDelay": "0s",
        });
        let created: Created = self
            .send(
                self.request(Method::PUT, url).json(&body),
                self.config.request_timeout,
                false,
            )
            .await?
            .json()?;
        Ok(created.id)
    }

    /// Renews a session; `false` when it no longer exists.
    pub(crate) async fn renew_session(&self, id: &str) -> Result<bool> {
        let mut url = self.config.address.clone();
        url.set_path(&format!("v1/session/renew/{id}"));
        let reply = self
            .send(
                self.request(Method::PUT, url),
                self.config.request_timeout,
                false,
            )
            .await?;
        Ok(reply.status != StatusCode::NOT_FOUND)
    }

    /// Destroys a session: its locks are released (or their keys deleted, per its behavior).
    pub(crate) async fn destroy_session(&self, id: &str) -> Result<()> {
        let mut url = self.config.address.clone();
        url.set_path(&format!("v1/session/destroy/{id}"));
        self.send(
            self.request(Method::PUT, url),
            self.config.request_timeout,
            false,
        )
        .await
        .map(drop)
    }

    /// `GET /v1/status/leader`: checks that the agent answers and has a leader.
    pub(crate) async fn leader(&self) -> Result<String> {
        let mut url = self.config.address.clone();
        url.set_path("v1/status/leader");
        let leader: String = self
            .send(
                self.request(Method::GET, url),
                self.config.connect_timeout,
                false,
            )
            .await?
            .json()?;
        if leader.is_empty() {
            return Err(Error::not_reachable(
                BACKEND,
                "the Consul cluster has no leader",
            ));
        }
        Ok(leader)
    }
}

/// The index for the next blocking query after one that returned `returned`, following
/// `previous`: reset to 0 (a plain read) when the index went backwards, and never 0 after a
/// successful read (source: Consul docs, "Blocking Queries" — "Reset the index if it goes
/// backwards", "Sanity check index is greater than zero").
pub(crate) fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// Session TTLs are whole seconds: round up so nothing expires early.
pub(crate) fn session_seconds(ttl: Duration) -> u64 {
    ttl.as_millis()
        .div_ceil(1000)
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_per_segment() {
        let api = Api::new(ConsulConfig::new("127.0.0.1:8500").unwrap()).unwrap();
        assert_eq!(
            api.kv_url("a b/ü?/\u{1}x").as_str(),
            "http://127.0.0.1:8500/v1/kv/a%20b/%C3%BC%3F/%01x"
        );
    }

    #[test]
    fn blocking_indexes_reset_when_they_go_backwards() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn session_ttls_round_up() {
        assert_eq!(session_seconds(Duration::from_millis(1)), 1);
        assert_eq!(session_seconds(Duration::from_millis(1001)), 2);
    }
}
