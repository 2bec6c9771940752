//! Helpers shared by kvctl's tests: the stores under test, running kvctl, reading a running
//! kvctl's output lines with a bound.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kvstore_testutils::{EVENT_TIMEOUT, backend_url};

/// The stores every test runs against: a redb file of the test's own, and the four servers.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    /// Whether several kvctl processes can use the store at once (a redb file is held by one
    /// process at a time).
    pub shared: bool,
    _dir: Option<tempfile::TempDir>,
}

/// A backend by name: `redb`, or a server whose URL is in `KVSTORE_<NAME>_URL`.
pub fn backend(name: &'static str) -> Option<Backend> {
    if name == "redb" {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("redb://{}", dir.path().join("kvctl.redb").display());
        return Some(Backend {
            name,
            url,
            shared: false,
            _dir: Some(dir),
        });
    }
    let var = format!("KVSTORE_{}_URL", name.to_ascii_uppercase());
    Some(Backend {
        name,
        url: backend_url(&var)?,
        shared: true,
        _dir: None,
    })
}

/// Every backend, in a fixed order.
pub const BACKENDS: [&str; 6] = ["redb", "redis", "etcd", "zk", "consul", "postgres"];

/// `kvctl --url URL` ready to get arguments.
pub fn kvctl(url: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("kvctl").expect("the kvctl binary");
    cmd.env("KVSTORE_URL", url).timeout(EVENT_TIMEOUT * 3);
    cmd
}

/// Runs kvctl to completion: (exit code, stdout, stderr).
pub fn run(url: &str, args: &[&str]) -> (i32, String, String) {
    run_with_stdin(url, args, b"")
}

pub fn run_with_stdin(url: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let out = kvctl(url)
        .args(args)
        .write_stdin(stdin.to_vec())
        .output()
        .expect("kvctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kvctl and asserts it succeeds; returns stdout.
#[track_caller]
pub fn ok(url: &str, args: &[&str]) -> String {
    let (code, out, err) = run(url, args);
    assert_eq!(code, 0, "kvctl {args:?} failed: {err}");
    out
}

/// Asserts the documented exit code and a one-line error on stderr without a backtrace.
#[track_caller]
pub fn fails_with(url: &str, args: &[&str], code: i32) -> String {
    let (got, _out, err) = run(url, args);
    assert_eq!(got, code, "kvctl {args:?}: exit code (stderr: {err})");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "kvctl {args:?} must fail without a panic: {err}"
    );
    if code != 2 {
        assert_eq!(
            lines.len(),
            1,
            "kvctl {args:?}: one line on stderr, got {err:?}"
        );
    }
    err
}

/// A kvctl process left running (watch, elect --follow, lock), with its stdout lines.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(url: &str, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .env("KVSTORE_URL", url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kvctl starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next stdout line within [`EVENT_TIMEOUT`].
    #[track_caller]
    pub fn next_line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: no output line within {EVENT_TIMEOUT:?} ({e})"))
    }

    /// Sends SIGINT and waits (bounded) for the exit; returns the exit code.
    pub fn interrupt(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        wait_bounded(&mut self.child, EVENT_TIMEOUT)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` for up to `limit`; `None` when it is still running.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<i32> {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status.code().unwrap_or(-1));
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory for one test.
pub fn scratch(case: &str) -> String {
    kvstore_testutils::scratch_dir(&format!("kvctl-{case}"))
}

/// Deletes a test's directory; one that holds nothing any more (only released locks) is fine.
#[track_caller]
pub fn cleanup(url: &str, dir: &str) {
    let (code, _, err) = run(url, &["rm", "-r", dir]);
    assert!(code == 0 || code == 1, "cleaning up {dir}: {err}");
}
