//! Fault cases of leader election: a leader process killed or paused (cross-process, through
//! this test binary re-run as the leader), and a server paused or restarted under a leader.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_core::{Candidate, ElectionOptions, Error, Leadership, Store, WatchStream, follow};

use crate::cases::{follow_to, next_state};
use crate::faults::{PauseWatch, loss_report, report_loss_after_pause, signal};
use crate::{
    EVENT_TIMEOUT, HolderProcess, Opener, cleanup, error_chain, ok, scratch_dir, server_control,
};

/// Environment variable that puts a re-run test binary in leader mode: it campaigns on the key
/// it names and prints `leading <term>`.
pub const LEADER_VAR: &str = "KVSTORE_TEST_LEAD";

fn opts(ttl: Duration) -> ElectionOptions {
    ElectionOptions::default().with_ttl(ttl)
}

/// In the child: campaigns for `key` with the value `child`; then calls `before_print` and
/// prints `leading <term>` (the line the parent waits for).
async fn lead_in_child<T>(
    opener: &Opener,
    key: &str,
    ttl: Duration,
    before_print: impl FnOnce() -> T,
) -> (kvstore_core::Leadership, T) {
    let store = opener.open().await;
    let leadership = ok(
        Candidate::new(store, key, "child", Some(&opts(ttl)))
            .campaign()
            .await,
        "campaign",
    );
    let before = before_print();
    println!("leading {}", leadership.term());
    (leadership, before)
}

/// How many times [`follow_to_new_leader`] campaigns again when the new leader loses its lease
/// before the follower has seen it.
const FOLLOW_ATTEMPTS: usize = 3;

/// Reads `follower` until it reports `value`, the value of `leadership` (won on `store` for
/// `key`); returns the leadership that the follower was seen to report.
///
/// A leadership can be lost before the follower's next read: a server too slow to confirm a
/// renewal within the loss deadline (a server or a renewal task held up on a loaded
/// machine). Its value then comes and goes between two reads, and a follower — which shows
/// the latest state, not every state — rightly never reports it. That is not the follower's
/// fault, so the candidate campaigns again, up to [`FOLLOW_ATTEMPTS`] times, each loss printed;
/// a follower that misses a leadership that is still held fails the test, with the key's
/// current value.
async fn follow_to_new_leader(
    store: &std::sync::Arc<dyn Store>,
    key: &str,
    follower: &mut WatchStream,
    mut leadership: Leadership,
    value: &str,
    ttl: Duration,
) -> Leadership {
    for attempt in 1..=FOLLOW_ATTEMPTS {
        let lost = leadership.lost();
        let followed = tokio::select! {
            biased;
            _ = follow_to(follower, value.as_bytes(), EVENT_TIMEOUT * 2) => true,
            () = lost => false,
            () = tokio::time::sleep(EVENT_TIMEOUT) => {
                let now = store.get(key, None).await;
                panic!(
                    "{}: the follower did not report {value:?} within {EVENT_TIMEOUT:?} while \
                     it led (is_leader: {}; the key now: {:?})",
                    store.backend(),
                    leadership.is_leader(),
                    now.map(|pair| String::from_utf8_lossy(&pair.value).into_owned())
                );
            }
        };
        if followed {
            return leadership;
        }
        let now = store.get(key, None).await;
        eprintln!(
            "{}: the new leader lost its lease before the follower saw it (attempt \
             {attempt}; the key now: {:?}); campaigning again",
            store.backend(),
            now.map(|pair| String::from_utf8_lossy(&pair.value).into_owned())
        );
        drop(leadership);
        leadership = ok(
            tokio::time::timeout(
                EVENT_TIMEOUT,
                Candidate::new(store.clone(), key, value.to_owned(), Some(&opts(ttl))).campaign(),
            )
            .await
            .expect("an uncontested campaign wins within the event timeout"),
            "campaign",
        );
    }
    panic!("the new leader lost its lease {FOLLOW_ATTEMPTS} times before the follower saw it");
}

/// A leader process killed with SIGKILL (no resign, no close) is replaced within `bound` (the
/// TTL plus the backend's expiry slack) by a waiting candidate with a greater term, and a
/// follower goes from the dead leader to the new one. Returns the failover time (kill → new
/// leader). Call it from a `#[tokio::test]` named `test_name` (the binary re-runs itself as the
/// leader).
pub async fn killed_leader_is_replaced(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    bound: Duration,
) -> Duration {
    if let Ok(key) = std::env::var(LEADER_VAR) {
        let _leadership = lead_in_child(opener, &key, ttl, || ()).await;
        std::future::pending::<()>().await;
    }
    let dir = scratch_dir("killed_leader");
    let key = format!("{dir}/leader");
    let HolderProcess {
        mut child,
        token: child_term,
        ..
    } = HolderProcess::spawn_as(test_name, LEADER_VAR, &key, "leading ").await;
    let store = opener.open().await;
    let mut follower = follow(store.clone(), &key);
    let first = next_state(&mut follower, EVENT_TIMEOUT, "the first state").await;
    assert_eq!(
        first.map(|p| p.value),
        Some("child".into()),
        "the follower starts with the child leading"
    );
    let candidate = Candidate::new(store.clone(), &key, "parent", Some(&opts(ttl)));
    let mut campaign = tokio::spawn(async move { candidate.campaign().await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut campaign)
            .await
            .is_err(),
        "the campaign waits while the child leads"
    );
    // SIGKILL: the leader can neither resign nor close; its lease has to run out.
    child.start_kill().expect("kill");
    child.wait().await.expect("wait");
    let killed = Instant::now();
    let leadership = ok(
        tokio::time::timeout(bound, campaign)
            .await
            .unwrap_or_else(|_| panic!("a new leader must be elected within {bound:?} of the kill"))
            .expect("campaign task"),
        "campaign",
    );
    let failover = killed.elapsed();
    assert!(
        leadership.term() > child_term,
        "the new term {} must exceed the dead leader's {child_term}",
        leadership.term()
    );
    let leadership =
        follow_to_new_leader(&store, &key, &mut follower, leadership, "parent", ttl).await;
    eprintln!(
        "{}: new leader {failover:?} after the leader was killed (TTL {ttl:?})",
        store.backend()
    );
    ok(leadership.resign().await, "resign");
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
    failover
}

/// A leader process paused (SIGSTOP) past its TTL: its value disappears (a follower reports
/// `None`) and a candidate wins with a greater term, both within `bound`; once the old leader
/// resumes (SIGCONT), its `lost()` has resolved within one renewal period and `is_leader()` is
/// false. Call it from a `#[tokio::test]` named `test_name`.
pub async fn paused_leader_is_replaced(
    opener: &Opener,
    test_name: &str,
    ttl: Duration,
    bound: Duration,
) {
    if let Ok(key) = std::env::var(LEADER_VAR) {
        let (leadership, pause) = lead_in_child(opener, &key, ttl, || PauseWatch::start(ttl)).await;
        report_loss_after_pause(pause, leadership.lost(), || {
            format!("leader {}", leadership.is_leader())
        })
        .await;
        std::future::pending::<()>().await;
    }
    let dir = scratch_dir("paused_leader");
    let key = format!("{dir}/leader");
    let HolderProcess {
        mut child,
        mut lines,
        token: child_term,
    } = HolderProcess::spawn_as(test_name, LEADER_VAR, &key, "leading ").await;
    let pid = child.id().expect("leader pid").to_string();
    let store = opener.open().await;
    let mut follower = follow(store.clone(), &key);
    let first = next_state(&mut follower, EVENT_TIMEOUT, "the first state").await;
    assert_eq!(first.map(|p| p.value), Some("child".into()));

    signal(&pid, "-STOP").await;
    let paused = Instant::now();
    // No one else campaigns yet: the paused leader's value must go with its lease.
    let vacant = tokio::time::timeout(bound, next_state(&mut follower, bound, "vacancy")).await;
    let to_vacant = paused.elapsed();
    let leadership = tokio::time::timeout(
        bound,
        Candidate::new(store.clone(), &key, "parent", Some(&opts(ttl))).campaign(),
    )
    .await;
    let takeover = paused.elapsed();
    // Keep the leader paused past its TTL either way, so it sees the pause when it resumes.
    tokio::time::sleep((ttl + ttl / 5).saturating_sub(paused.elapsed())).await;
    signal(&pid, "-CONT").await;
    assert_eq!(
        vacant.expect("the paused leader's value must go within the bound"),
        None,
        "the follower reports no leader once the paused leader's lease ran out"
    );
    let leadership = ok(
        leadership.unwrap_or_else(|_| panic!("a new leader must be elected within {bound:?}")),
        "campaign",
    );
    assert!(leadership.term() > child_term, "a greater term");
    eprintln!(
        "{}: no leader {to_vacant:?} and a new one {takeover:?} after the leader's process paused",
        store.backend()
    );
    let leader = loss_report(&mut lines, ttl, "leader").await;
    assert_eq!(
        leader, "false",
        "the resumed leader must not believe it leads"
    );
    let leadership =
        follow_to_new_leader(&store, &key, &mut follower, leadership, "parent", ttl).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    ok(leadership.resign().await, "resign");
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}

/// Server paused past the TTL under a leader and a queued candidate: the leader's `lost()`
/// resolves within `ttl + slack` of the pause without the server saying so, and `is_leader()`
/// is false from then on. The queued candidate's own lease runs out during the pause too: after
/// the server resumes it queues again and wins — holding what it returns (its value is stored,
/// its term greater) — and the old leader campaigning again wins after it resigns. Returns the
/// time from pause to `lost()`.
pub async fn paused_server_ends_leadership(
    opener: &Opener,
    server: &str,
    ttl: Duration,
    slack: Duration,
) -> Duration {
    let (store, other) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("paused_server_leader");
    let key = format!("{dir}/leader");
    let candidate = Candidate::new(store.clone(), &key, "leader", Some(&opts(ttl)));
    let leadership = ok(
        tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("an uncontested campaign wins at once"),
        "campaign",
    );
    let old_term = leadership.term();
    let queued = Candidate::new(other.clone(), &key, "queued", Some(&opts(ttl)));
    let mut queued = tokio::spawn(async move { queued.campaign().await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut queued)
            .await
            .is_err(),
        "the second candidate waits"
    );

    server_control(server, "pause").await;
    let paused = Instant::now();
    let in_time = tokio::time::timeout(ttl + slack, leadership.lost())
        .await
        .is_ok();
    let to_lost = paused.elapsed();
    let leading_after = leadership.is_leader();
    tokio::time::sleep((ttl + slack).saturating_sub(paused.elapsed())).await;
    server_control(server, "resume").await;
    assert!(
        in_time,
        "lost() must resolve within {:?} of the server pausing",
        ttl + slack
    );
    assert!(!leading_after, "no leadership once lost");
    eprintln!("{server}: leadership lost {to_lost:?} after the server paused (TTL {ttl:?})");

    // The queued candidate lost its lease while waiting: it queues again and wins.
    let bound = ttl * 3 + slack + EVENT_TIMEOUT;
    let next = ok(
        tokio::time::timeout(bound, queued)
            .await
            .unwrap_or_else(|_| panic!("the queued candidate must win within {bound:?}"))
            .expect("campaign task"),
        "queued campaign",
    );
    assert!(next.is_leader(), "a returned leadership is held");
    assert!(next.term() > old_term, "a greater term after the loss");
    let stored = ok(other.get(&key, None).await, "get the new leader's value");
    assert_eq!(
        &stored.value[..],
        b"queued",
        "the new leader's value is stored"
    );
    assert_eq!(stored.last_index, next.term());
    assert!(
        !leadership.is_leader(),
        "the old leadership never comes back"
    );
    let next_term = next.term();
    ok(next.resign().await, "resign");
    let again = ok(
        tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("campaigning again wins once the other resigned"),
        "campaign again",
    );
    assert!(again.term() > next_term, "terms keep growing");
    ok(again.resign().await, "resign");
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
    let _ = other.close().await;
    to_lost
}

/// Server restarted (same port) under a candidate that campaigns again whenever its leadership
/// ends: from two TTLs after the server answers (so a leadership that was not renewed since
/// cannot pass) and within a bound, a leader is elected again (or still leads, where the server
/// kept its lease) — its value is stored under the key — and a follower opened before the
/// restart reports exactly that stored leader.
pub async fn restarted_server_elects_again(opener: &Opener, server: &str, ttl: Duration) {
    let store = opener.open().await;
    let dir = scratch_dir("restart_leader");
    let key = format!("{dir}/leader");
    let (terms_tx, mut terms) = tokio::sync::watch::channel(None::<(u64, Instant)>);
    let candidate = Candidate::new(store.clone(), &key, "leader", Some(&opts(ttl)));
    let campaigner = tokio::spawn(async move {
        loop {
            let leadership = match candidate.campaign().await {
                Ok(leadership) => leadership,
                Err(Error::Closed { .. }) => return,
                Err(err) => panic!("campaign failed: {}", error_chain(&err)),
            };
            terms_tx.send_replace(Some((leadership.term(), Instant::now())));
            leadership.lost().await;
            terms_tx.send_replace(None);
        }
    });
    let mut follower = follow(store.clone(), &key);
    let first_term = tokio::time::timeout(EVENT_TIMEOUT, terms.wait_for(Option::is_some))
        .await
        .expect("the candidate leads")
        .expect("campaigner runs")
        .expect("some")
        .0;
    let followed = follow_to(&mut follower, b"leader", EVENT_TIMEOUT).await;
    // The follower's latest state, kept current by a task.
    let (latest_tx, latest) = tokio::sync::watch::channel(Some(Some(followed)));
    let reader = tokio::spawn(async move {
        while let Some(item) = follower.next().await {
            match item {
                Ok(state) => {
                    latest_tx.send_replace(Some(state));
                }
                Err(err) => panic!("follow ended: {}", error_chain(&err)),
            }
        }
    });

    // A key that tells whether the server kept its data through the restart.
    let sentinel = format!("{dir}/sentinel");
    ok(
        store.put(&sentinel, b"kept?", None).await,
        "put the sentinel",
    );

    server_control(server, "restart").await;
    let answering = Instant::now();
    let bound = ttl * 3 + EVENT_TIMEOUT * 2;
    let elected = tokio::time::timeout(bound, async {
        // Checked from two TTLs after the restart on: a leadership that was not renewed since
        // (or a lease the server expired meanwhile) cannot pass.
        tokio::time::sleep((ttl * 2).saturating_sub(answering.elapsed())).await;
        loop {
            // Absent (the server lost it) or unreachable: not yet.
            let stored = store.get(&key, None).await.ok();
            let leading = *terms.borrow();
            let followed = latest.borrow().clone().flatten();
            if let (Some((term, since)), Some(stored)) = (leading, stored)
                && stored.value == "leader"
                && followed.as_ref() == Some(&stored)
            {
                return (term, since);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (term, since) = elected.unwrap_or_else(|_| {
        panic!(
            "within {bound:?} of the restart, a leader must be stored and followed (leading: {:?}, followed: {:?})",
            *terms.borrow(),
            latest.borrow()
        )
    });
    let kept_data = matches!(store.exists(&sentinel, None).await, Ok(true));
    // A server that lost its data (Redis without persistence, a Consul dev agent) restarted
    // the counters terms come from: only a server that kept it can promise greater terms.
    if kept_data {
        assert!(
            term >= first_term,
            "terms never go back on a server that kept its data"
        );
    }
    if term == first_term {
        eprintln!(
            "{server}: leader kept through the restart (term {term}; data kept: {kept_data})"
        );
    } else {
        eprintln!(
            "{server}: leader re-elected {:?} after the server answered again (term {term}, first {first_term}; data kept: {kept_data})",
            since.saturating_duration_since(answering)
        );
    }
    assert!(!reader.is_finished(), "the follower survives the restart");
    reader.abort();
    campaigner.abort();
    let _ = campaigner.await;
    cleanup(&*store, &dir).await;
    let _ = store.close().await;
}
