//! The conformance suite's store opener, shared by the test files that run the suite against
//! one server or a cluster.

use std::time::Duration;

use kvstore_testutils::{Opener, backend_url};
use kvstore_zk::Zk;

/// An opener for the server at `url`.
pub(crate) fn opener_for_url(url: &str) -> Opener {
    // A 2 s session, so a lost session expires within the suite's waits.
    let sep = if url.contains('?') { '&' } else { '?' };
    // The server reaps expired TTL nodes every 100 ms (znode.container.checkIntervalMs);
    // 2 s covers that and a loaded machine.
    Opener::backend::<Zk>(&format!("{url}{sep}session_timeout=2s"))
        .with_ttl(Duration::from_secs(1))
        .with_ttl_slack(Duration::from_secs(2))
}

/// An opener for the server named by the environment variable `var` (see [`backend_url`]).
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) fn opener(var: &str) -> Option<Opener> {
    Some(opener_for_url(&backend_url(var)?))
}

/// A figure of the server at `url` (its first host) from the `mntr` four-letter command
/// (source: ZooKeeper Administrator's Guide, "The Four Letter Words").
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) async fn mntr(url: &str, field: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url
        .trim_start_matches("zk://")
        .split([',', '/', '?'])
        .next()
        .expect("a host");
    let mut conn = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect for mntr");
    conn.write_all(b"mntr").await.expect("send mntr");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .expect("mntr answers in time")
        .expect("read mntr");
    out.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix('\t'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in mntr: {out}"))
}
