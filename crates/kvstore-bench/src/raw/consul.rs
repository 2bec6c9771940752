//! Consul over reqwest.

use super::channel;
use crate::Op;
use crate::kv::{VALUE, delivered, list_key};
use crate::measure::OpFn;
use base64::Engine;
use futures::{FutureExt, StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
}

/// Prepares `op` with `reqwest` against Consul's HTTP API.
pub(crate) async fn consul(
    base: &str,
    op: Op,
    workers: usize,
    dir: &str,
) -> anyhow::Result<Option<OpFn>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = base.trim_end_matches('/').to_owned();
    let dir = format!("raw/{dir}");
    let txn_url = format!("{base}/v1/txn");
    let kv = move |key: &str| format!("{base}/v1/kv/{key}");
    let put = |http: reqwest::Client, url: String| async move {
        let ok: bool = http
            .put(url)
            .body(&VALUE[..])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(ok, "put refused");
        anyhow::Ok(())
    };
    let kv = Arc::new(kv);
    Ok(Some(match op {
        Op::Get | Op::GetStale => {
            for i in 0..100 {
                put(http.clone(), kv(&format!("{dir}/k{i}"))).await?;
            }
            // The same consistency as kvstore's read: `?consistent` by default, `?stale` for
            // a stale one (source: Consul docs, "Consistency modes" of the HTTP API).
            let mode = if op == Op::GetStale {
                "stale"
            } else {
                "consistent"
            };
            Arc::new(move |_, i| {
                let url = format!("{}?{mode}", kv(&format!("{dir}/k{}", i % 100)));
                let http = http.clone();
                async move {
                    let entries: Vec<Entry> = http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let value = entries[0].value.as_deref().unwrap_or_default();
                    std::hint::black_box(base64::engine::general_purpose::STANDARD.decode(value)?);
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Put => Arc::new(move |w, i| {
            let fut = put(http.clone(), kv(&format!("{dir}/w{w}/k{}", i % 10)));
            async move {
                fut.await?;
                Ok(None)
            }
            .boxed()
        }),
        Op::AtomicPut => {
            // A CAS chain needs the new index after each write: `?cas=` answers only
            // true/false, so the raw client uses the transaction endpoint, which returns it.
            let mut indexes = Vec::with_capacity(workers);
            for w in 0..workers {
                put(http.clone(), kv(&format!("{dir}/c{w}"))).await?;
                let entries: Vec<Entry> = http
                    .get(kv(&format!("{dir}/c{w}")))
                    .send()
                    .await?
                    .json()
                    .await?;
                indexes.push(Mutex::new(entries[0].modify_index));
            }
            let indexes = Arc::new(indexes);
            let txn = kv("").replace("/v1/kv/", "/v1/txn");
            Arc::new(move |w, _| {
                let (http, txn, key, indexes) = (
                    http.clone(),
                    txn.clone(),
                    format!("{dir}/c{w}"),
                    indexes.clone(),
                );
                async move {
                    let mut index = indexes[w].lock().await;
                    let body = serde_json::json!([{ "KV": {
                        "Verb": "cas", "Key": key, "Index": *index,
                        "Value": base64::engine::general_purpose::STANDARD.encode(&VALUE[..]) } }]);
                    let resp: serde_json::Value = http
                        .put(&txn)
                        .json(&body)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    *index = resp["Results"][0]["KV"]["ModifyIndex"]
                        .as_u64()
                        .ok_or_else(|| anyhow::anyhow!("cas failed"))?;
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::List | Op::List10k | Op::List100k => {
            let n = op.list_keys();
            let list = format!("{dir}/list");
            futures::stream::iter((0..n).map(|i| put(http.clone(), kv(&list_key(&list, i)))))
                .buffer_unordered(32)
                .try_collect::<Vec<()>>()
                .await?;
            let url = format!("{}?recurse", kv(&format!("{list}/")));
            Arc::new(move |_, _| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let entries: Vec<Entry> = http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    anyhow::ensure!(entries.len() == n, "listed {} of {n}", entries.len());
                    Ok(None)
                }
                .boxed()
            })
        }
        Op::Watch => {
            if workers != 1 {
                return Ok(None);
            }
            let url = kv(&format!("{dir}/watched"));
            put(http.clone(), url.clone()).await?;
            let (tx, rx) = channel();
            let (watcher, watched) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut index = 0u64;
                loop {
                    let Ok(resp) = watcher
                        .get(format!("{watched}?index={index}&wait=60s"))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let next: u64 = resp
                        .headers()
                        .get("X-Consul-Index")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    let Ok(entries) = resp.json::<Vec<Entry>>().await else {
                        return;
                    };
                    if next != index && index != 0 {
                        let value = entries
                            .first()
                            .and_then(|e| e.value.as_deref())
                            .unwrap_or_default();
                        let value = base64::engine::general_purpose::STANDARD
                            .decode(value)
                            .unwrap_or_default();
                        if tx.send((value, Instant::now())).is_err() {
                            return;
                        }
                    }
                    index = next.max(1);
                }
            });
            // Let the watcher reach its blocking query.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Arc::new(move |_, i| {
                let (http, url, rx) = (http.clone(), url.clone(), rx.clone());
                async move {
                    let value = format!("v{i}").into_bytes();
                    let mut rx = rx.lock().await;
                    let t0 = Instant::now();
                    http.put(&url)
                        .body(value.clone())
                        .send()
                        .await?
                        .error_for_status()?;
                    delivered(&mut rx, &value, t0).await
                }
                .boxed()
            })
        }
        Op::Lock | Op::LockPerCall => {
            let session_url = kv("").replace("/v1/kv/", "/v1/session/");
            Arc::new(move |w, _| {
                let (http, sessions, url) = (
                    http.clone(),
                    session_url.clone(),
                    kv(&format!("{dir}/l{w}")),
                );
                async move {
                    let created: serde_json::Value = http
                        .put(format!("{sessions}create"))
                        .json(&serde_json::json!({"TTL": "20s", "LockDelay": "0s"}))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let id = created["ID"]
                        .as_str()
                        .ok_or_else(|| anyhow::anyhow!("no session"))?
                        .to_owned();
                    let acquired: bool = http
                        .put(format!("{url}?acquire={id}"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    anyhow::ensure!(acquired, "lock taken");
                    let _: bool = http
                        .put(format!("{url}?release={id}"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    http.put(format!("{sessions}destroy/{id}"))
                        .send()
                        .await?
                        .error_for_status()?;
                    Ok(None)
                }
                .boxed()
            })
        }
        // One `/v1/txn` of `set` operations.
        Op::Txn2 | Op::Txn8 => {
            let n = op.txn_puts();
            Arc::new(move |w, i| {
                let value = base64::engine::general_purpose::STANDARD.encode(&VALUE[..]);
                let ops: Vec<serde_json::Value> = (0..n)
                    .map(|k| {
                        serde_json::json!({ "KV": { "Verb": "set", "Key": format!("{dir}/t{w}/{}/k{k}", i % 10), "Value": value } })
                    })
                    .collect();
                let request = http.put(txn_url.clone()).json(&ops);
                async move {
                    request.send().await?.error_for_status()?;
                    Ok(None)
                }
                .boxed()
            })
        }
    }))
}

/// Deletes the keys under `dir` (`DELETE /v1/kv/<dir>/?recurse`).
pub(crate) async fn cleanup(base: &str, dir: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{}/v1/kv/{dir}/?recurse", base.trim_end_matches('/'));
    http.delete(url).send().await?.error_for_status()?;
    Ok(())
}
