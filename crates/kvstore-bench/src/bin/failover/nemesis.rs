//! The faults `kvstore-failover` injects into a running cluster, and which of them a run picks.
//!
//! Every run starts with a leader kill; a seed then picks `--per-run` more from the cluster's
//! pool by rotation, so consecutive seeds cover the whole pool (every nemesis within
//! `ceil(pool / per_run)` runs) and a failing run is replayed with `--seed`. The default seed
//! is the day number (days since 1970-01-01 UTC), so a daily CI run covers every nemesis within
//! three days (Consul's pool of five; two for the pools of four), well inside a week.

use std::time::Duration;

use serde::Serialize;

/// One fault, injected through `ci/restart.sh` on the members of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Nemesis {
    /// SIGKILL the leader (the Redis primary); start it again after `--down`.
    LeaderKill,
    /// SIGSTOP the leader until another member leads and `--down` has passed, then SIGCONT it:
    /// a deposed leader that resumes believing it still leads.
    LeaderPause,
    /// Cut the leader off from its peers while clients still reach it: a packet filter rejects
    /// every packet to its peer ports and every packet it sends to another member's peer
    /// ports (`ci/restart.sh MEMBER isolate`); heal after another member leads and `--down`
    /// has passed. The quorum clusters (ZooKeeper, etcd, Consul servers); needs root.
    LeaderIsolate,
    /// SIGKILL one member that does not lead (the Redis replica); start it after `--down`.
    FollowerKill,
    /// SIGKILL two of the three voting members (the leader and a follower): no quorum until
    /// both are started again after `--down`. Calls end in a transient error or `Timeout`
    /// within their bound, and held locks are lost.
    QuorumLoss,
    /// SIGKILL the Consul client agent the clients talk to (its node's sessions are
    /// invalidated); start it after `--down`.
    AgentKill,
    /// SIGKILL one of the three Sentinels; start it after `--down`.
    SentinelKill,
    /// SIGKILL two of the three Sentinels (no failover possible while they are down; the
    /// primary keeps serving); start them after `--down`.
    SentinelQuorumLoss,
}

impl Nemesis {
    /// The kebab-case name `--nemeses` takes and the report prints.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Nemesis::LeaderKill => "leader-kill",
            Nemesis::LeaderPause => "leader-pause",
            Nemesis::LeaderIsolate => "leader-isolate",
            Nemesis::FollowerKill => "follower-kill",
            Nemesis::QuorumLoss => "quorum-loss",
            Nemesis::AgentKill => "agent-kill",
            Nemesis::SentinelKill => "sentinel-kill",
            Nemesis::SentinelQuorumLoss => "sentinel-quorum-loss",
        }
    }

    /// The nemeses beyond the leader kill that apply to `cluster` (a `ci/servers.sh` name).
    pub(crate) fn pool(cluster: &str) -> Vec<Nemesis> {
        use Nemesis::*;
        match cluster {
            "consul-cluster" => vec![
                LeaderPause,
                FollowerKill,
                QuorumLoss,
                LeaderIsolate,
                AgentKill,
            ],
            "redis-sentinel" => vec![LeaderPause, FollowerKill, SentinelKill, SentinelQuorumLoss],
            _ => vec![LeaderPause, FollowerKill, QuorumLoss, LeaderIsolate],
        }
    }
}

/// The default seed: the day number, so consecutive daily runs rotate through the pool.
pub(crate) fn default_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    now.as_secs() / 86_400
}

/// `per_run` distinct nemeses of `pool` for `seed`: the pool rotated by `seed × per_run`, so the
/// runs with seeds `s, s + 1, …` take consecutive slices of the pool and together cover it.
pub(crate) fn choose(pool: &[Nemesis], seed: u64, per_run: usize) -> Vec<Nemesis> {
    let n = pool.len();
    if n == 0 {
        return Vec::new();
    }
    let per_run = per_run.min(n);
    // Both factors are reduced first: no overflow for any seed.
    let start = ((seed % n as u64) * (per_run as u64 % n as u64)) % n as u64;
    (0..per_run)
        .map(|i| pool[(start as usize + i) % n])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTERS: [&str; 4] = [
        "etcd-cluster",
        "zk-cluster",
        "consul-cluster",
        "redis-sentinel",
    ];

    #[test]
    fn every_run_takes_distinct_nemeses_and_at_least_two() {
        for cluster in CLUSTERS {
            let pool = Nemesis::pool(cluster);
            for seed in [0, 1, 7, 20_425, u64::MAX] {
                let chosen = choose(&pool, seed, 2);
                assert_eq!(chosen.len(), 2, "{cluster} seed {seed}");
                assert_ne!(chosen[0], chosen[1], "{cluster} seed {seed}");
                assert!(!chosen.contains(&Nemesis::LeaderKill));
            }
        }
    }

    #[test]
    fn a_week_of_daily_seeds_covers_every_nemesis() {
        for cluster in CLUSTERS {
            let pool = Nemesis::pool(cluster);
            // Any seven consecutive days, wherever they start.
            for first in [0, 3, 20_425, u64::MAX - 7] {
                let mut seen: Vec<Nemesis> = (first..first + 7)
                    .flat_map(|seed| choose(&pool, seed, 2))
                    .collect();
                seen.sort_by_key(|n| n.name());
                seen.dedup();
                assert_eq!(seen.len(), pool.len(), "{cluster} from seed {first}");
            }
        }
    }

    #[test]
    fn the_same_seed_replays_the_same_choice() {
        let pool = Nemesis::pool("consul-cluster");
        assert_eq!(choose(&pool, 42, 2), choose(&pool, 42, 2));
        assert_eq!(
            choose(&pool, 42, 9).len(),
            pool.len(),
            "at most the whole pool"
        );
    }
}
