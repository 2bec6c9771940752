//! Fault cases of the liveness rule, against a real server that the test pauses (SIGSTOP: it
//! keeps its sockets and answers nothing, like a partition), restarts, or whose client process
//! it pauses. Every wait is bounded; servers are controlled through [`server_control`], so a
//! backend's test runs these only under `ci/test.sh` (see [`controlled_backend_url`]).
//!
//! [`controlled_backend_url`]: crate::controlled_backend_url

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_core::{Store, WriteOptions};

use crate::{
    EVENT_TIMEOUT, HOLDER_VAR, HolderProcess, Opener, cleanup, error_chain, eventually, lock_ttl,
    ok, retry_transient, scratch_dir, server_control, take_lock,
};

/// Server paused past the TTL while a lock is held: the holder's `LockLost` resolves within
/// `ttl + slack` of the pause without the server saying so, and `fencing_token()` is `None`
/// from then on. After the server resumes, a contender takes the lock with a greater token and
/// the old holder never believes it holds again. Returns the time from pause to `LockLost`.
pub async fn paused_server_loses_lock(
    opener: &Opener,
    server: &str,
    ttl: Duration,
    slack: Duration,
) -> Duration {
    let holder_store = opener.open().await;
    let dir = scratch_dir("paused_server");
    let key = format!("{dir}/lock");
    let (mut holder, lost, old_token) = take_lock(&*holder_store, &key, ttl).await;

    server_control(server, "pause").await;
    let paused = Instant::now();
    let in_time = tokio::time::timeout(ttl + slack, lost.clone())
        .await
        .is_ok();
    let to_lost = paused.elapsed();
    let token_after = holder.fencing_token();
    // Hold the server paused past the TTL whatever happened, so the server expires the hold.
    tokio::time::sleep((ttl + slack).saturating_sub(paused.elapsed())).await;
    server_control(server, "resume").await;
    assert!(
        in_time,
        "LockLost must resolve within {:?} of the server pausing",
        ttl + slack
    );
    assert_eq!(token_after, None, "no fencing token once lost");
    eprintln!("{server}: LockLost {to_lost:?} after the server paused (TTL {ttl:?})");

    let contender_store = opener.open().await;
    let mut contender = ok(
        contender_store.new_lock(&key, Some(&lock_ttl(ttl))).await,
        "new_lock",
    );
    let bound = ttl * 3 + slack + EVENT_TIMEOUT;
    let start = Instant::now();
    loop {
        let left = bound.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, contender.lock()).await {
            Ok(Ok(_)) => break,
            // The server is still coming back.
            Ok(Err(err)) if err.is_transient() && start.elapsed() < bound => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(err)) => panic!("contender lock failed: {}", error_chain(&err)),
            Err(_) => panic!("the contender must take the lock within {bound:?}"),
        }
    }
    let new_token = contender.fencing_token().expect("contender holds");
    assert!(new_token > old_token, "{new_token} must exceed {old_token}");
    assert!(lost.is_lost());
    assert_eq!(
        holder.fencing_token(),
        None,
        "the old holder never holds again"
    );
    ok(contender.unlock().await, "unlock");
    let _ = holder.unlock().await;
    cleanup(&*contender_store, &dir).await;
    let _ = holder_store.close().await;
    let _ = contender_store.close().await;
    to_lost
}

/// Server restarted (same port): a `keep_alive` key of TTL `ttl` is present again with its
/// value within `ttl` of the server answering, and stays for two more TTLs; a watch opened
/// before the restart delivers the latest state.
pub async fn restarted_server_keeps_registration(opener: &Opener, server: &str, ttl: Duration) {
    let store = opener.open().await;
    let dir = scratch_dir("registration");
    let key = format!("{dir}/svc");
    let registration = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
    ok(
        store.put(&key, b"10.0.0.1:80", Some(&registration)).await,
        "put",
    );
    let mut watch = ok(store.watch(&key, None).await, "watch");
    let first = ok(
        crate::next_within(&mut watch, "initial state").await,
        "watch",
    );
    assert!(first.is_some());

    server_control(server, "restart").await;
    let answering = Instant::now();
    // The server answers again (the restart script waits for readiness); the registration must
    // come back within one TTL plus the time a client takes to reconnect.
    let bound = ttl + EVENT_TIMEOUT;
    let back = tokio::time::timeout(bound, async {
        loop {
            match store.get(&key, None).await {
                Ok(pair) if &pair.value[..] == b"10.0.0.1:80" => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "the keep_alive key must be written again within {bound:?} of the server answering"
    );
    eprintln!(
        "{server}: registration present {:?} after the server answered again",
        answering.elapsed()
    );
    // It stays: checked past two more TTLs.
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        let pair = retry_transient(EVENT_TIMEOUT, "get", || store.get(&key, None)).await;
        assert_eq!(&pair.value[..], b"10.0.0.1:80");
        tokio::time::sleep(ttl / 4).await;
    }
    // The watch resumed: it reports the latest state after a change.
    ok(
        store.put(&key, b"10.0.0.2:80", Some(&registration)).await,
        "put",
    );
    let seen = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(item) = watch.next().await {
            let item = item.unwrap_or_else(|e| panic!("watch ended: {}", error_chain(&e)));
            if item
                .as_ref()
                .is_some_and(|p| &p.value[..] == b"10.0.0.2:80")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        seen,
        Ok(true),
        "the watch must deliver the latest state after the restart"
    );
    cleanup(&*store, &dir).await;
    ok(store.close().await, "close");
}

/// The holder's own process paused (SIGSTOP) past its TTL: a contender takes the lock with a
/// greater token within `bound`, and once the holder resumes its `LockLost` has resolved within
/// one renewal period (it reports how long after resuming). Call it from a `#[tokio::test]`
/// named `test_name`: the test binary re-runs itself as the holder.
pub async fn paused_holder_is_replaced(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    bound: Duration,
) {
    if let Ok(key) = std::env::var(HOLDER_VAR) {
        let store = opener.open().await;
        let mut lock = ok(store.new_lock(&key, Some(&lock_ttl(ttl))).await, "new_lock");
        let lost = ok(lock.lock().await, "lock");
        let pause = PauseWatch::start(ttl);
        println!("locked {}", lock.fencing_token().expect("token"));
        report_loss_after_pause(pause, lost, || format!("token {:?}", lock.fencing_token())).await;
        std::future::pending::<()>().await;
    }
    let dir = scratch_dir("paused_holder");
    let key = format!("{dir}/lock");
    let HolderProcess {
        mut child,
        mut lines,
        token: holder_token,
    } = HolderProcess::spawn(test_name, &key).await;
    let pid = child.id().expect("holder pid").to_string();

    signal(&pid, "-STOP").await;
    let paused = Instant::now();
    let store = opener.open().await;
    let mut contender = ok(store.new_lock(&key, Some(&lock_ttl(ttl))).await, "new_lock");
    let taken = tokio::time::timeout(bound, contender.lock()).await;
    let takeover = paused.elapsed();
    // Keep the holder paused past its TTL either way, so it sees the pause when it resumes.
    tokio::time::sleep((ttl + ttl / 5).saturating_sub(paused.elapsed())).await;
    signal(&pid, "-CONT").await;
    ok(
        taken.unwrap_or_else(|_| panic!("the lock must be taken over within {bound:?}")),
        "lock",
    );
    assert!(contender.fencing_token().expect("token") > holder_token);
    eprintln!("lock taken over {takeover:?} after its holder's process was paused");

    let token = loss_report(&mut lines, ttl, "token").await;
    assert_eq!(token, "None", "the resumed holder must hold no token");
    let _ = child.start_kill();
    let _ = child.wait().await;
    ok(contender.unlock().await, "unlock");
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// Environment variable that makes a test binary's child write a `keep_alive` registration
/// (see [`paused_registrant_disappears`]).
pub const REGISTRANT_VAR: &str = "KVSTORE_TEST_REGISTER";

/// Fault case: a `keep_alive` registration whose owning process is paused (SIGSTOP: its
/// connections stay open and it sends nothing, as when it is cut off, while the server keeps
/// expiring leases) disappears from the server within `ttl + slack` of the pause; after `pause`
/// the owner resumes and writes it again within `2 × ttl + slack`, on a new lease or session —
/// also when the pause outlived the owner's session (ZooKeeper). Before the pause, the
/// registration outlives its TTL while its owner runs.
///
/// Call it from a `#[tokio::test]` named `test_name`: the test binary re-runs itself with
/// `--exact test_name` and [`REGISTRANT_VAR`] set, and in that child this function writes the
/// registration and waits to be paused and killed.
pub async fn paused_registrant_disappears(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    slack: Duration,
    pause: Duration,
) {
    let registration = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
    if let Ok(key) = std::env::var(REGISTRANT_VAR) {
        let store = opener.open().await;
        let pair = ok(
            store.put(&key, b"registered", Some(&registration)).await,
            "register",
        );
        println!("registered {}", pair.last_index);
        std::future::pending::<()>().await;
    }
    let dir = scratch_dir("paused_registrant");
    let key = format!("{dir}/svc");
    let HolderProcess { mut child, .. } =
        HolderProcess::spawn_as(test_name, REGISTRANT_VAR, &key, "registered ").await;
    let pid = child.id().expect("registrant pid").to_string();
    let store = opener.open().await;
    let present = || async { matches!(store.exists(&key, None).await, Ok(true)) };

    // Kept alive past its TTL while the owner runs.
    tokio::time::sleep(ttl + ttl / 2).await;
    assert!(
        present().await,
        "the registration outlives its TTL while its owner runs"
    );

    signal(&pid, "-STOP").await;
    let paused = Instant::now();
    let bound = ttl + slack;
    let gone = eventually(bound + EVENT_TIMEOUT, || async { !present().await }).await;
    let gone_after = paused.elapsed();
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    signal(&pid, "-CONT").await;
    let resumed = Instant::now();
    assert!(
        gone,
        "the paused owner's registration must disappear from the server"
    );
    assert!(
        gone_after <= bound,
        "the paused owner's registration disappeared only {gone_after:?} after the pause; the \
         bound is the TTL plus the backend's slack, {bound:?}"
    );
    eprintln!("registration gone {gone_after:?} after its owner paused (TTL {ttl:?})");

    let back_bound = ttl * 2 + slack;
    let back = eventually(back_bound, || async {
        matches!(store.get(&key, None).await, Ok(pair) if &pair.value[..] == b"registered")
    })
    .await;
    assert!(
        back,
        "the resumed owner must write its registration again within {back_bound:?} (paused \
         {pause:?})"
    );
    eprintln!(
        "registration back {:?} after its owner resumed",
        resumed.elapsed()
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// In a child that a fault case pauses: notices the pause from this process's own timers (a
/// 10 ms tick that comes more than half the TTL late: the process was stopped, and has just
/// resumed), counting from the moment it is started. Start it just before the child prints
/// the line that the parent pauses it on: the pause can come at once, before the child's next
/// step — a watch that began counting after the print missed such a pause and never reported
/// (seen in a liveness run under load).
pub(crate) struct PauseWatch(tokio::sync::watch::Receiver<Option<Instant>>);

impl PauseWatch {
    pub(crate) fn start(ttl: Duration) -> PauseWatch {
        let (resumed, watch) = tokio::sync::watch::channel(None);
        // Counted from here, not from the task's first poll, which may come after the pause.
        let mut last_tick = Instant::now();
        tokio::spawn(async move {
            // After the pause, the first thing the runtime does is look at its timers.
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            loop {
                ticks.tick().await;
                let now = Instant::now();
                if now - last_tick > ttl / 2 {
                    let _ = resumed.send(Some(now));
                    return;
                }
                last_tick = now;
            }
        });
        PauseWatch(watch)
    }

    /// When the process resumed from its pause (waits for the pause first).
    async fn resumed(mut self) -> Instant {
        let resumed = self
            .0
            .wait_for(Option::is_some)
            .await
            .expect("the pause watch runs");
        resumed.expect("a resume instant")
    }
}

/// In a child that a fault case pauses: waits until `pause` saw the process paused and
/// resumed, then until `lost` resolves, and prints `lost <ms> ms after resuming; <state>` with
/// the state `describe` gives then.
pub(crate) async fn report_loss_after_pause<F: std::future::Future<Output = ()>>(
    pause: PauseWatch,
    lost: F,
    describe: impl FnOnce() -> String,
) {
    let resumed_at = pause.resumed().await;
    tokio::time::timeout(EVENT_TIMEOUT, lost)
        .await
        .expect("the hold ends after resuming");
    println!(
        "lost {} ms after resuming; {}",
        resumed_at.elapsed().as_millis(),
        describe()
    );
}

/// In the parent: reads the child's [`report_loss_after_pause`] line (bounded), checks the
/// loss came within one renewal period of resuming, and returns the state after `<name> `.
pub(crate) async fn loss_report(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    ttl: Duration,
    name: &str,
) -> String {
    let report = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("child output") {
            if let Some(rest) = line.strip_prefix("lost ") {
                return rest.to_owned();
            }
        }
        panic!("the child exited without reporting");
    })
    .await
    .expect("the resumed child must report the end of its hold");
    let (ms, state) = report.split_once(" ms after resuming; ").expect("report");
    let ms: u128 = ms.parse().expect("ms");
    let period = kvstore_core::backend::renewal_period(ttl).as_millis();
    assert!(
        ms <= period,
        "the hold ended {ms} ms after resuming, more than one renewal period ({period} ms)"
    );
    state
        .strip_prefix(name)
        .and_then(|s| s.strip_prefix(' '))
        .unwrap_or_else(|| panic!("report without {name}: {report}"))
        .to_owned()
}

/// Sends `sig` (`-STOP`, `-CONT`) to the process `pid`.
pub(crate) async fn signal(pid: &str, sig: &str) {
    let status = tokio::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .await
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Rewrites one `keep_alive` key `n` times through `store` (then deletes it), so a backend's
/// test can count the leases or sessions left on the server with its own client.
pub async fn rewrite_registration(store: &dyn Store, key: &str, n: usize, ttl: Duration) {
    let registration = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
    for i in 0..n {
        ok(
            store
                .put(key, format!("v{i}").as_bytes(), Some(&registration))
                .await,
            "put",
        );
    }
}

/// Generates the liveness fault tests of a network backend — [`paused_server_loses_lock`],
/// [`restarted_server_keeps_registration`], [`paused_holder_is_replaced`] and the election
/// cases [`paused_server_ends_leadership`](crate::paused_server_ends_leadership),
/// [`restarted_server_elects_again`](crate::restarted_server_elects_again),
/// [`killed_leader_is_replaced`](crate::killed_leader_is_replaced) and
/// [`paused_leader_is_replaced`](crate::paused_leader_is_replaced) and
/// [`paused_registrant_disappears`], and through the fault proxy
/// [`cut_off_holder_loses_first`](crate::cut_off_holder_loses_first),
/// [`cut_off_registration_comes_back`](crate::cut_off_registration_comes_back),
/// [`cut_off_watch_ends_on_latest`](crate::cut_off_watch_ends_on_latest),
/// [`latency_is_no_false_loss`](crate::latency_is_no_false_loss),
/// [`latency_beyond_request_timeout_fails_in_time`](crate::latency_beyond_request_timeout_fails_in_time)
/// and the other latency cases
/// ([`delayed_watch_ends_on_latest`](crate::delayed_watch_ends_on_latest),
/// [`delayed_tree_streams_end_on_latest`](crate::delayed_tree_streams_end_on_latest),
/// [`delayed_waiter_takes_the_lock`](crate::delayed_waiter_takes_the_lock),
/// [`delayed_registration_comes_back`](crate::delayed_registration_comes_back)) — as
/// `#[tokio::test]`s that run one at a time (they pause or restart the server the other tests
/// use): `liveness_tests!(server: "redis", url:
/// "KVSTORE_REDIS_URL", opener: |url| …, ttl: …, takeover: …, registration_slack: …,
/// registrant_pause: …)`. `opener` turns the server URL into an [`Opener`]; `takeover` bounds
/// how long a paused holder's lock takes to be taken over (the TTL plus the backend's expiry
/// slack); `registration_slack` is how far past its TTL a paused owner's registration may stay
/// on the server (at most 1 s, plus ZooKeeper's container check interval); `registrant_pause`
/// how long the owner stays paused (past its session timeout where it has one).
///
/// The tests are generated in a module `liveness` that glob-imports the invoking module, so
/// the expressions given name items of that module (not `super::…` paths); their names are
/// `liveness::<case>`, and the file's own tests that must not overlap them lock
/// `liveness::LIVENESS_SERIAL`.
#[macro_export]
macro_rules! liveness_tests {
    (server: $server:expr, url: $var:expr, opener: $opener:expr, ttl: $ttl:expr, takeover: $takeover:expr,
     registration_slack: $registration_slack:expr, registrant_pause: $registrant_pause:expr $(,)?) => {
        /// The liveness tests, in one module so that `cargo test -- liveness::` selects them
        /// (and `--skip liveness::` leaves them out): `ci/test.sh` runs the four backends'
        /// suites at once, after everything else.
        mod liveness {
        #[allow(unused_imports)]
        use super::*;
        /// Held by every liveness test, and by the file's own tests that must not overlap
        /// them (`liveness::LIVENESS_SERIAL`).
        pub(crate) static LIVENESS_SERIAL: ::tokio::sync::Mutex<()> =
            ::tokio::sync::Mutex::const_new(());
        const LIVENESS_SLACK: ::std::time::Duration = ::std::time::Duration::from_millis(500);

        $crate::liveness_tests!(@test a_paused_server_ends_the_hold_within_its_ttl,
            controlled_backend_url, $var, $opener, |opener| {
            $crate::paused_server_loses_lock(&opener, $server, $ttl, LIVENESS_SLACK).await;
        });
        $crate::liveness_tests!(@test a_registration_comes_back_after_a_server_restart,
            controlled_backend_url, $var, $opener, |opener| {
            $crate::restarted_server_keeps_registration(&opener, $server, $ttl).await;
        });
        $crate::liveness_tests!(@test a_paused_server_ends_the_leadership_within_its_ttl,
            controlled_backend_url, $var, $opener, |opener| {
            $crate::paused_server_ends_leadership(&opener, $server, $ttl, LIVENESS_SLACK).await;
        });
        $crate::liveness_tests!(@test a_leader_is_elected_again_after_a_server_restart,
            controlled_backend_url, $var, $opener, |opener| {
            $crate::restarted_server_elects_again(&opener, $server, $ttl).await;
        });
        $crate::liveness_tests!(@test a_killed_leader_is_replaced_within_its_ttl,
            backend_url, $var, $opener, |opener| {
            $crate::killed_leader_is_replaced(
                &opener, concat!("liveness::", "a_killed_leader_is_replaced_within_its_ttl"), $ttl, $takeover,
            )
            .await;
        });
        $crate::liveness_tests!(@test a_paused_leader_is_replaced_and_knows_it_on_resuming,
            backend_url, $var, $opener, |opener| {
            $crate::paused_leader_is_replaced(
                &opener, concat!("liveness::", "a_paused_leader_is_replaced_and_knows_it_on_resuming"), $ttl, $takeover,
            )
            .await;
        });
        $crate::liveness_tests!(@test a_killed_member_leaves_the_group_within_its_ttl,
            backend_url, $var, $opener, |opener| {
            $crate::killed_member_leaves_the_group(
                &opener, concat!("liveness::", "a_killed_member_leaves_the_group_within_its_ttl"), $ttl,
                $registration_slack,
            )
            .await;
        });
        $crate::liveness_tests!(@test a_paused_registrant_disappears_and_registers_again,
            backend_url, $var, $opener, |opener| {
            $crate::paused_registrant_disappears(
                &opener, concat!("liveness::", "a_paused_registrant_disappears_and_registers_again"), $ttl,
                $registration_slack, $registrant_pause,
            )
            .await;
        });
        $crate::liveness_tests!(@proxied a_cut_off_holder_loses_the_lock_before_a_successor_takes_it,
            $var, $opener, |direct, through, proxy| {
            $crate::cut_off_holder_loses_first(
                &direct, &through, $crate::Cut::Proxy(&proxy), $ttl, $takeover,
            )
            .await;
        });
        $crate::liveness_tests!(@proxied a_cut_off_registration_leaves_and_comes_back,
            $var, $opener, |direct, through, proxy| {
            // 15 s: past every backend's lease or session timeout (ZooKeeper's is 10 s).
            $crate::cut_off_registration_comes_back(
                &direct, &through, &proxy, $ttl, $registration_slack,
                ::std::time::Duration::from_secs(15),
            )
            .await;
        });
        $crate::liveness_tests!(@test event_streams_fold_to_the_store_across_a_server_restart,
            controlled_backend_url, $var, $opener, |opener| {
            $crate::restarted_server_keeps_events(&opener, $server).await;
        });
        $crate::liveness_tests!(@proxied a_cut_off_permit_holder_loses_it_before_another_gets_it,
            $var, $opener, |direct, through, proxy| {
            $crate::cut_off_permit_holder_loses_first(&direct, &through, &proxy, $ttl, $takeover)
                .await;
        });
        $crate::liveness_tests!(@proxied a_cut_off_event_stream_catches_up_after_the_heal,
            $var, $opener, |direct, through, proxy| {
            $crate::cut_off_events_catch_up(&direct, &through, &proxy, $ttl * 2).await;
        });
        $crate::liveness_tests!(@proxied a_cut_off_watch_ends_on_the_latest_value,
            $var, $opener, |direct, through, proxy| {
            $crate::cut_off_watch_ends_on_latest(&direct, &through, &proxy, $ttl * 2).await;
        });
        $crate::liveness_tests!(@proxied latency_of_a_tenth_of_the_ttl_is_no_loss,
            $var, $opener, |direct, through, proxy| {
            $crate::latency_is_no_false_loss(&direct, &through, &proxy, $ttl).await;
        });
        $crate::liveness_tests!(@proxied latency_beyond_the_request_timeout_fails_in_time,
            $var, $opener, |direct, through, proxy| {
            $crate::latency_beyond_request_timeout_fails_in_time(
                &direct, &through, &proxy, ::std::time::Duration::from_secs(1),
            )
            .await;
        });
        $crate::liveness_tests!(@proxied a_delayed_watch_ends_on_the_latest_value,
            $var, $opener, |direct, through, proxy| {
            $crate::delayed_watch_ends_on_latest(
                &direct, &through, &proxy, ::std::time::Duration::from_secs(1),
            )
            .await;
        });
        $crate::liveness_tests!(@proxied delayed_tree_watches_end_on_the_latest_state,
            $var, $opener, |direct, through, proxy| {
            $crate::delayed_tree_streams_end_on_latest(
                &direct, &through, &proxy, ::std::time::Duration::from_secs(1),
            )
            .await;
        });
        $crate::liveness_tests!(@proxied a_delayed_registration_comes_back_and_stays_deleted,
            $var, $opener, |direct, through, proxy| {
            $crate::delayed_registration_comes_back(
                &direct, &through, &proxy, ::std::time::Duration::from_secs(1), $ttl,
                $registration_slack,
            )
            .await;
        });
        $crate::liveness_tests!(@proxied a_delayed_waiter_takes_the_lock_once_freed,
            $var, $opener, |direct, through, proxy| {
            $crate::delayed_waiter_takes_the_lock(
                &direct, &through, &proxy, ::std::time::Duration::from_secs(1), $ttl,
            )
            .await;
        });
        $crate::liveness_tests!(@test a_paused_holder_is_replaced_and_knows_it_on_resuming,
            backend_url, $var, $opener, |opener| {
            $crate::paused_holder_is_replaced(
                &opener, concat!("liveness::", "a_paused_holder_is_replaced_and_knows_it_on_resuming"), $ttl, $takeover,
            )
            .await;
        });
        }
    };
    // One test through the fault proxy: an opener straight to the server and one through a
    // new proxy in front of it (or skip when either the server or Toxiproxy is missing).
    (@proxied $name:ident, $var:expr, $opener:expr, |$direct:ident, $through:ident, $proxy:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = $crate::backend_url($var) else {
                return;
            };
            let upstream = $crate::upstream_of(&url);
            let Some($proxy) = $crate::proxy::FaultProxy::start(&upstream).await else {
                return;
            };
            let _serial = LIVENESS_SERIAL.lock().await;
            let $direct: $crate::Opener = ($opener)(url.clone());
            // A 1 s request timeout through the proxy, for the latency case's bound.
            let through_url = $proxy.url_through(&url, &upstream);
            let separator = if through_url.contains('?') { '&' } else { '?' };
            let $through: $crate::Opener =
                ($opener)(format!("{through_url}{separator}request_timeout=1s"));
            $body
        }
    };
    // One test: the server's URL from `$url_fn` (or skip), the serial lock, the opener.
    (@test $name:ident, $url_fn:ident, $var:expr, $opener:expr, |$o:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = $crate::$url_fn($var) else {
                return;
            };
            let _serial = LIVENESS_SERIAL.lock().await;
            let $o: $crate::Opener = ($opener)(url);
            $body
        }
    };
}

/// An event stream across a server restart (`server`, by `ci/restart.sh`), with writes before,
/// right after and once it is back. Where the server keeps its data, the fold of the items
/// received reaches `list(dir)` — no event lost or invented across the reconnect. Where it
/// does not (a Consul `-dev` agent keeps everything in memory), the stream must say so with an
/// error rather than show a state, and a new stream folds to the store.
pub async fn restarted_server_keeps_events(opener: &Opener, server: &str) {
    let store = opener.open().await;
    let dir = crate::scratch_dir("events_restart");
    if !crate::cases::can_watch_events(&*store, &dir).await {
        return;
    }
    crate::cases::write_burst(&*store, &dir, "a").await;
    let mut stream = ok(store.watch_events(&dir, None).await, "watch_events");
    let mut folded = crate::cases::Folded::default();
    crate::cases::fold_next(&mut stream, &mut folded, &dir, "the Snapshot").await;
    crate::cases::write_burst(&*store, &dir, "b").await;
    server_control(server, "restart").await;
    crate::cases::write_burst(&*store, &dir, "c").await;
    let a1 = format!("{dir}/a1");
    let kept = retry_transient(Duration::from_secs(30), "exists", || {
        store.exists(&a1, None)
    })
    .await;
    if !kept {
        // The server lost its data: the old stream ends with an error, within the limit.
        let ended = tokio::time::timeout(EVENT_TIMEOUT * 3, async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(item) => folded.apply(&item, &dir),
                    Err(_) => return,
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "a stream over a store that lost its data must end with an error"
        );
        stream = ok(store.watch_events(&dir, None).await, "watch_events again");
        folded = crate::cases::Folded::default();
    }
    crate::cases::catch_up_within(
        &*store,
        &mut stream,
        &mut folded,
        &dir,
        "after the restart",
        EVENT_TIMEOUT * 3,
    )
    .await;
    drop(stream);
    crate::cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// The environment variable that makes a test binary's child join a group (see
/// [`killed_member_leaves_the_group`]); its value is the member's key, `<dir>/<member>`.
pub const MEMBER_VAR: &str = "KVSTORE_TEST_MEMBER";

/// Fault case: a group of five — two members on each of two handles and one in a child
/// process. A follower sees all five; one member leaves and the follower sees it go; the child
/// is killed (SIGKILL: nothing is released) and the follower sees it go within `ttl + slack`.
///
/// The child is this test binary run again with `--exact test_name` and [`MEMBER_VAR`] set;
/// in that child this function joins and waits to be killed.
pub async fn killed_member_leaves_the_group(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    slack: Duration,
) {
    use kvstore_core::{Group, KvPair};

    let opts = WriteOptions::default().with_ttl(ttl);
    if let Ok(key) = std::env::var(MEMBER_VAR) {
        let (dir, member) = key.rsplit_once('/').expect("<dir>/<member>");
        let store = opener.open().await;
        let joined = ok(
            Group::join(store, dir, member, "child", Some(&opts)).await,
            "join",
        );
        println!("joined {}", joined.pair().last_index);
        // Held until the process is killed.
        std::future::pending::<()>().await;
        drop(joined);
    }
    let dir = scratch_dir("killed_member");
    let handles = [opener.open().await, opener.open().await];
    let mut members = Vec::new();
    for i in 0..4 {
        let member = format!("m{i}");
        let joined = Group::join(handles[i % 2].clone(), &dir, &member, "here", Some(&opts));
        members.push(ok(joined.await, "join"));
    }
    let HolderProcess { mut child, .. } =
        HolderProcess::spawn_as(test_name, MEMBER_VAR, &format!("{dir}/m4"), "joined ").await;
    let mut follow = ok(Group::follow(&*handles[0], &dir).await, "follow");
    let names = |list: &[KvPair]| -> Vec<String> {
        list.iter()
            .map(|p| p.key.rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    let mut until = async |want: &[&str], within: Duration, what: &str| {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, follow.next()).await;
            let list = match next {
                Ok(Some(list)) => ok(list, what),
                Ok(None) => panic!("{what}: the follower ended"),
                Err(_) => panic!(
                    "{what}: the members were not {want:?} within {within:?} (last: {last:?})"
                ),
            };
            last = names(&list);
            if last == want {
                return;
            }
        }
    };
    until(
        &["m0", "m1", "m2", "m3", "m4"],
        EVENT_TIMEOUT,
        "the five members",
    )
    .await;
    ok(members.remove(2).leave().await, "leave");
    until(&["m0", "m1", "m3", "m4"], EVENT_TIMEOUT, "after m2 left").await;
    let _ = child.start_kill();
    let killed = Instant::now();
    let bound = ttl + slack;
    until(
        &["m0", "m1", "m3"],
        bound + EVENT_TIMEOUT,
        "after the child was killed",
    )
    .await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= bound,
        "the killed member left {gone_after:?} after the kill; the bound is the TTL plus the \
         backend's slack, {bound:?}"
    );
    eprintln!("killed member gone {gone_after:?} after the kill (TTL {ttl:?})");
    let _ = child.wait().await;
    drop((members, follow));
    cleanup(&*handles[0], &dir).await;
    for h in handles {
        let _ = h.close().await;
    }
}
