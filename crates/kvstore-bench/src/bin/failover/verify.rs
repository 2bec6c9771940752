//! The verdict: the checks of the recorded history.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use kvstore::{Error, KvPair, Store};
use kvstore_testutils::linearizability::{self, Event, Op, Versioned};
use tokio::time::Instant;

use crate::Args;
use crate::control::*;
use crate::history::*;
use crate::report::*;
use crate::workload::*;

pub(crate) async fn verify(
    args: &Args,
    shared: &Shared,
    keys: &Keys,
    store: &dyn Store,
    fault_at: &[u64],
    mut faults: Vec<Fault>,
) -> anyhow::Result<Report> {
    let mut history =
        std::mem::take(&mut *shared.history.lock().unwrap_or_else(|e| e.into_inner()));

    // No acknowledged put lost.
    let mut finals = HashMap::new();
    for (key, _) in &history.acked_puts {
        if !finals.contains_key(key) {
            let value = match final_get(store, key).await? {
                Some(pair) => Some(value_of(&pair)?),
                None => None,
            };
            finals.insert(key.clone(), value);
        }
    }
    let lost_puts = lost_puts(&history.acked_puts, &finals);

    // Each register's history, with a final read appended.
    let mut per_register: HashMap<usize, Vec<Event>> = HashMap::new();
    for op in &history.registers {
        per_register.entry(op.register).or_default().push(op.event);
    }
    let mut non_linearizable = Vec::new();
    let unknown = history
        .registers
        .iter()
        .filter(|o| o.event.returned.is_none())
        .count();
    for r in 0..args.registers {
        let invoked = shared.now();
        let value = match final_get(store, &keys.register(r)).await? {
            Some(pair) => Some(Versioned::at(value_of(&pair)?, pair.last_index)),
            None => None,
        };
        let events = per_register.entry(r).or_default();
        // In invocation order: the search tries the earliest operations first.
        events.sort_by_key(|e| e.invoked);
        events.push(Event {
            op: Op::Read(value),
            invoked,
            returned: Some(shared.now()),
        });
        let verdict = linearizability::check(None, events);
        if !verdict.is_linearizable() {
            non_linearizable.push(r);
            if let linearizability::Verdict::NotLinearizable { placed }
            | linearizability::Verdict::Undecided { placed } = &verdict
            {
                let what = if matches!(verdict, linearizability::Verdict::Undecided { .. }) {
                    "undecided within the search budget"
                } else {
                    "not linearizable"
                };
                eprintln!(
                    "register {r}: {what} after {} of {} events; next events: {:?}",
                    placed.len(),
                    events.len(),
                    next_unplaced(events, placed)
                );
            }
        }
    }

    // Locks.
    let mut lock_violations = lock_violations(&mut history.acquisitions, &history.guarded);
    lock_violations.extend(overlapping_holds(&mut history.holds));
    let guarded_writes_ok = history.guarded.iter().filter(|g| g.ok).count();

    // Recovery per fault: until every client has succeeded again.
    for (kill, &at) in faults.iter_mut().zip(fault_at) {
        let firsts: Vec<Option<u64>> = history
            .successes
            .iter()
            .map(|s| s.iter().copied().find(|&t| t > at))
            .collect();
        kill.first_success_s = firsts
            .iter()
            .flatten()
            .min()
            .map(|&t| (t - at) as f64 / 1e9);
        kill.first_write_s = history
            .write_successes
            .iter()
            .copied()
            .filter(|&t| t > at)
            .min()
            .map(|t| (t - at) as f64 / 1e9);
        kill.recovery_s = firsts
            .iter()
            .copied()
            .collect::<Option<Vec<u64>>>()
            .and_then(|ts| ts.into_iter().max())
            .map(|t| (t - at) as f64 / 1e9);
    }

    Ok(Report {
        cluster: args.cluster.clone(),
        clients: args.clients,
        operations: history.ops,
        seed: 0,
        faults,
        acked_puts: history.acked_puts.len(),
        lost_puts,
        register_events: history.registers.len(),
        unknown_register_events: unknown,
        non_linearizable_registers: non_linearizable,
        lock_acquisitions: history.acquisitions.len(),
        guarded_writes_ok,
        lock_violations,
        hung_calls: std::mem::take(&mut history.hung),
        errors: std::mem::take(&mut history.errors),
        unexpected_errors: std::mem::take(&mut history.unexpected),
        too_little: too_little(
            history.acquisitions.len(),
            guarded_writes_ok,
            &history.cas_ok,
        ),
        cas_ok_per_client: std::mem::take(&mut history.cas_ok),
        slowest_calls_s: std::mem::take(&mut history.slowest),
        recovery_bound_s: 0.0,
        recovered: false,
        passed: false,
    })
}

/// The acknowledged puts whose key does not hold their value in the final state (`finals`:
/// each key's final value, `None` when absent). Each put writes a key of its own; were a key
/// written several times, its greatest acknowledged value must be the final one.
pub(crate) fn lost_puts(
    acked: &[(String, u64)],
    finals: &HashMap<String, Option<u64>>,
) -> Vec<String> {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (key, seq) in acked {
        let entry = last.entry(key).or_insert(*seq);
        *entry = (*entry).max(*seq);
    }
    let mut lost: Vec<String> = last
        .into_iter()
        .filter_map(|(key, seq)| match finals.get(key).copied().flatten() {
            Some(found) if found == seq => None,
            found => Some(format!("{key}: acknowledged {seq}, found {found:?}")),
        })
        .collect();
    lost.sort();
    lost
}

/// Mutual exclusion and fencing, from the acquisitions and guarded writes: no token granted
/// twice; an acquisition that began after another completed has a greater token; no guarded
/// write with a token succeeded after a write or an acquisition with a greater token had
/// completed. At most 20 violations are returned.
pub(crate) fn lock_violations(
    acquisitions: &mut [Acquisition],
    guarded: &[GuardedWrite],
) -> Vec<String> {
    let mut violations = Vec::new();
    acquisitions.sort_by_key(|a| a.returned);
    let mut tokens = std::collections::HashSet::new();
    for a in acquisitions.iter() {
        if !tokens.insert(a.token) {
            violations.push(format!("fencing token {} granted twice", a.token));
        }
    }
    for (i, a) in acquisitions.iter().enumerate() {
        for b in &acquisitions[i + 1..] {
            if a.returned < b.invoked && a.token >= b.token {
                violations.push(format!(
                    "acquisition with token {} began after one with token {} completed",
                    b.token, a.token
                ));
            }
        }
    }
    let ok_writes: Vec<&GuardedWrite> = guarded.iter().filter(|g| g.ok).collect();
    for newer in &ok_writes {
        for older in &ok_writes {
            if older.token < newer.token && older.invoked > newer.returned {
                violations.push(format!(
                    "a guarded write with token {} succeeded after one with token {} had completed",
                    older.token, newer.token
                ));
            }
        }
    }
    for newer in acquisitions.iter() {
        for older in &ok_writes {
            if older.token < newer.token && older.invoked > newer.returned {
                violations.push(format!(
                    "a guarded write with token {} succeeded after token {} was granted",
                    older.token, newer.token
                ));
            }
        }
    }
    violations.truncate(20);
    violations
}

/// How much two holds may seem to overlap before it counts: the time a task takes to notice a
/// resolved `LockLost` on a loaded machine. The loss rule itself leaves a gap of at least a
/// fifth of the TTL between a lost hold and the next.
pub(crate) const HOLD_OVERLAP_MARGIN: u64 = 100_000_000;

/// Mutual exclusion, checked directly: no two holds overlap by more than
/// [`HOLD_OVERLAP_MARGIN`]. At most 20 violations.
pub(crate) fn overlapping_holds(holds: &mut [Hold]) -> Vec<String> {
    holds.sort_by_key(|h| h.from);
    let mut violations = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if b.from >= a.to {
                break;
            }
            let overlap = a.to.min(b.to) - b.from;
            if overlap > HOLD_OVERLAP_MARGIN {
                violations.push(format!(
                    "holds with tokens {} ({:.3}–{:.3} s into the run) and {} (from {:.3} s) \
                     overlapped by {:.3} s",
                    a.token,
                    a.from as f64 / 1e9,
                    a.to as f64 / 1e9,
                    b.token,
                    b.from as f64 / 1e9,
                    overlap as f64 / 1e9
                ));
            }
        }
    }
    violations.truncate(20);
    violations
}

/// The least a run must do for its verdict to mean anything: a run that took almost no lock,
/// made almost no guarded write or whose clients almost never completed a CAS would pass every
/// check by having nothing to check. Runs on CI's clusters do one to two orders of magnitude
/// more.
pub(crate) const MIN_ACQUISITIONS: usize = 10;
pub(crate) const MIN_GUARDED_WRITES: usize = 10;
pub(crate) const MIN_CAS_PER_CLIENT: usize = 5;

/// What the run did too little of (empty: enough for a meaningful verdict).
pub(crate) fn too_little(
    acquisitions: usize,
    guarded_writes_ok: usize,
    cas_ok: &[usize],
) -> Vec<String> {
    let mut short = Vec::new();
    if acquisitions < MIN_ACQUISITIONS {
        short.push(format!(
            "{acquisitions} lock acquisitions (at least {MIN_ACQUISITIONS})"
        ));
    }
    if guarded_writes_ok < MIN_GUARDED_WRITES {
        short.push(format!(
            "{guarded_writes_ok} acknowledged guarded writes (at least {MIN_GUARDED_WRITES})"
        ));
    }
    for (client, &n) in cas_ok.iter().enumerate() {
        if n < MIN_CAS_PER_CLIENT {
            short.push(format!(
                "client {client}: {n} acknowledged CAS (at least {MIN_CAS_PER_CLIENT})"
            ));
        }
    }
    short
}

/// The first few events the checker could not place, for the report.
pub(crate) fn next_unplaced(events: &[Event], placed: &[usize]) -> Vec<Event> {
    let placed: std::collections::HashSet<usize> = placed.iter().copied().collect();
    let mut rest: Vec<Event> = (0..events.len())
        .filter(|i| !placed.contains(i))
        .map(|i| events[i])
        .collect();
    rest.sort_by_key(|e| e.invoked);
    rest.truncate(5);
    rest
}

/// A read that retries transient errors for up to 30 s: the final state must be readable.
pub(crate) async fn final_get(store: &dyn Store, key: &str) -> anyhow::Result<Option<KvPair>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.get(key, None).await {
            Ok(pair) => return Ok(Some(pair)),
            Err(Error::KeyNotFound { .. }) => return Ok(None),
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err).with_context(|| format!("final read of {key}")),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The verdict's checks on known-bad histories: each must be caught.

    use super::*;

    pub(crate) fn acquisition(token: u64, invoked: u64, returned: u64) -> Acquisition {
        Acquisition {
            token,
            invoked,
            returned,
        }
    }

    pub(crate) fn write(token: u64, invoked: u64, returned: u64, ok: bool) -> GuardedWrite {
        GuardedWrite {
            token,
            invoked,
            returned,
            ok,
        }
    }

    #[test]
    pub(crate) fn a_lost_acknowledged_put_is_caught() {
        let acked = vec![
            ("k/0".to_owned(), 1),
            ("k/0".to_owned(), 2),
            ("k/1".to_owned(), 7),
        ];
        let mut finals = HashMap::from([("k/0".to_owned(), Some(2)), ("k/1".to_owned(), Some(7))]);
        assert!(lost_puts(&acked, &finals).is_empty());
        finals.insert("k/0".to_owned(), Some(1));
        assert_eq!(
            lost_puts(&acked, &finals),
            ["k/0: acknowledged 2, found Some(1)"]
        );
        finals.insert("k/0".to_owned(), None);
        assert_eq!(
            lost_puts(&acked, &finals).len(),
            1,
            "a vanished key is a lost put"
        );
    }

    #[test]
    pub(crate) fn overlapping_holders_are_caught() {
        // Sequential holders with growing tokens: fine.
        let mut good = [acquisition(1, 0, 10), acquisition(2, 20, 30)];
        assert!(lock_violations(&mut good, &[]).is_empty());
        // The same token granted twice.
        let mut twice = [acquisition(5, 0, 10), acquisition(5, 20, 30)];
        assert!(lock_violations(&mut twice, &[])[0].contains("granted twice"));
        // A later acquisition with a smaller token: a second holder the first never saw end.
        let mut backwards = [acquisition(9, 0, 10), acquisition(4, 20, 30)];
        assert!(lock_violations(&mut backwards, &[])[0].contains("began after"));
    }

    #[test]
    pub(crate) fn a_stale_guarded_write_accepted_is_caught() {
        let mut acquisitions = [acquisition(1, 0, 10), acquisition(2, 50, 60)];
        // Token 1 writes before token 2 is granted, and is refused after: fine.
        let fine = [write(1, 20, 30, true), write(1, 70, 80, false)];
        assert!(lock_violations(&mut acquisitions, &fine).is_empty());
        // Token 1's write accepted after token 2 was granted.
        let stale = [write(1, 70, 80, true)];
        let found = lock_violations(&mut acquisitions, &stale);
        assert!(
            found
                .iter()
                .any(|v| v.contains("after token 2 was granted")),
            "{found:?}"
        );
        // Token 1's write accepted after token 2's write completed.
        let after_write = [write(2, 61, 65, true), write(1, 70, 80, true)];
        let found = lock_violations(&mut acquisitions, &after_write);
        assert!(
            found.iter().any(|v| v.contains("had completed")),
            "{found:?}"
        );
    }

    #[test]
    pub(crate) fn overlapping_holds_are_caught() {
        let s = 1_000_000_000;
        let hold = |token, from, to| Hold { token, from, to };
        assert!(overlapping_holds(&mut [hold(1, 0, 2 * s), hold(2, 3 * s, 4 * s)]).is_empty());
        // Within the margin: a late notice of the loss, not two holders.
        let near = HOLD_OVERLAP_MARGIN / 2;
        assert!(
            overlapping_holds(&mut [hold(1, 0, 2 * s + near), hold(2, 2 * s, 3 * s)]).is_empty()
        );
        let found = overlapping_holds(&mut [hold(2, s, 3 * s), hold(1, 0, 2 * s)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("overlapped by 1.000 s"), "{found:?}");
    }

    #[test]
    pub(crate) fn a_run_that_did_too_little_fails() {
        assert!(too_little(117, 80, &[900, 850, 870, 910]).is_empty());
        let short = too_little(3, 0, &[900, 2]);
        assert_eq!(short.len(), 3, "{short:?}");
        assert!(short[2].contains("client 1"), "{short:?}");
    }

    #[test]
    pub(crate) fn a_non_linearizable_register_is_caught() {
        // A write of 1 completes, then a read that starts later sees the initial value.
        let history = [
            Event {
                op: Op::Write(Versioned::at(1, 5)),
                invoked: 0,
                returned: Some(10),
            },
            Event {
                op: Op::Read(None),
                invoked: 20,
                returned: Some(30),
            },
        ];
        assert!(!linearizability::check(None, &history).is_linearizable());
        assert!(linearizability::check(None, &history[..1]).is_linearizable());
    }
}
