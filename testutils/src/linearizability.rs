//! A linearizability checker for one register with reads, writes and compare-and-swap — the
//! model of one key under `get`, `put` and `atomic_put` — for histories recorded against real
//! servers under faults.
//!
//! A history is every operation's invocation and completion time and what it returned. An
//! operation whose outcome is unknown (a timeout hid it) may have taken effect at any moment
//! after its invocation, or never. The history is linearizable when some total order of the
//! operations respects real time (an operation that completed before another was invoked comes
//! first) and gives every known result when replayed on a register.
//!
//! The register holds a value and the index the server gave the write that stored it (its
//! `last_index`), as a key does: a compare-and-swap compares the index, as `atomic_put` does,
//! so a value written again (A → B → A) is a different state, and every write's index must be
//! greater than the one it replaced. A write whose outcome is unknown has no known index: the
//! first read that sees its value gives it one.
//!
//! The search is Wing and Gong's (1993), with Lowe's memoization of visited (linearized set,
//! register value) pairs (Lowe 2017, "Testing for linearizability"), as Knossos and
//! porcupine do: at each step any operation invoked before the earliest completion among the
//! operations not yet placed may go next. It runs within a time budget; a search that runs
//! out is `Undecided`, which a caller must count as a failure.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// What a register holds: a value and, when known, the index of the write that stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Versioned {
    /// The value.
    pub value: u64,
    /// The write's index (`last_index`); `None` when not known (a write whose outcome is
    /// unknown, or a model without indexes), which then matches any index.
    pub index: Option<u64>,
}

impl Versioned {
    /// `value` at `index`.
    pub fn at(value: u64, index: u64) -> Self {
        Versioned {
            value,
            index: Some(index),
        }
    }

    /// `value` with no known index: compared by value alone.
    pub fn unindexed(value: u64) -> Self {
        Versioned { value, index: None }
    }
}

/// A register state: `None` is the key's absence.
pub type Value = Option<Versioned>;

/// What an operation did, and what it returned when that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read that returned this state.
    Read(Value),
    /// A write of this value (acknowledged, or with an unknown outcome).
    Write(Versioned),
    /// Compare-and-swap: write `new` if the register holds `expect` (same value and index).
    /// `succeeded`: `Some(true)` acknowledged, `Some(false)` refused (the register held
    /// something else), `None` unknown.
    Cas {
        /// The state compared.
        expect: Value,
        /// The state written on success.
        new: Versioned,
        /// The outcome, when known.
        succeeded: Option<bool>,
    },
}

/// One operation of a history. Times are any monotonic clock (nanoseconds since the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What it did.
    pub op: Op,
    /// When it was invoked.
    pub invoked: u64,
    /// When it returned; `None` when its outcome is unknown (it timed out or its client died):
    /// it may have taken effect at any moment after `invoked`, or never.
    pub returned: Option<u64>,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid order exists: the indices of the events that took effect, in order (operations
    /// with an unknown outcome that never took effect are left out).
    Linearizable(Vec<usize>),
    /// No order exists. `placed` is the longest prefix the search could place; the events
    /// after it are where the history goes wrong.
    NotLinearizable {
        /// The longest order of events the search found consistent.
        placed: Vec<usize>,
    },
    /// The search ran out of its time budget before deciding: not a pass.
    Undecided {
        /// The longest order of events the search had found consistent.
        placed: Vec<usize>,
    },
}

impl Verdict {
    /// Whether the history is linearizable (`Undecided` is not).
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable(_))
    }
}

/// `state` read as `seen`: the state with the index the read gave it, or `None` when the read
/// contradicts it (another value, or another known index).
fn observe(state: Value, seen: Value) -> Option<Value> {
    match (state, seen) {
        (None, None) => Some(None),
        (Some(s), Some(x)) if s.value == x.value => match (s.index, x.index) {
            (Some(a), Some(b)) if a != b => None,
            (a, b) => Some(Some(Versioned {
                value: s.value,
                index: a.or(b),
            })),
        },
        _ => None,
    }
}

/// `new` replacing `state`: `None` when both indexes are known and `new`'s is not greater
/// (a server's indexes only grow).
fn replace(state: Value, new: Versioned) -> Option<Value> {
    match (state.and_then(|s| s.index), new.index) {
        (Some(old), Some(next)) if next <= old => None,
        _ => Some(Some(new)),
    }
}

/// Applies `op` to `value`: the new value, or `None` when the op's known result contradicts
/// the register. An unknown CAS outcome is resolved by the register (it succeeds exactly when
/// the compare holds).
fn step(value: Value, op: Op) -> Option<Value> {
    match op {
        Op::Read(seen) => observe(value, seen),
        Op::Write(v) => replace(value, v),
        Op::Cas {
            expect,
            new,
            succeeded,
        } => match (observe(value, expect), succeeded) {
            (Some(bound), Some(true) | None) => replace(bound, new),
            // Refused: the register held something else. With the register's index unknown
            // and the value equal, the indexes may differ: a refusal is possible.
            (Some(_), Some(false)) => {
                let ambiguous = matches!((value, expect), (Some(s), Some(e)) if s.index.is_none() && e.index.is_some());
                ambiguous.then_some(value)
            }
            (None, Some(true)) => None,
            (None, Some(false) | None) => Some(value),
        },
    }
}

/// The search state. Events are sorted by invocation, so the operations that may go next are
/// a short run starting at the first unplaced one, and a memo key needs only the placed bits
/// from there on.
struct Search {
    /// The history sorted by invocation; `original[i]` is event `i`'s index in the caller's.
    events: Vec<Event>,
    original: Vec<usize>,
    /// Placed events, one bit each.
    placed: Vec<u64>,
    /// The completion times of the unplaced events with a known result, with multiplicity:
    /// the smallest is the horizon.
    pending: BTreeMap<u64, usize>,
    seen: HashSet<(usize, Vec<u64>, Value)>,
    best: Vec<usize>,
    deadline: Instant,
    out_of_time: bool,
}

impl Search {
    fn new(history: &[Event], budget: Duration) -> Self {
        let mut original: Vec<usize> = (0..history.len()).collect();
        original.sort_by_key(|&i| history[i].invoked);
        let events: Vec<Event> = original.iter().map(|&i| history[i]).collect();
        let mut pending = BTreeMap::new();
        for returned in events.iter().filter_map(|e| e.returned) {
            *pending.entry(returned).or_insert(0) += 1;
        }
        Search {
            placed: vec![0; events.len().div_ceil(64)],
            events,
            original,
            pending,
            seen: HashSet::new(),
            best: Vec::new(),
            deadline: Instant::now() + budget,
            out_of_time: false,
        }
    }

    /// Places or unplaces event `i`.
    fn place(&mut self, i: usize, on: bool) {
        set(&mut self.placed, i, on);
        if let Some(returned) = self.events[i].returned {
            if on {
                if let Some(n) = self.pending.get_mut(&returned) {
                    *n -= 1;
                    if *n == 0 {
                        self.pending.remove(&returned);
                    }
                }
            } else {
                *self.pending.entry(returned).or_insert(0) += 1;
            }
        }
    }

    /// The earliest completion among the unplaced operations: it bounds which may go next.
    fn horizon(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(u64::MAX)
    }

    /// The index of the first unplaced event (`events.len()` when all are).
    fn first_unplaced(&self) -> usize {
        self.placed
            .iter()
            .position(|&w| w != u64::MAX)
            .map_or(self.events.len(), |w| {
                w * 64 + self.placed[w].trailing_ones() as usize
            })
            .min(self.events.len())
    }

    /// The memo key of the placed set: every word below the first unplaced event's is full,
    /// so the key is that word's index and the words from it to the last one with a bit set.
    fn key(&self, value: Value) -> (usize, Vec<u64>, Value) {
        let low = self.first_unplaced() / 64;
        let high = self
            .placed
            .iter()
            .rposition(|&w| w != 0)
            .map_or(low, |h| h.max(low));
        let words = self
            .placed
            .get(low..=high)
            .map_or_else(Vec::new, <[u64]>::to_vec);
        (low, words, value)
    }

    /// Whether the search may go on; records running out of time.
    fn in_time(&mut self) -> bool {
        if !self.out_of_time && Instant::now() > self.deadline {
            self.out_of_time = true;
        }
        !self.out_of_time
    }

    /// The first operation from `from` on that may go next on `value`, and the value after it.
    fn candidate(&self, value: Value, horizon: u64, from: usize) -> Option<(usize, Value)> {
        let from = from.max(self.first_unplaced());
        self.events[from..]
            .iter()
            // Sorted by invocation: nothing past the horizon may go next.
            .take_while(|e| e.invoked <= horizon)
            .enumerate()
            .find_map(|(k, event)| {
                let i = from + k;
                if is_set(&self.placed, i) {
                    return None;
                }
                let next = step(value, event.op)?;
                // An operation of unknown outcome that would change nothing here is as if it
                // never took effect (which it may): trying it only multiplies the states
                // searched.
                if event.returned.is_none() && next == value {
                    return None;
                }
                Some((i, next))
            })
    }

    /// Keeps `order` as the longest consistent order found, if it is.
    fn keep_best(&mut self, order: &[usize]) {
        if order.len() > self.best.len() {
            self.best = order.iter().map(|&i| self.original[i]).collect();
        }
    }

    /// Depth-first from `initial`, on an explicit stack (a history has tens of thousands of
    /// events per register: one call frame per placed event would overflow the thread's
    /// stack). Fills `order` (sorted indices) with the order found and returns `true`, or
    /// returns `false`.
    fn run(&mut self, initial: Value, order: &mut Vec<usize>) -> bool {
        /// One level of the search: the value so far, the horizon of its placed set, and the
        /// next operation index to try.
        struct Frame {
            value: Value,
            horizon: u64,
            next: usize,
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut entering = Some(initial);
        loop {
            if let Some(value) = entering.take() {
                // Done once every event with a known result is placed.
                if self.pending.is_empty() {
                    return true;
                }
                if !self.in_time() {
                    self.keep_best(order);
                    return false;
                }
                if self.seen.insert(self.key(value)) {
                    stack.push(Frame {
                        value,
                        horizon: self.horizon(),
                        next: 0,
                    });
                } else if let Some(i) = order.pop() {
                    // Visited already: back to the level that placed `i`.
                    self.place(i, false);
                }
                continue;
            }
            let Some(frame) = stack.last() else {
                return false;
            };
            match self.candidate(frame.value, frame.horizon, frame.next) {
                Some((i, next)) => {
                    if let Some(frame) = stack.last_mut() {
                        frame.next = i + 1;
                    }
                    self.place(i, true);
                    order.push(i);
                    entering = Some(next);
                }
                None => {
                    // A dead end: the deepest order so far may end here.
                    self.keep_best(order);
                    stack.pop();
                    if let Some(i) = order.pop() {
                        self.place(i, false);
                    }
                }
            }
        }
    }
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

/// How long [`check`] searches before it answers [`Verdict::Undecided`].
pub const SEARCH_BUDGET: Duration = Duration::from_secs(30);

/// Checks `history` of one register that held `initial` before it began, within
/// [`SEARCH_BUDGET`].
///
/// Cost: exponential in the worst case (the problem is NP-complete), but the memoization keeps
/// histories of a few hundred operations with tens in flight at once well under a second.
///
/// # Examples
///
/// ```
/// use kvstore_testutils::linearizability::{Event, Op, Versioned, check};
///
/// // A write that completed, then a read that missed it: not linearizable.
/// let lost = [
///     Event { op: Op::Write(Versioned::at(1, 7)), invoked: 0, returned: Some(10) },
///     Event { op: Op::Read(None), invoked: 20, returned: Some(30) },
/// ];
/// assert!(!check(None, &lost).is_linearizable());
/// // The same read overlapping the write may see either state.
/// let racing = [
///     Event { op: Op::Write(Versioned::at(1, 7)), invoked: 0, returned: Some(10) },
///     Event { op: Op::Read(None), invoked: 5, returned: Some(30) },
/// ];
/// assert!(check(None, &racing).is_linearizable());
/// ```
pub fn check(initial: Value, history: &[Event]) -> Verdict {
    check_within(initial, history, SEARCH_BUDGET)
}

/// [`check`] with a time budget of `budget`: [`Verdict::Undecided`] when the search has not
/// decided by then.
pub fn check_within(initial: Value, history: &[Event], budget: Duration) -> Verdict {
    let mut search = Search::new(history, budget);
    let mut order = Vec::new();
    if search.run(initial, &mut order) {
        Verdict::Linearizable(order.iter().map(|&i| search.original[i]).collect())
    } else if search.out_of_time {
        Verdict::Undecided {
            placed: search.best,
        }
    } else {
        Verdict::NotLinearizable {
            placed: search.best,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoked: u64, returned: Option<u64>) -> Event {
        Event {
            op,
            invoked,
            returned,
        }
    }

    /// Unindexed states: compared by value alone.
    fn cas(expect: Option<u64>, new: u64, succeeded: Option<bool>) -> Op {
        Op::Cas {
            expect: expect.map(Versioned::unindexed),
            new: Versioned::unindexed(new),
            succeeded,
        }
    }

    fn write(v: u64) -> Op {
        Op::Write(Versioned::unindexed(v))
    }

    fn read(v: Option<u64>) -> Op {
        Op::Read(v.map(Versioned::unindexed))
    }

    #[test]
    fn sequential_histories() {
        let good = [
            ev(write(1), 0, Some(1)),
            ev(read(Some(1)), 2, Some(3)),
            ev(cas(Some(1), 2, Some(true)), 4, Some(5)),
            ev(cas(Some(1), 3, Some(false)), 6, Some(7)),
            ev(read(Some(2)), 8, Some(9)),
        ];
        assert_eq!(
            check(None, &good),
            Verdict::Linearizable(vec![0, 1, 2, 3, 4])
        );
        let stale = [
            ev(write(1), 0, Some(1)),
            ev(write(2), 2, Some(3)),
            ev(read(Some(1)), 4, Some(5)),
        ];
        match check(None, &stale) {
            Verdict::NotLinearizable { placed } => assert_eq!(placed, vec![0, 1]),
            other => panic!("a stale read must not linearize: {other:?}"),
        }
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping writes; reads after both see the one ordered last, consistently.
        let good = [
            ev(write(1), 0, Some(10)),
            ev(write(2), 1, Some(9)),
            ev(read(Some(1)), 11, Some(12)),
            ev(read(Some(1)), 13, Some(14)),
        ];
        assert!(check(None, &good).is_linearizable());
        // Two reads after both writes that disagree: no order explains both.
        let bad = [
            ev(write(1), 0, Some(10)),
            ev(write(2), 1, Some(9)),
            ev(read(Some(1)), 11, Some(12)),
            ev(read(Some(2)), 13, Some(14)),
        ];
        assert!(!check(None, &bad).is_linearizable());
    }

    #[test]
    fn two_successful_swaps_from_one_value_are_refused() {
        let bad = [
            ev(write(0), 0, Some(1)),
            ev(cas(Some(0), 1, Some(true)), 2, Some(10)),
            ev(cas(Some(0), 2, Some(true)), 3, Some(11)),
        ];
        assert!(!check(None, &bad).is_linearizable());
        // One of them refused: fine.
        let good = [
            ev(write(0), 0, Some(1)),
            ev(cas(Some(0), 1, Some(true)), 2, Some(10)),
            ev(cas(Some(0), 2, Some(false)), 3, Some(11)),
            ev(read(Some(1)), 12, Some(13)),
        ];
        assert!(check(None, &good).is_linearizable());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A timed-out write seen by a later read: it happened.
        let seen = [ev(write(1), 0, None), ev(read(Some(1)), 5, Some(6))];
        assert!(check(None, &seen).is_linearizable());
        // Not seen: it never happened (or not yet).
        let unseen = [ev(write(1), 0, None), ev(read(None), 5, Some(6))];
        assert!(check(None, &unseen).is_linearizable());
        // But it cannot take effect before it was invoked.
        let too_early = [ev(read(Some(1)), 0, Some(1)), ev(write(1), 5, None)];
        assert!(!check(None, &too_early).is_linearizable());
        // An unknown CAS resolves by the register: it succeeded here, so the read sees 2.
        let resolved = [
            ev(write(1), 0, Some(1)),
            ev(cas(Some(1), 2, None), 2, None),
            ev(read(Some(2)), 5, Some(6)),
        ];
        assert!(check(None, &resolved).is_linearizable());
    }

    #[test]
    fn an_acknowledged_write_lost_after_a_failover_is_found() {
        // Write 2 acknowledged, then every later read sees the older 1.
        let lost = [
            ev(write(1), 0, Some(1)),
            ev(write(2), 2, Some(3)),
            ev(read(Some(1)), 10, Some(11)),
        ];
        assert!(!check(None, &lost).is_linearizable());
    }

    #[test]
    fn a_few_hundred_concurrent_operations_check() {
        // 8 clients, 40 rounds of overlapping writes, each round followed by a read of the
        // last writer's value: linearizable (the memoization is what lets the search finish;
        // without it the 8! orders per round multiply).
        let mut history = Vec::new();
        for round in 0..40u64 {
            let base = round * 100;
            for client in 0..8u64 {
                let v = round * 8 + client;
                history.push(ev(write(v), base + client, Some(base + 20 + client)));
            }
            let last = round * 8 + 7;
            history.push(ev(read(Some(last)), base + 60, Some(base + 61)));
        }
        assert!(check(None, &history).is_linearizable());
        // The same with one read changed to a value of an earlier round: refused.
        history[8 * 9 + 8].op = read(Some(3));
        assert!(!check(None, &history).is_linearizable());
    }

    #[test]
    fn a_swap_compares_the_index_not_only_the_value() {
        // A → B → A: a CAS holding the first A's index must be refused, though the value is A.
        let aba = [
            ev(Op::Write(Versioned::at(1, 10)), 0, Some(1)),
            ev(Op::Read(Some(Versioned::at(1, 10))), 2, Some(3)),
            ev(Op::Write(Versioned::at(2, 11)), 4, Some(5)),
            ev(Op::Write(Versioned::at(1, 12)), 6, Some(7)),
        ];
        let stale = |succeeded| Op::Cas {
            expect: Some(Versioned::at(1, 10)),
            new: Versioned::at(3, 13),
            succeeded: Some(succeeded),
        };
        let mut accepted = aba.to_vec();
        accepted.push(ev(stale(true), 8, Some(9)));
        assert!(!check(None, &accepted).is_linearizable(), "the ABA swap");
        let mut refused = aba.to_vec();
        refused.push(ev(stale(false), 8, Some(9)));
        assert!(check(None, &refused).is_linearizable());
    }

    #[test]
    fn indexes_only_grow_and_a_read_fixes_an_unknown_one() {
        let backwards = [
            ev(Op::Write(Versioned::at(1, 10)), 0, Some(1)),
            ev(Op::Write(Versioned::at(2, 9)), 2, Some(3)),
        ];
        assert!(!check(None, &backwards).is_linearizable());
        // A timed-out write: its index is the one a read reports, and the next CAS must hold it.
        let unknown = [
            ev(Op::Write(Versioned::unindexed(5)), 0, None),
            ev(Op::Read(Some(Versioned::at(5, 20))), 2, Some(3)),
            ev(Op::Read(Some(Versioned::at(5, 21))), 4, Some(5)),
        ];
        assert!(
            !check(None, &unknown).is_linearizable(),
            "two indexes for one write"
        );
        assert!(check(None, &unknown[..2]).is_linearizable());
    }

    #[test]
    fn a_search_out_of_time_is_undecided_not_a_pass() {
        let history = [ev(write(1), 0, Some(1)), ev(read(Some(1)), 2, Some(3))];
        assert!(matches!(
            check_within(None, &history, Duration::ZERO),
            Verdict::Undecided { .. }
        ));
        assert!(check(None, &history).is_linearizable());
    }

    #[test]
    fn a_long_history_does_not_exhaust_the_stack() {
        // Ten thousand sequential CAS increments on a 2 MiB test thread: a call frame per
        // placed event would overflow it.
        let mut history = vec![ev(Op::Write(Versioned::at(0, 1)), 0, Some(1))];
        for i in 1..10_000u64 {
            history.push(ev(
                Op::Cas {
                    expect: Some(Versioned::at(i - 1, i)),
                    new: Versioned::at(i, i + 1),
                    succeeded: Some(true),
                },
                2 * i,
                Some(2 * i + 1),
            ));
        }
        assert!(check(None, &history).is_linearizable());
        history.push(ev(
            Op::Read(Some(Versioned::at(3, 4))),
            100_000,
            Some(100_001),
        ));
        assert!(!check(None, &history).is_linearizable());
    }
}
