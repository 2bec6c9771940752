//! The Go side of the comparison: `go/` is a small program that runs the same operations
//! through valkeyrie v1 (the library kvstore ports). One process per backend, driven over its
//! stdin and stdout (see `go/main.go`), so its batches interleave with kvstore's on the same
//! server in the same run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::Op;
use crate::measure::Batch;

/// A running `valkeyrie-bench` for one backend.
pub(crate) struct Valkeyrie {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// valkeyrie's name for an operation kvstore-bench measures; `None` for those it lacks
/// (transactions) or that are not comparable (watch latency).
fn op_name(op: Op) -> Option<&'static str> {
    match op {
        Op::Get | Op::GetStale => Some("get"),
        Op::Put => Some("put"),
        Op::AtomicPut => Some("atomic_put"),
        Op::List => Some("list"),
        Op::List10k => Some("list10k"),
        Op::List100k => Some("list100k"),
        Op::Lock | Op::LockPerCall => Some("lock"),
        Op::Watch | Op::Txn2 | Op::Txn8 => None,
    }
}

impl Valkeyrie {
    /// Starts `bin` for `backend` (`redis`, `etcd`, `zk`, `consul`, `boltdb`) at `addr`.
    pub(crate) async fn start(bin: &Path, backend: &str, addr: &str) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(bin)
            .args(["-backend", backend, "-addr", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Valkeyrie {
            _child: child,
            stdin,
            lines,
        })
    }

    async fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        // Long enough for a prepare that writes 100,000 keys one `Put` at a time.
        let line = tokio::time::timeout(Duration::from_secs(600), self.lines.next_line())
            .await
            .context("valkeyrie-bench did not answer")??
            .context("valkeyrie-bench exited")?;
        if let Some(error) = line.strip_prefix("error: ") {
            bail!("valkeyrie: {error}");
        }
        Ok(line)
    }

    /// Sets up `op` for `workers` under `dir`; `false` when valkeyrie has no such operation.
    pub(crate) async fn prepare(
        &mut self,
        op: Op,
        workers: usize,
        dir: &str,
    ) -> anyhow::Result<bool> {
        let Some(name) = op_name(op) else {
            return Ok(false);
        };
        Ok(self.ask(&format!("prepare {name} {workers} {dir}")).await? == "ok")
    }

    /// Runs the prepared operation for `batch`.
    pub(crate) async fn run(&mut self, batch: Duration) -> anyhow::Result<Batch> {
        let line = self.ask(&format!("run {}", batch.as_millis())).await?;
        serde_json::from_str(&line).with_context(|| format!("valkeyrie-bench answered {line:?}"))
    }

    /// Runs exactly `n` calls of the prepared operation (for the server's request counter).
    pub(crate) async fn calls(&mut self, n: usize) -> anyhow::Result<()> {
        self.ask(&format!("calls {n}")).await.map(drop)
    }

    /// Deletes `dir` and everything under it, through valkeyrie (which knows its own layout).
    pub(crate) async fn cleanup(&mut self, dir: &str) -> anyhow::Result<()> {
        self.ask(&format!("cleanup {dir}")).await.map(drop)
    }
}
