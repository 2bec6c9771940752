//! Server-side request counters, to count round trips per call from the server's own view.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where a backend's request counter is read.
#[derive(Debug, Clone)]
pub(crate) enum Counter {
    /// Redis `INFO stats` → `total_reads_processed`: requests read from clients (the
    /// command counters also count the commands a Lua script runs, so they would not show
    /// round trips).
    Redis(String),
    /// etcd `/metrics` → sum of `grpc_server_started_total` (gRPC requests received).
    Etcd(String),
    /// ZooKeeper `mntr` → `zk_packets_received` (includes session pings, a few per second).
    Zk(String),
    /// Consul `/v1/agent/metrics?format=prometheus` → sum of `consul_api_http_count`
    /// (needs `telemetry { prometheus_retention_time }`, set by ci/servers.sh).
    Consul(String),
}

impl Counter {
    /// The counter's current value.
    pub(crate) async fn read(&self) -> anyhow::Result<f64> {
        match self {
            Counter::Redis(url) => {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let info: String = redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut conn)
                    .await?;
                field(&info, "total_reads_processed:")
            }
            Counter::Etcd(base) => {
                let text = reqwest::get(format!("{base}/metrics"))
                    .await?
                    .text()
                    .await?;
                Ok(sum_metric(&text, "grpc_server_started_total"))
            }
            Counter::Zk(addr) => {
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                stream.write_all(b"mntr").await?;
                let mut out = String::new();
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
                    .await??;
                field(&out, "zk_packets_received\t")
            }
            Counter::Consul(base) => {
                let text = reqwest::get(format!("{base}/v1/agent/metrics?format=prometheus"))
                    .await?
                    .text()
                    .await?;
                Ok(sum_metric(&text, "consul_api_http_count"))
            }
        }
    }
}

fn field(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name} in the server's statistics"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// Sum of every sample of a Prometheus metric (all label sets).
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests the server saw per operation, over `ops` operations run by `batch`, minus the
/// counter's own reads (measured with an empty batch).
pub(crate) async fn per_op<F, Fut>(counter: &Counter, ops: usize, batch: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let a = counter.read().await?;
    let b = counter.read().await?;
    let idle = b - a;
    batch().await?;
    let c = counter.read().await?;
    Ok(((c - b) - idle).max(0.0) / ops as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters() {
        let prom = "# HELP x\nconsul_api_http_count{method=\"GET\"} 3\nconsul_api_http_count{method=\"PUT\"} 4\nconsul_api_http_sum 99\n";
        assert_eq!(sum_metric(prom, "consul_api_http_count"), 7.0);
        assert_eq!(
            field(
                "a:1\r\ntotal_reads_processed:42\r\n",
                "total_reads_processed:"
            )
            .unwrap(),
            42.0
        );
    }
}
