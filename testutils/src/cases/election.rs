//! Leader election: successions, cancelled campaigns, following the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore_core::{
    Candidate, ElectionOptions, Error, KvPair, Leadership, Result, Store, WatchStream, follow,
};

use crate::{EVENT_TIMEOUT, Opener, cleanup, error_chain, ok, scratch_dir};

/// How many leaders [`election_successions`] goes through.
const SUCCESSIONS: usize = 20;
/// How many candidates [`election_successions`] runs.
const CANDIDATES: usize = 5;

/// The election options the suite uses: the opener's TTL.
fn election_ttl(opener: &Opener) -> ElectionOptions {
    ElectionOptions::default().with_ttl(opener.ttl)
}

/// A store without locks refuses to campaign with `CallNotSupported`; `true` when it has them.
async fn can_elect(store: &Arc<dyn Store>, key: &str) -> bool {
    if store.capabilities().lock {
        return true;
    }
    assert_err!(
        Candidate::new(store.clone(), key, "v", None)
            .campaign()
            .await,
        Error::CallNotSupported { .. },
        "campaign without the lock capability"
    );
    false
}

/// The next state of `follower` within `bound`, panicking on an error or an end.
pub(crate) async fn next_state(
    follower: &mut WatchStream,
    bound: Duration,
    what: &str,
) -> Option<KvPair> {
    match tokio::time::timeout(bound, follower.next()).await {
        Ok(Some(Ok(state))) => state,
        Ok(Some(Err(err))) => panic!("{what}: follow ended: {}", error_chain(&err)),
        Ok(None) => panic!("{what}: follow ended"),
        Err(_) => panic!("{what}: no state within {bound:?}"),
    }
}

/// Reads `follower` until it reports `want` as leader; `None` states are allowed in between,
/// any other value is not.
pub(crate) async fn follow_to(follower: &mut WatchStream, want: &[u8], bound: Duration) -> KvPair {
    let until = Instant::now() + bound;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match next_state(follower, left, "following the new leader").await {
            Some(pair) if pair.value == want => return pair,
            Some(pair) => panic!(
                "the follower reported {:?} while waiting for {:?}",
                String::from_utf8_lossy(&pair.value),
                String::from_utf8_lossy(want)
            ),
            None => {}
        }
    }
}

/// Five candidates on two handles go through twenty successions by `resign`: never two leaders
/// at once, terms strictly increasing, each leader's `lost()` resolved by its resign. A
/// follower starts with `None` (no candidate yet), then sees leaders in term order — it may
/// coalesce quick successions but never goes back — and ends on the last leader, then `None`
/// once it resigns.
pub async fn election_successions(opener: &Opener) {
    let stores = [opener.open().await, opener.open().await];
    let dir = scratch_dir("election");
    let key = format!("{dir}/leader");
    if !can_elect(&stores[0], &key).await {
        return;
    }
    let watch = stores[0].capabilities().watch;
    let mut follower = follow(stores[0].clone(), &key);
    if watch {
        assert_eq!(
            next_state(&mut follower, EVENT_TIMEOUT, "the follower's first state").await,
            None,
            "follow on a key no one leads yields None first"
        );
    }
    // A task reads the follower as fast as it yields, so the test sees every state it gave.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        if watch {
            while let Some(item) = follower.next().await {
                if seen_tx.send(item).is_err() {
                    break;
                }
            }
        }
    });

    struct Shared {
        leading: AtomicUsize,
        log: std::sync::Mutex<Vec<(u64, String)>>,
    }
    let shared = Arc::new(Shared {
        leading: AtomicUsize::new(0),
        log: std::sync::Mutex::new(Vec::new()),
    });
    let (last_tx, last_rx) = tokio::sync::mpsc::channel::<Leadership>(1);
    let mut candidates = tokio::task::JoinSet::new();
    for i in 0..CANDIDATES {
        let candidate = Candidate::new(
            stores[i % 2].clone(),
            &key,
            format!("candidate-{i}"),
            Some(&election_ttl(opener)),
        );
        let (shared, last_tx) = (shared.clone(), last_tx.clone());
        // Each waits behind at most the four others, each holding for a moment.
        let bound = EVENT_TIMEOUT * 2;
        candidates.spawn(async move {
            loop {
                let leadership = ok(
                    tokio::time::timeout(bound, candidate.campaign())
                        .await
                        .unwrap_or_else(|_| panic!("no leadership within {bound:?}")),
                    "campaign",
                );
                let others = shared.leading.fetch_add(1, Ordering::SeqCst);
                assert_eq!(others, 0, "two leaders at once");
                assert!(leadership.is_leader(), "a new leader believes it leads");
                let n = {
                    let mut log = shared.log.lock().unwrap();
                    log.push((
                        leadership.term(),
                        String::from_utf8_lossy(leadership.value()).into_owned(),
                    ));
                    log.len()
                };
                if n == SUCCESSIONS {
                    // The last leader stays until the follower has seen it.
                    last_tx.send(leadership).await.expect("the test waits");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert!(leadership.is_leader(), "still leading before resigning");
                shared.leading.fetch_sub(1, Ordering::SeqCst);
                let lost = leadership.lost();
                ok(leadership.resign().await, "resign");
                assert!(lost.is_lost(), "resign resolves lost()");
            }
        });
    }
    drop(last_tx);
    let mut last_rx = last_rx;
    let overall = EVENT_TIMEOUT * 6;
    let last = tokio::time::timeout(overall, async {
        loop {
            tokio::select! {
                biased;
                last = last_rx.recv() => return last.expect("a candidate sends the last leadership"),
                joined = candidates.join_next() => match joined {
                    Some(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    // The last leader's task, which has sent its leadership.
                    Some(Ok(())) => {}
                    Some(Err(err)) => panic!("a candidate stopped early: {err}"),
                    None => panic!("every candidate stopped"),
                },
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{SUCCESSIONS} successions within {overall:?}"));
    // The others are still campaigning: dropping their campaigns withdraws them.
    candidates.abort_all();
    while let Some(joined) = candidates.join_next().await {
        if let Err(err) = joined
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
    let log = shared.log.lock().unwrap().clone();
    assert_eq!(log.len(), SUCCESSIONS);
    for pair in log.windows(2) {
        assert!(
            pair[1].0 > pair[0].0,
            "terms must increase strictly: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(last.is_leader());
    let current = ok(stores[1].get(&key, None).await, "get the leader's value");
    assert_eq!(
        current.value,
        last.value().clone(),
        "the key holds the leader's value"
    );
    if !watch {
        ok(last.resign().await, "resign");
        assert!(!ok(stores[1].exists(&key, None).await, "exists"));
        cleanup(&*stores[1], &dir).await;
        return;
    }
    // The follower reaches the last leader; once it resigns, the follower ends on `None`.
    let mut seen = Vec::new();
    while next_seen(&mut seen_rx, &mut seen).await.as_ref() != Some(&current) {}
    ok(last.resign().await, "resign the last leader");
    while next_seen(&mut seen_rx, &mut seen).await.is_some() {}
    check_followed(&seen, &log, &current);
    reader.abort();
    cleanup(&*stores[1], &dir).await;
    for store in stores {
        let _ = store.close().await;
    }
}

/// The follower's next state from the reader task, kept in `seen`.
async fn next_seen(
    states: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Option<KvPair>>>,
    seen: &mut Vec<Option<KvPair>>,
) -> Option<KvPair> {
    let item = tokio::time::timeout(EVENT_TIMEOUT, states.recv())
        .await
        .unwrap_or_else(|_| panic!("the follower gave no new state within {EVENT_TIMEOUT:?}"))
        .expect("the follower runs");
    let state = item.unwrap_or_else(|e| panic!("follow ended: {}", error_chain(&e)));
    seen.push(state.clone());
    state
}

/// Waits (bounded) until `key` is gone.
async fn wait_for_absent(store: &dyn Store, key: &str) {
    let gone = crate::eventually(EVENT_TIMEOUT, || async {
        matches!(store.exists(key, None).await, Ok(false))
    })
    .await;
    assert!(gone, "a resigned leader's value must be deleted");
}

/// What a follower saw through twenty successions: leaders in term order (a subsequence of the
/// log, `last_index` strictly increasing), the last leader's pair, and `None` at the end.
///
/// A campaign can win the lock on the server and still not return a leadership: the hold
/// was lost before `campaign` could hand it out (renewals late on a loaded machine), or the
/// answer of the request that took it was lost (a transient error; the hold then runs out at
/// its TTL). That win was real on the server, so a follower — which shows the server's
/// latest state — may report it, with its candidate's value and a term the log never got.
/// Such a state is accepted (and printed) only if its value is a candidate's and its term
/// falls strictly between two logged terms; a logged term seen with another value, or an
/// unknown value, fails.
fn check_followed(states: &[Option<KvPair>], log: &[(u64, String)], last: &KvPair) {
    let leaders: Vec<&KvPair> = states.iter().filter_map(|s| s.as_ref()).collect();
    for pair in leaders.windows(2) {
        assert!(
            pair[1].last_index > pair[0].last_index,
            "the follower went back: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let candidates: Vec<String> = (0..CANDIDATES).map(|i| format!("candidate-{i}")).collect();
    let (first_term, last_term) = (log[0].0, log[log.len() - 1].0);
    let mut logged = Vec::new();
    for pair in &leaders {
        let value = String::from_utf8_lossy(&pair.value);
        match log.iter().find(|(term, _)| *term == pair.last_index) {
            Some((_, v)) => {
                assert_eq!(
                    *v, value,
                    "the follower saw {pair:?}, but that term's leader had another value"
                );
                logged.push(*pair);
            }
            None => {
                assert!(
                    candidates.iter().any(|c| *c == value)
                        && pair.last_index > first_term
                        && pair.last_index < last_term,
                    "the follower saw {pair:?}, which is no leader's value and term"
                );
                eprintln!(
                    "the follower saw {pair:?}: a win its campaign did not hand out (lost as it \
                     was won, or its answer lost)"
                );
            }
        }
    }
    // In term order: each value the follower saw matches a later entry of the log.
    let mut next = 0;
    for pair in &logged {
        let value = String::from_utf8_lossy(&pair.value);
        match log[next..].iter().position(|(_, v)| *v == value) {
            Some(at) => next += at + 1,
            None => panic!(
                "the follower saw {value} out of term order (leaders: {:?}, seen: {logged:?})",
                log.iter().map(|(_, v)| v).collect::<Vec<_>>()
            ),
        }
    }
    assert_eq!(
        leaders.last().copied(),
        Some(last),
        "the follower must reach the last leader"
    );
    assert_eq!(
        states.last(),
        Some(&None),
        "the follower must end on None once the last leader resigned"
    );
}

/// A campaign cancelled by `tokio::time::timeout` leaves no candidate behind: once the leader
/// resigns, a new candidate wins at once (a leftover one would hold the lock for its TTL) and
/// the follower never reports the cancelled candidate.
pub async fn election_cancel_leaves_no_candidate(opener: &Opener) {
    let (a, b) = (opener.open().await, opener.open().await);
    let dir = scratch_dir("election_cancel");
    let key = format!("{dir}/leader");
    if !can_elect(&a, &key).await {
        return;
    }
    let opts = election_ttl(opener);
    let first = ok(
        tokio::time::timeout(
            EVENT_TIMEOUT,
            Candidate::new(a.clone(), &key, "first", Some(&opts)).campaign(),
        )
        .await
        .expect("an uncontested campaign wins at once"),
        "campaign",
    );
    let mut follower = a.capabilities().watch.then(|| follow(b.clone(), &key));
    if let Some(follower) = &mut follower {
        follow_to(follower, b"first", EVENT_TIMEOUT).await;
    }
    let ghost = Candidate::new(b.clone(), &key, "ghost", Some(&opts));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ghost.campaign())
            .await
            .is_err(),
        "a campaign waits while another candidate leads"
    );
    let lost = first.lost();
    ok(first.resign().await, "resign");
    assert!(lost.is_lost());
    let started = Instant::now();
    let third = ok(
        tokio::time::timeout(
            EVENT_TIMEOUT,
            Candidate::new(a.clone(), &key, "third", Some(&opts)).campaign(),
        )
        .await
        .expect("the next candidate wins"),
        "campaign",
    );
    let waited = started.elapsed();
    assert!(
        waited < opener.ttl,
        "the next candidate waited {waited:?}: the cancelled campaign left a candidate behind"
    );
    if let Some(follower) = &mut follower {
        follow_to(follower, b"third", EVENT_TIMEOUT).await;
    }
    assert_eq!(
        &ok(b.get(&key, None).await, "get").value[..],
        b"third",
        "the key holds the new leader's value"
    );
    ok(third.resign().await, "resign");
    cleanup(&*a, &dir).await;
    let _ = a.close().await;
    let _ = b.close().await;
}

/// `follow` on a key with no candidate yields `None` first; a leader's value follows; dropping
/// the `Leadership` resigns (the follower sees `None`); campaigning again gives a greater term;
/// a leadership outlives its candidate and its store handle; closing the store ends the
/// leadership. A malformed key fails before any I/O.
pub async fn election_follow_and_drop(opener: &Opener) {
    let store = opener.open().await;
    let dir = scratch_dir("election_follow");
    let key = format!("{dir}/leader");
    assert_err!(
        Candidate::new(store.clone(), "a//b", "v", None)
            .campaign()
            .await,
        Error::InvalidKey { .. },
        "campaign on a malformed key"
    );
    match follow(store.clone(), "a//b").next().await {
        Some(Err(Error::InvalidKey { .. })) => {}
        other => panic!("follow on a malformed key: expected InvalidKey, got {other:?}"),
    }
    if !can_elect(&store, &key).await {
        return;
    }
    let watch = store.capabilities().watch;
    let mut follower = watch.then(|| follow(store.clone(), &key));
    if let Some(follower) = &mut follower {
        assert_eq!(
            next_state(follower, EVENT_TIMEOUT, "the first state").await,
            None,
            "follow on a key with no candidate yields None first"
        );
    }
    let candidate = Candidate::new(store.clone(), &key, "solo", Some(&election_ttl(opener)));
    let leadership = ok(
        tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("an uncontested campaign wins at once"),
        "campaign",
    );
    assert!(leadership.is_leader());
    let first_term = leadership.term();
    let first = match &mut follower {
        Some(follower) => next_state(follower, EVENT_TIMEOUT, "the leader")
            .await
            .expect("the follower reports the leader"),
        None => ok(store.get(&key, None).await, "get"),
    };
    assert_eq!(&first.value[..], b"solo");
    assert_eq!(
        first.last_index, first_term,
        "the leader's value has the term as last_index"
    );
    let lost = leadership.lost();
    drop(leadership);
    tokio::time::timeout(EVENT_TIMEOUT, lost)
        .await
        .expect("dropping a Leadership ends it");
    match &mut follower {
        Some(follower) => assert_eq!(
            next_state(follower, EVENT_TIMEOUT, "after the drop").await,
            None,
            "dropping the Leadership resigns: no one leads"
        ),
        None => wait_for_absent(&*store, &key).await,
    }
    let again = ok(
        tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("campaign again"),
        "campaign again",
    );
    assert!(
        again.term() > first_term,
        "a later leader has a greater term"
    );
    if let Some(follower) = &mut follower {
        let second = next_state(follower, EVENT_TIMEOUT, "the second leadership")
            .await
            .expect("the follower reports the leader again");
        assert_eq!(&second.value[..], b"solo");
        assert!(second.last_index > first.last_index);
    }
    ok(again.resign().await, "resign");

    // A leadership outlives its candidate and every other handle on its store: it keeps the
    // store open and renewing, past the TTL.
    let own = opener.open().await;
    let kept = ok(
        tokio::time::timeout(
            EVENT_TIMEOUT,
            Candidate::new(own, &key, "kept", Some(&election_ttl(opener))).campaign(),
        )
        .await
        .expect("an uncontested campaign wins at once"),
        "campaign",
    );
    tokio::time::sleep(opener.ttl + opener.ttl / 2).await;
    assert!(kept.is_leader(), "still leading past the TTL");
    assert_eq!(
        &ok(store.get(&key, None).await, "get").value[..],
        b"kept",
        "the leader's value outlives its TTL while the leadership lives"
    );
    ok(kept.resign().await, "resign");

    let again = ok(
        tokio::time::timeout(EVENT_TIMEOUT, candidate.campaign())
            .await
            .expect("campaign again"),
        "campaign again",
    );
    let lost = again.lost();
    cleanup(&*store, &dir).await;
    ok(store.close().await, "close");
    tokio::time::timeout(EVENT_TIMEOUT, lost)
        .await
        .expect("closing the store ends the leadership");
    assert!(!again.is_leader());
    if let Some(follower) = &mut follower {
        // The follower's stream ends with its store (possibly after the delete above).
        let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(item) = follower.next().await {
                if let Err(err) = item {
                    panic!("follow ended with an error: {}", error_chain(&err));
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "follow ends when its store is closed");
    }
}
