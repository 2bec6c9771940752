//! `kvctl lock` whose server is paused past the lock's TTL: the lock is lost, the command is
//! stopped (SIGTERM, then SIGKILL after the grace period for a command that ignores SIGTERM)
//! and kvctl exits 4. Its own test binary, since it pauses the shared server.

mod common;

use std::time::{Duration, Instant};

use common::{Running, wait_bounded};
use kvstore_testutils::{EVENT_TIMEOUT, controlled_backend_url};

/// `ignore_term`: the command ignores SIGTERM, so only the SIGKILL after the grace period
/// stops it.
fn lock_lost_stops_the_command(name: &str, var: &str, ignore_term: bool) {
    let Some(url) = controlled_backend_url(var) else {
        return;
    };
    let pid_file = tempfile::NamedTempFile::new().unwrap();
    let ttl = Duration::from_secs(2);
    let key = kvstore_testutils::scratch_dir("kvctl-lost");
    // The command records its PID and would run for a minute.
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    let script = format!(
        "{trap}echo $$ > {}; exec sleep 60",
        pid_file.path().display()
    );
    let mut kvctl = Running::start(
        &url,
        &[
            "lock", &key, "--ttl", "2s", "--grace", "2s", "--", "sh", "-c", &script,
        ],
    );
    let started = Instant::now();
    let pid = loop {
        let text = std::fs::read_to_string(pid_file.path()).unwrap();
        if let Ok(pid) = text.trim().parse::<u32>() {
            break pid;
        }
        assert!(
            started.elapsed() < EVENT_TIMEOUT,
            "the command did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(kvstore_testutils::server_control(name, "pause"));
    let code = wait_bounded(&mut kvctl.child, ttl + EVENT_TIMEOUT);
    runtime.block_on(kvstore_testutils::server_control(name, "resume"));
    assert_eq!(code, Some(4), "{name}: kvctl exits 4 when the lock is lost");
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(!alive, "{name}: the command was stopped");
}

#[test]
fn lock_lost_on_paused_servers() {
    for (name, var, ignore_term) in [
        ("redis", "KVSTORE_REDIS_URL", false),
        ("etcd", "KVSTORE_ETCD_URL", true),
        ("zk", "KVSTORE_ZK_URL", false),
        ("consul", "KVSTORE_CONSUL_URL", true),
        ("postgres", "KVSTORE_POSTGRES_URL", false),
    ] {
        lock_lost_stops_the_command(name, var, ignore_term);
    }
}
