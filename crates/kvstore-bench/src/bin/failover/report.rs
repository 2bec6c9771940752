//! The report: what a run did and found, printed and as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::*;

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) cluster: String,
    pub(crate) clients: usize,
    pub(crate) operations: usize,
    /// The seed that chose the nemeses (`--seed` replays them).
    pub(crate) seed: u64,
    pub(crate) faults: Vec<Fault>,
    pub(crate) acked_puts: usize,
    pub(crate) lost_puts: Vec<String>,
    pub(crate) register_events: usize,
    pub(crate) unknown_register_events: usize,
    pub(crate) non_linearizable_registers: Vec<usize>,
    pub(crate) lock_acquisitions: usize,
    pub(crate) guarded_writes_ok: usize,
    pub(crate) lock_violations: Vec<String>,
    pub(crate) hung_calls: Vec<String>,
    pub(crate) errors: BTreeMap<String, usize>,
    pub(crate) unexpected_errors: Vec<String>,
    /// Acknowledged compare-and-swaps of each client.
    pub(crate) cas_ok_per_client: Vec<usize>,
    /// What the run did too little of for its verdict to mean anything (empty: enough).
    pub(crate) too_little: Vec<String>,
    /// The longest each kind of call took, in seconds (waiting for a lock is not one: it is
    /// abandoned after 3 s).
    pub(crate) slowest_calls_s: BTreeMap<String, f64>,
    /// `--recovery-bound`, in seconds.
    pub(crate) recovery_bound_s: f64,
    /// Every client completed a call again within the bound after each fault.
    pub(crate) recovered: bool,
    pub(crate) passed: bool,
}

pub(crate) fn seconds(s: Option<f64>) -> String {
    s.map_or("never".into(), |s| format!("{s:.2} s"))
}

pub(crate) fn print_report(r: &Report) {
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "== {} failover checks ({} operations)",
        r.cluster, r.operations
    );
    println!("   seed {} (replay with --seed {})", r.seed, r.seed);
    for (i, f) in r.faults.iter().enumerate() {
        let leader = match (&f.new_leader, f.election_s) {
            (Some(l), Some(s)) => format!("; {l} led after {s:.2} s"),
            _ => String::new(),
        };
        println!(
            "   fault {}: {} on {}{leader}; healed after {:.2} s; first call ok after {}, first write after {}, every client after {}",
            i + 1,
            f.nemesis.name(),
            f.members.join(", "),
            f.healed_s,
            seconds(f.first_success_s),
            seconds(f.first_write_s),
            seconds(f.recovery_s),
        );
    }
    println!(
        "   {} no acknowledged put lost ({} acknowledged, {} lost)",
        verdict(r.lost_puts.is_empty()),
        r.acked_puts,
        r.lost_puts.len()
    );
    for lost in r.lost_puts.iter().take(5) {
        println!("        {lost}");
    }
    println!(
        "   {} CAS registers linearizable ({} events, {} with unknown outcome; failing registers: {:?})",
        verdict(r.non_linearizable_registers.is_empty()),
        r.register_events,
        r.unknown_register_events,
        r.non_linearizable_registers
    );
    println!(
        "   {} enough activity for a verdict (CAS acknowledged per client: {:?})",
        verdict(r.too_little.is_empty()),
        r.cas_ok_per_client
    );
    for short in &r.too_little {
        println!("        too little: {short}");
    }
    println!(
        "   {} locks: no overlapping holders ({} acquisitions, {} guarded writes)",
        verdict(r.lock_violations.is_empty()),
        r.lock_acquisitions,
        r.guarded_writes_ok
    );
    for v in &r.lock_violations {
        println!("        {v}");
    }
    let slowest: Vec<String> = r
        .slowest_calls_s
        .iter()
        .map(|(what, s)| format!("{what} {s:.2} s"))
        .collect();
    println!(
        "   {} no call hung ({} hung; slowest: {})",
        verdict(r.hung_calls.is_empty()),
        r.hung_calls.len(),
        slowest.join(", ")
    );
    let slowest_recovery = r
        .faults
        .iter()
        .map(|k| k.recovery_s)
        .try_fold(0.0_f64, |max, s| s.map(|s| max.max(s)));
    println!(
        "   {} every client recovered within {:.0} s of each fault (slowest: {})",
        verdict(r.recovered),
        r.recovery_bound_s,
        seconds(slowest_recovery)
    );
    println!(
        "   {} no error that is neither transient nor a refused condition (errors seen: {:?})",
        verdict(r.unexpected_errors.is_empty()),
        r.errors
    );
    for e in &r.unexpected_errors {
        println!("        neither transient nor a refused condition: {e}");
    }
    println!("   verdict: {}", verdict(r.passed));
}
