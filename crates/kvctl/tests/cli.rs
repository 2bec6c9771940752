//! kvctl run as a binary against every backend: each subcommand, its output and exit codes.

mod common;

use common::{BACKENDS, Running, backend, cleanup, fails_with, ok, run, run_with_stdin, scratch};
use serde_json::Value;

/// Every byte value, for the binary round trips.
fn binary_value() -> Vec<u8> {
    (0..=255u8).collect()
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

/// get, put (argument and stdin), ls, cas, rm on one backend.
fn reads_and_writes(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("kv");
    let key = format!("{dir}/a");
    assert_eq!(
        ok(url, &["put", &key, "hello"])
            .trim_start_matches("last_index ")
            .trim()
            .parse::<u64>()
            .map(|i| i > 0),
        Ok(true)
    );
    assert_eq!(ok(url, &["get", &key]), "hello\n");
    let pair = json(&ok(url, &["get", &key, "-o", "json"]));
    assert_eq!(
        (pair["key"].as_str(), pair["value"].as_str()),
        (Some(key.as_str()), Some("hello"))
    );
    let index = pair["last_index"].as_u64().expect("last_index");

    // Binary values through stdin, read back exactly through JSON.
    let bin = format!("{dir}/bin");
    let (code, _, err) = run_with_stdin(url, &["put", &bin, "-"], &binary_value());
    assert_eq!(code, 0, "{err}");
    let got = json(&ok(url, &["get", &bin, "-o", "json"]));
    let decoded = base64_decode(got["value_base64"].as_str().unwrap());
    assert_eq!(decoded, binary_value());
    assert_eq!(got["value"], Value::Null, "not UTF-8");

    // ls: recursive, sorted; --keys-only; JSON lines.
    ok(url, &["put", &format!("{dir}/sub/c"), "deep"]);
    let listed = ok(url, &["ls", &dir, "--keys-only"]);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [key.clone(), bin.clone(), format!("{dir}/sub/c")]
    );
    let text = ok(url, &["ls", &dir]);
    assert!(text.contains(&format!("{key}\thello")), "{text}");
    assert_eq!(
        ok(url, &["ls", &dir, "-o", "json"])
            .lines()
            .map(json)
            .count(),
        3
    );

    // cas: the right index writes; a stale one and --create on an existing key refuse (1).
    let written = ok(url, &["cas", &key, "v2", "--index", &index.to_string()]);
    assert!(written.starts_with("last_index "), "{written}");
    fails_with(url, &["cas", &key, "v3", "--index", &index.to_string()], 1);
    fails_with(url, &["cas", &key, "v3", "--create"], 1);
    let created = format!("{dir}/created");
    ok(url, &["cas", &created, "new", "--create"]);
    assert_eq!(ok(url, &["get", &key]), "v2\n");

    // @FILE values are the file's bytes, as `consul kv put` reads them.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), binary_value()).unwrap();
    let from_file = format!("{dir}/from-file");
    ok(
        url,
        &["put", &from_file, &format!("@{}", file.path().display())],
    );
    let got = json(&ok(url, &["get", &from_file, "-o", "json"]));
    assert_eq!(
        base64_decode(got["value_base64"].as_str().unwrap()),
        binary_value()
    );
    let missing_file = format!("@{}.missing", file.path().display());
    fails_with(url, &["put", &from_file, &missing_file], 5);

    // rm --index: a stale index refuses (1) and keeps the key; the current one deletes.
    let current = json(&ok(url, &["get", &from_file, "-o", "json"]))["last_index"]
        .as_u64()
        .unwrap();
    let stale = (current - 1).to_string();
    fails_with(url, &["rm", &from_file, "--index", &stale], 1);
    ok(url, &["get", &from_file, "-o", "json"]);
    ok(url, &["rm", &from_file, "--index", &current.to_string()]);
    fails_with(url, &["rm", &from_file, "--index", &current.to_string()], 1);

    // rm, rm -r; a missing key is exit 1 with one line on stderr.
    ok(url, &["rm", &key]);
    let err = fails_with(url, &["get", &key], 1);
    assert!(err.contains("not found"), "{err}");
    fails_with(url, &["rm", &key], 1);
    ok(url, &["rm", "-r", &dir]);
    fails_with(url, &["ls", &dir], 1);
}

/// watch (a key, a directory, --exec) and elect --follow, seen by a second kvctl process.
fn watches(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("watch");
    let key = format!("{dir}/k");
    ok(url, &["put", &key, "v1"]);
    if !b.shared {
        // One process holds a redb file: the watch's first lines are all a test can see.
        let watch = Running::start(url, &["watch", &key]);
        assert!(
            watch
                .next_line("initial state")
                .starts_with(&format!("put {key} "))
        );
        assert_eq!(watch.interrupt(), Some(0), "Ctrl-C ends a watch with 0");
        // Resuming from an older index prints the state the caller has not seen.
        let index = json(&ok(url, &["get", &key, "-o", "json"]))["last_index"]
            .as_u64()
            .unwrap();
        let watch = Running::start(url, &["watch", &key, "--index", &(index - 1).to_string()]);
        assert!(
            watch
                .next_line("the state after the known index")
                .starts_with(&format!("put {key} {index} "))
        );
        assert_eq!(watch.interrupt(), Some(0));
        return;
    }
    // watch --index N: the state at N is not printed again, the next change is; a key gone
    // since N prints as a delete.
    let known = json(&ok(url, &["get", &key, "-o", "json"]))["last_index"]
        .as_u64()
        .unwrap();
    let resumed = Running::start(url, &["watch", &key, "--index", &known.to_string()]);
    let older = Running::start(url, &["watch", &key, "--index", &(known - 1).to_string()]);
    assert!(
        older
            .next_line("the state after an older index")
            .starts_with(&format!("put {key} {known} "))
    );
    let gone = format!("{dir}/gone");
    let deleted = Running::start(url, &["watch", &gone, "--index", &known.to_string()]);
    assert_eq!(
        deleted.next_line("a key gone since N"),
        format!("delete {gone}")
    );
    assert_eq!(deleted.interrupt(), Some(0));
    assert_eq!(older.interrupt(), Some(0));
    ok(url, &["put", &key, "v1"]);
    let line = resumed.next_line("the first change after N");
    assert!(
        line.starts_with(&format!("put {key} "))
            && !line.starts_with(&format!("put {key} {known} ")),
        "the state at N is not repeated: {line}"
    );
    assert_eq!(resumed.interrupt(), Some(0));
    let exec_log = tempfile::NamedTempFile::new().unwrap();
    let exec = format!(
        "echo \"$KVSTORE_EVENT $KVSTORE_KEY $KVSTORE_VALUE\" >> {}",
        exec_log.path().display()
    );
    let key_watch = Running::start(url, &["watch", &key, "-o", "json"]);
    let tree_watch = Running::start(url, &["watch", "-r", &dir, "--exec", &exec]);
    let first = json(&key_watch.next_line("the key's current value"));
    assert_eq!(
        (first["event"].as_str(), first["value"].as_str()),
        (Some("put"), Some("v1"))
    );
    assert!(
        tree_watch
            .next_line("the tree's current state")
            .starts_with(&format!("put {key} "))
    );

    ok(url, &["put", &key, "v2"]);
    let second = json(&key_watch.next_line("the write"));
    assert_eq!(second["value"].as_str(), Some("v2"));
    assert!(second["last_index"].as_u64() > first["last_index"].as_u64());
    let line = tree_watch.next_line("the write in the tree");
    assert!(
        line.starts_with(&format!("put {key} ")) && line.ends_with(" v2"),
        "{line}"
    );
    ok(url, &["rm", &key]);
    assert_eq!(
        json(&key_watch.next_line("the delete"))["event"].as_str(),
        Some("delete")
    );
    assert_eq!(
        tree_watch.next_line("the delete in the tree"),
        format!("delete {key}")
    );
    assert_eq!(key_watch.interrupt(), Some(0));
    assert_eq!(tree_watch.interrupt(), Some(0));
    let log = std::fs::read_to_string(exec_log.path()).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            format!("put {key} v1"),
            format!("put {key} v2"),
            format!("delete {key} ")
        ],
        "--exec runs once per change with the change in its environment"
    );

    // elect --follow sees a leader with its term, then none after it resigns. The leader's
    // command holds until the follower has printed it (a leader that resigned before the
    // follower's first read is, rightly, never printed: the follower shows the latest state).
    let election = format!("{dir}/leader");
    let follower = Running::start(url, &["elect", "--follow", &election]);
    assert_eq!(follower.next_line("no leader yet"), "none");
    let release_dir = tempfile::tempdir().unwrap();
    let release = release_dir.path().join("release");
    let script = format!(
        "echo $KVSTORE_TERM; i=0; while [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        release.display()
    );
    let mut leader = Running::start(
        url,
        &[
            "elect", &election, "node-1", "--ttl", "5s", "--", "sh", "-c", &script,
        ],
    );
    let term = leader.next_line("the leader's term");
    assert_eq!(
        follower.next_line("the leader"),
        format!("{} node-1", term.trim())
    );
    std::fs::write(&release, b"").unwrap();
    assert_eq!(
        common::wait_bounded(&mut leader.child, kvstore_testutils::EVENT_TIMEOUT),
        Some(0),
        "the leader's command ended and kvctl resigned"
    );
    assert_eq!(follower.next_line("the resignation"), "none");
    assert_eq!(follower.interrupt(), Some(0));
    cleanup(url, &dir);
}

/// lock and elect run their command with the token in its environment and exit with its code.
fn lock_and_elect_run_commands(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("run");
    let script = "echo $KVSTORE_FENCING_TOKEN; exit 7";
    let (code, out, err) = run(
        url,
        &["lock", &format!("{dir}/lock"), "--", "sh", "-c", script],
    );
    assert_eq!(code, 7, "the command's exit code: {err}");
    let first: u64 = out.trim().parse().expect("a fencing token");
    let (code, out, _) = run(
        url,
        &["lock", &format!("{dir}/lock"), "--", "sh", "-c", script],
    );
    assert_eq!(code, 7);
    assert!(out.trim().parse::<u64>().unwrap() > first, "tokens grow");
    let (code, out, err) = run(
        url,
        &[
            "elect",
            &format!("{dir}/leader"),
            "me",
            "--",
            "sh",
            "-c",
            "echo $KVSTORE_TERM",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    // A command killed by a signal: 128 + the signal, as a shell reports it.
    let (code, _, _) = run(
        url,
        &[
            "lock",
            &format!("{dir}/lock"),
            "--",
            "sh",
            "-c",
            "kill -TERM $$",
        ],
    );
    assert_eq!(code, 128 + 15);
    fails_with(url, &["lock", &format!("{dir}/lock")], 2);
}

/// export → import under a prefix → the same tree, in `consul kv export` format.
fn export_import(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("export");
    ok(url, &["put", &format!("{dir}/a"), "1"]);
    run_with_stdin(url, &["put", &format!("{dir}/b/c"), "-"], &binary_value());
    let exported = ok(url, &["export", &dir]);
    let entries = json(&exported);
    assert_eq!(entries.as_array().map(Vec::len), Some(2));
    assert_eq!(entries[0]["flags"], 0);
    let (code, _, err) = run_with_stdin(
        url,
        &["import", "--prefix", &format!("{dir}/copy")],
        exported.as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let copied = ok(url, &["export", &format!("{dir}/copy/{dir}")]);
    let copied = json(&copied);
    for (a, b) in entries
        .as_array()
        .unwrap()
        .iter()
        .zip(copied.as_array().unwrap())
    {
        assert_eq!(a["value"], b["value"]);
        assert_eq!(
            format!("{dir}/copy/{}", a["key"].as_str().unwrap()),
            b["key"].as_str().unwrap()
        );
    }
    // Bad input writes nothing.
    let (code, _, _) = run_with_stdin(
        url,
        &["import", "--prefix", &format!("{dir}/bad")],
        b"[{\"key\":\"x\",\"value\":\"%%%\"}]",
    );
    assert_eq!(code, 2);
    fails_with(url, &["ls", &format!("{dir}/bad")], 1);
    ok(url, &["rm", "-r", &dir]);
}

/// status: the backend, the URL without its secrets, the capabilities and a round trip.
fn status(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let text = ok(&b.url, &["status"]);
    let backend_line = text.lines().next().unwrap_or_default();
    assert_eq!(
        backend_line.split_whitespace().collect::<Vec<_>>(),
        ["backend", b.name]
    );
    assert!(text.contains("round trip"), "{text}");
    let status = json(&ok(&b.url, &["status", "-o", "json"]));
    assert_eq!(status["backend"].as_str(), Some(b.name));
    assert_eq!(
        status["capabilities"]["lock"].as_bool(),
        Some(true),
        "{status}"
    );
    assert!(status["capabilities"]["max_txn_ops"].as_u64() >= Some(64));
    assert!(status["round_trip_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
}

/// txn: conditions and ops from JSON on stdin, all or nothing.
fn txn(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("txn");
    let (a, c) = (format!("{dir}/a"), format!("{dir}/c"));
    ok(url, &["put", &a, "old"]);
    let index = json(&ok(url, &["get", &a, "-o", "json"]))["last_index"]
        .as_u64()
        .unwrap();
    let body = |index: u64| {
        serde_json::json!({
            "conditions": [{"when": "index", "key": a, "last_index": index},
                           {"when": "missing", "key": c}],
            "ops": [{"op": "put", "key": c, "value": "new"},
                    {"op": "put", "key": format!("{dir}/bin"), "value_base64": "AAE="},
                    {"op": "delete", "key": a}],
        })
        .to_string()
    };
    // A stale index: exit 1, nothing written.
    let (code, _, err) = run_with_stdin(url, &["txn"], body(index - 1).as_bytes());
    assert_eq!(code, 1, "{err}");
    assert_eq!(ok(url, &["get", &a]), "old\n");
    fails_with(url, &["get", &c], 1);
    // The current index: every op applied, one line per op.
    let (code, out, err) = run_with_stdin(url, &["txn"], body(index).as_bytes());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with(&format!("put {c} ")), "{out}");
    assert_eq!(lines[2], format!("delete {a}"));
    assert_eq!(ok(url, &["get", &c]), "new\n");
    fails_with(url, &["get", &a], 1);
    // Malformed input is a usage error that writes nothing.
    let (code, _, _) = run_with_stdin(url, &["txn"], br#"{"ops": [{"op": "put", "key": "x"}]}"#);
    assert_eq!(code, 2);
    ok(url, &["rm", "-r", &dir]);
}

/// `ls -o json` carries the revision it read at; `watch -r --events` prints a snapshot, then
/// one line per key event with the revision; `--since REV` resumes with what came after REV.
fn event_watches(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("events");
    ok(url, &["put", &format!("{dir}/a"), "1"]);
    let listed = json(ok(url, &["ls", &dir, "-o", "json"]).lines().next().unwrap());
    let revision = listed["revision"]
        .as_u64()
        .expect("ls -o json has the revision");
    assert!(revision >= listed["last_index"].as_u64().unwrap());
    if !b.shared {
        // One process holds a redb file: the snapshot is all a test can see.
        let watch = Running::start(url, &["watch", "-r", &dir, "--events"]);
        assert_eq!(
            watch.next_line("the snapshot"),
            format!("{revision} snapshot 1")
        );
        assert_eq!(
            watch.next_line("its key"),
            format!("{revision} put {dir}/a {} 1", listed["last_index"])
        );
        assert_eq!(watch.interrupt(), Some(0));
        return;
    }
    let watch = Running::start(url, &["watch", "-r", &dir, "--events", "-o", "json"]);
    let snapshot = json(&watch.next_line("the snapshot"));
    assert_eq!(
        (snapshot["event"].as_str(), snapshot["count"].as_u64()),
        (Some("snapshot"), Some(1))
    );
    assert_eq!(
        json(&watch.next_line("its key"))["key"].as_str(),
        Some(format!("{dir}/a").as_str())
    );
    let written = json(&ok(url, &["put", &format!("{dir}/b"), "2", "-o", "json"]));
    let put = json(&watch.next_line("the put"));
    assert_eq!(put["event"].as_str(), Some("put"));
    assert_eq!(put["last_index"], written["last_index"]);
    assert!(put["revision"].as_u64() >= written["last_index"].as_u64());
    ok(url, &["rm", &format!("{dir}/a")]);
    let deleted = json(&watch.next_line("the delete"));
    assert_eq!(
        (deleted["event"].as_str(), deleted["key"].as_str()),
        (Some("delete"), Some(format!("{dir}/a").as_str()))
    );
    assert_eq!(watch.interrupt(), Some(0));
    // Resuming from the ls revision: the changes since (or a snapshot, where the store
    // cannot tell them: Consul), ending with the delete of a.
    let resumed = Running::start(
        url,
        &[
            "watch",
            "-r",
            &dir,
            "--events",
            "--since",
            &revision.to_string(),
        ],
    );
    let first = resumed.next_line("the first line after --since");
    if first.contains(" snapshot ") {
        assert_eq!(
            resumed.next_line("the snapshot's key").split(' ').nth(2),
            Some(format!("{dir}/b").as_str())
        );
    } else {
        assert!(first.contains(&format!(" put {dir}/b ")), "{first}");
        assert!(
            resumed
                .next_line("the delete")
                .ends_with(&format!(" delete {dir}/a"))
        );
    }
    assert_eq!(resumed.interrupt(), Some(0));
    cleanup(url, &dir);
}

/// Bad input: the documented exit code and one line on stderr.
/// `counter KEY [add N]`, `lock -n N` (a semaphore) and `group join` / `group ls`.
fn recipe_commands(name: &'static str) {
    let Some(b) = backend(name) else { return };
    let url = &b.url;
    let dir = scratch("recipes");
    let counter = format!("{dir}/hits");
    assert_eq!(ok(url, &["counter", &counter]).trim(), "0");
    assert_eq!(ok(url, &["counter", &counter, "add", "5"]).trim(), "5");
    assert_eq!(ok(url, &["counter", &counter, "add", "-2"]).trim(), "3");
    let listed = json(ok(url, &["counter", &counter, "-o", "json"]).trim());
    assert_eq!(listed["value"], 3);
    ok(url, &["put", &counter, "three"]);
    fails_with(url, &["counter", &counter, "add", "1"], 2);

    // A semaphore's permit: its lock key and token reach the command.
    let pool = format!("{dir}/pool");
    let out = ok(
        url,
        &[
            "lock",
            "-n",
            "2",
            &pool,
            "--",
            "sh",
            "-c",
            "echo $KVSTORE_PERMIT_KEY $KVSTORE_FENCING_TOKEN",
        ],
    );
    let (key, token) = out.trim().split_once(' ').expect("key and token");
    assert!(key.starts_with(&format!("{pool}/")), "{out}");
    assert!(token.parse::<u64>().is_ok(), "{out}");
    fails_with(url, &["lock", "-n", "0", &pool, "--", "true"], 2);

    // A member while its command runs; gone when it ends.
    let group = format!("{dir}/workers");
    let script =
        "trap 'exit 0' TERM; echo joined $KVSTORE_MEMBER_KEY; while :; do sleep 0.05; done";
    let mut member = Running::start(
        url,
        &[
            "group", "join", &group, "w1", "10.0.0.7", "--", "sh", "-c", script,
        ],
    );
    assert_eq!(
        member.next_line("the member's command started"),
        format!("joined {group}/w1")
    );
    if b.shared {
        assert_eq!(ok(url, &["group", "ls", &group]).trim(), "w1 10.0.0.7");
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &member.child.id().to_string()])
        .status();
    assert_eq!(
        common::wait_bounded(&mut member.child, kvstore_testutils::EVENT_TIMEOUT),
        Some(0),
        "kvctl exits with the command's code"
    );
    assert_eq!(ok(url, &["group", "ls", &group]).trim(), "", "it left");
    cleanup(url, &dir);
}

fn bad_input(name: &'static str) {
    let Some(b) = backend(name) else { return };
    fails_with(&b.url, &["get", "a//b"], 2);
    fails_with(&b.url, &["--no-such-option"], 2);
    fails_with(&b.url, &["put", "k"], 2);
}

macro_rules! per_backend {
    ($($case:ident),*) => {
        $(
            mod $case {
                #[test]
                fn redb() { super::$case("redb") }
                #[test]
                fn redis() { super::$case("redis") }
                #[test]
                fn etcd() { super::$case("etcd") }
                #[test]
                fn zk() { super::$case("zk") }
                #[test]
                fn consul() { super::$case("consul") }
                #[test]
                fn postgres() { super::$case("postgres") }
            }
        )*
    };
}

per_backend!(
    reads_and_writes,
    watches,
    event_watches,
    lock_and_elect_run_commands,
    export_import,
    status,
    txn,
    recipe_commands,
    bad_input
);

#[test]
fn bad_urls_and_unreachable_servers() {
    fails_with("redis://user:pw@127.0.0.1:notaport/0", &["get", "k"], 2);
    fails_with("nosuch://x", &["get", "k"], 2);
    let err = fails_with("etcd://127.0.0.1:1?timeout=500ms", &["get", "k"], 3);
    assert!(err.contains("not reachable"), "{err}");
    let err = fails_with("redis://127.0.0.1:1", &["--timeout", "2s", "get", "k"], 3);
    assert_no_repeated_cause(&err);
    let err = fails_with("consul://127.0.0.1:1?timeout=1s", &["get", "k"], 3);
    assert_no_repeated_cause(&err);
}

/// No part of a `a: b: c` error line is said twice.
#[track_caller]
fn assert_no_repeated_cause(line: &str) {
    let line = line.trim().trim_start_matches("kvctl: ");
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].iter().any(|later| later.contains(part)),
            "{part:?} is repeated in {line:?}"
        );
    }
}

/// Without --url or KVSTORE_URL kvctl refuses (exit 2, saying how to name a store) and
/// creates no file.
#[test]
fn a_store_must_be_named_and_nothing_is_created() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [&["put", "k", "v"][..], &["get", "k"], &["ls"], &["status"]] {
        let out = assert_cmd::Command::cargo_bin("kvctl")
            .unwrap()
            .env_remove("KVSTORE_URL")
            .current_dir(cwd.path())
            .args(args)
            .timeout(kvstore_testutils::EVENT_TIMEOUT)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--url") && err.contains("KVSTORE_URL"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "no file created"
    );
}

/// RUST_LOG=kvstore=debug shows each call's span with the documented fields on stderr, and no
/// value; without RUST_LOG nothing is logged.
#[test]
fn rust_log_shows_the_spans() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().join("log.redb").display());
    ok(&url, &["put", "logged/key", "secret-value"]);
    let out = common::kvctl(&url)
        .env("RUST_LOG", "kvstore=debug")
        .args(["get", "logged/key"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("get{") && l.contains("close"))
        .unwrap_or_else(|| panic!("the get span closes on stderr: {err}"));
    assert!(
        line.contains("backend=\"redb\"")
            && line.contains("op=\"get\"")
            && line.contains("key=logged/key"),
        "{line}"
    );
    assert!(!err.contains("secret-value"), "{err}");
    let (code, _, quiet) = run(&url, &["get", "logged/key"]);
    assert_eq!((code, quiet.as_str()), (0, ""), "no RUST_LOG, no log");
}

/// `completions SHELL` and `man` come from the parser's own definition.
#[test]
fn completions_and_man_page() {
    let bash = ok_without_store(&["completions", "bash"]);
    assert!(
        bash.contains("_kvctl()") && bash.contains("status"),
        "{bash}"
    );
    let zsh = ok_without_store(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef kvctl"), "{zsh}");
    let man = ok_without_store(&["man"]);
    assert!(man.contains(".TH kvctl"), "{man}");
    assert!(man.contains("password\\-file"), "{man}");
}

fn ok_without_store(args: &[&str]) -> String {
    let out = assert_cmd::Command::cargo_bin("kvctl")
        .unwrap()
        .env_remove("KVSTORE_URL")
        .args(args)
        .timeout(kvstore_testutils::EVENT_TIMEOUT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_lists_every_subcommand_with_an_example() {
    let help = ok("memory://", &["--help"]);
    for sub in [
        "get",
        "put",
        "rm",
        "ls",
        "cas",
        "watch",
        "txn",
        "status",
        "lock",
        "elect",
        "export",
        "import",
        "copy",
        "completions",
        "man",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{sub} ")))
            .unwrap_or_else(|| panic!("--help lists {sub}: {help}"));
        assert!(
            line.contains(&format!("kvctl {sub}")),
            "an example for {sub}: {line}"
        );
    }
    assert!(help.contains("Exit codes"), "{help}");
}

/// `copy` from every backend to every other one, byte for byte; a second run copies nothing.
#[test]
fn copy_between_every_pair_of_backends() {
    let backends: Vec<_> = BACKENDS.iter().filter_map(|name| backend(name)).collect();
    for src in &backends {
        let dir = scratch("copy");
        ok(&src.url, &["put", &format!("{dir}/a"), "text"]);
        run_with_stdin(
            &src.url,
            &["put", &format!("{dir}/b/bin"), "-"],
            &binary_value(),
        );
        let want = ok(&src.url, &["export", &dir]);
        for dst in backends.iter().filter(|d| d.name != src.name) {
            let (code, _, err) = run(&src.url, &["copy", &src.url, &dst.url, &dir]);
            assert_eq!(code, 0, "copy {} -> {}: {err}", src.name, dst.name);
            assert!(err.contains("copied 2 keys"), "{err}");
            assert_eq!(
                ok(&dst.url, &["export", &dir]),
                want,
                "{} -> {}",
                src.name,
                dst.name
            );
            let (_, _, again) = run(&src.url, &["copy", &src.url, &dst.url, &dir]);
            assert!(
                again.contains("copied 0 keys, 2 already equal"),
                "resumable: {again}"
            );
            ok(&dst.url, &["rm", "-r", &dir]);
        }
        ok(&src.url, &["rm", "-r", &dir]);
    }
}

/// Runs `processes` copies of `kvctl <lock_args> --ttl 5s -- sh -c SCRIPT` at once, where the
/// command logs `start $KVSTORE_FENCING_TOKEN` and, half a second later, `end …`; waits for
/// every one to exit 0 and returns the log's lines as (what, token).
fn run_locked_commands(
    name: &str,
    url: &str,
    lock_args: &[&str],
    processes: usize,
) -> Vec<(String, u64)> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let script = format!(
        "echo start $KVSTORE_FENCING_TOKEN >> {log}; sleep 0.5; echo end $KVSTORE_FENCING_TOKEN >> {log}",
        log = log.path().display()
    );
    let mut args = lock_args.to_vec();
    args.extend(["--ttl", "5s", "--", "sh", "-c", script.as_str()]);
    let mut running: Vec<Running> = (0..processes).map(|_| Running::start(url, &args)).collect();
    for (i, r) in running.iter_mut().enumerate() {
        assert_eq!(
            common::wait_bounded(&mut r.child, kvstore_testutils::EVENT_TIMEOUT * 2),
            Some(0),
            "{name}: holder {i}"
        );
    }
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').unwrap();
            (what.to_owned(), token.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), processes * 2, "{name}: {text}");
    lines
}

/// Three `kvctl lock -n 2` processes: never more than two commands run at once.
#[test]
fn concurrent_permits_never_exceed_n() {
    for name in ["redis", "etcd", "zk", "consul", "postgres"] {
        let Some(b) = backend(name) else { continue };
        let dir = scratch("permits");
        let pool = format!("{dir}/pool");
        let lines = run_locked_commands(name, &b.url, &["lock", "-n", "2", &pool], 3);
        let (mut now, mut most) = (0i32, 0);
        for (what, _) in &lines {
            now += if what == "start" { 1 } else { -1 };
            most = most.max(now);
        }
        assert!(most <= 2, "{name}: {most} commands at once: {lines:?}");
        cleanup(&b.url, &dir);
    }
}

/// Two `kvctl lock` on one key never run their commands at the same time, and the second
/// holder's token is the greater.
#[test]
fn concurrent_locks_never_overlap() {
    for name in ["redis", "etcd", "zk", "consul", "postgres"] {
        let Some(b) = backend(name) else { continue };
        let dir = scratch("overlap");
        let lock_key = format!("{dir}/lock");
        let lines = run_locked_commands(name, &b.url, &["lock", &lock_key], 2);
        let what: Vec<&str> = lines.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            what,
            ["start", "end", "start", "end"],
            "{name}: the commands overlapped: {lines:?}"
        );
        assert_eq!(lines[0].1, lines[1].1);
        assert_eq!(lines[2].1, lines[3].1);
        assert!(
            lines[2].1 > lines[0].1,
            "{name}: the later holder's token is greater: {lines:?}"
        );
        cleanup(&b.url, &dir);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// TLS and credentials through the URL, as in the library; a refused credential is exit 5 and
/// its error names no secret.
#[test]
fn tls_and_credentials_through_the_url() {
    use kvstore_testutils::secure::{Credential, with_client_certificate, with_credential};
    for (var, credential) in [
        ("KVSTORE_REDIS_TLS_URL", Credential::Password),
        ("KVSTORE_ETCD_TLS_URL", Credential::Password),
        ("KVSTORE_ZK_TLS_URL", Credential::Password),
        ("KVSTORE_CONSUL_TLS_URL", Credential::Query("token")),
    ] {
        let Some(url) = kvstore_testutils::backend_url(var) else {
            continue;
        };
        let dir = scratch("tls");
        let key = format!("{dir}/k");
        ok(&url, &["put", &key, "secret-value"]);
        assert_eq!(ok(&url, &["get", &key]), "secret-value\n");
        let mut wrong = with_credential(&url, credential, "planted-wrong-password");
        if var.contains("ZK") {
            // ZooKeeper's creator ACL also grants the creator's certificate.
            let certs = kvstore_testutils::backend_url("KVSTORE_TLS_DIR").unwrap();
            wrong = with_client_certificate(&wrong, std::path::Path::new(&certs), "reader");
        }
        let err = fails_with(&wrong, &["put", &key, "x"], 5);
        assert!(err.contains("refused"), "{var}: {err}");
        assert!(!err.contains("planted-wrong-password"), "{var}: {err}");

        // The same secret from a file (--password-file / --token-file) instead of the URL;
        // status shows the URL with the secret hidden.
        let (flag, bare, secret) = match credential {
            Credential::Password => {
                let parsed = url::Url::parse(&url).unwrap();
                let secret = percent_encoding::percent_decode_str(parsed.password().unwrap())
                    .decode_utf8()
                    .unwrap()
                    .into_owned();
                let mut bare = parsed.clone();
                bare.set_password(None).unwrap();
                ("--password-file", bare.to_string(), secret)
            }
            Credential::Query(name) => {
                let parsed = url::Url::parse(&url).unwrap();
                let secret = parsed
                    .query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .unwrap();
                (
                    "--token-file",
                    kvstore_testutils::secure::with_query(&url, name, None),
                    secret,
                )
            }
        };
        let secret_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret_file.path(), format!("{secret}\n")).unwrap();
        let file_arg = secret_file.path().display().to_string();
        assert_eq!(
            ok(&bare, &[flag, &file_arg, "get", &key]),
            "secret-value\n",
            "{var} with {flag}"
        );
        let status = ok(&bare, &[flag, &file_arg, "status"]);
        assert!(
            status.contains("***") && !status.contains(&secret),
            "{status}"
        );
        std::fs::write(secret_file.path(), "planted-wrong-password\n").unwrap();
        let mut bare = bare;
        if var.contains("ZK") {
            let certs = kvstore_testutils::backend_url("KVSTORE_TLS_DIR").unwrap();
            bare = with_client_certificate(&bare, std::path::Path::new(&certs), "reader");
        }
        let err = fails_with(&bare, &[flag, &file_arg, "put", &key, "x"], 5);
        assert!(!err.contains("planted-wrong-password"), "{var}: {err}");
        ok(&url, &["rm", "-r", &dir]);
    }
}

/// A signal sent to `kvctl lock` reaches the command; kvctl exits with the command's code.
#[test]
fn lock_forwards_signals_to_the_command() {
    let Some(b) = backend("redis") else { return };
    let dir = scratch("signal");
    let script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done";
    let lock_key = format!("{dir}/lock");
    let mut kvctl = Running::start(&b.url, &["lock", &lock_key, "--", "sh", "-c", script]);
    assert_eq!(kvctl.next_line("the command started"), "ready");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &kvctl.child.id().to_string()])
        .status();
    assert_eq!(kvctl.next_line("the forwarded SIGTERM"), "got-term");
    assert_eq!(
        common::wait_bounded(&mut kvctl.child, kvstore_testutils::EVENT_TIMEOUT),
        Some(42),
        "kvctl exits with the command's code"
    );
    // The lock was released: another holder gets it at once.
    let (code, _, err) = run(&b.url, &["lock", &lock_key, "--wait", "5s", "--", "true"]);
    assert_eq!(code, 0, "{err}");
    cleanup(&b.url, &dir);
}
