//! Injecting the nemeses into a cluster through `ci/restart.sh`, and what each did.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use tokio::time::Instant;

use crate::Args;
use crate::history::*;
use crate::nemesis::Nemesis;

/// Runs `ci/restart.sh ARGS…` and returns its standard output (testutils' server control).
pub(crate) async fn control(args: &[&str]) -> anyhow::Result<String> {
    kvstore_testutils::restart_script(args)
        .await
        .map_err(anyhow::Error::msg)
}

/// The cluster's leader, waiting (bounded) while it has none.
pub(crate) async fn leader(cluster: &str, not: Option<&str>) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(leader) = control(&[cluster, "leader"]).await
            && !leader.is_empty()
            && Some(leader.as_str()) != not
        {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("{cluster} elected no new leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The members of `cluster` (`ci/restart.sh CLUSTER members`, in start order) that `keep`
/// accepts.
pub(crate) async fn members_where(
    cluster: &str,
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    Ok(control(&[cluster, "members"])
        .await?
        .lines()
        .filter(|m| keep(m))
        .map(str::to_owned)
        .collect())
}

/// Whether a cluster member votes or holds data (not a Sentinel, not the Consul client agent).
pub(crate) fn is_voter(member: &str) -> bool {
    !is_sentinel(member) && member != "consul-agent"
}

pub(crate) fn is_sentinel(member: &str) -> bool {
    member.starts_with("redis-s")
}

/// Sleeps until `down` has passed since `from` (the fault's moment on `shared`'s clock).
pub(crate) async fn stay_down(shared: &Shared, from: u64, down: Duration) {
    let elapsed = Duration::from_nanos(shared.now().saturating_sub(from));
    tokio::time::sleep(down.saturating_sub(elapsed)).await;
}

/// SIGKILLs `members`, keeps them down for `down` and starts them again in order (each waited
/// for, or with `together` all started first and then each waited for); returns the moment
/// they were gone, on `shared`'s clock.
pub(crate) async fn kill_for(
    shared: &Shared,
    members: &[String],
    down: Duration,
    together: bool,
) -> anyhow::Result<u64> {
    for member in members {
        control(&[member, "kill"]).await?;
    }
    let at = shared.now();
    stay_down(shared, at, down).await;
    for member in members {
        control(&[member, if together { "start-nowait" } else { "start" }]).await?;
    }
    if together {
        for member in members {
            control(&[member, "ready"]).await?;
        }
    }
    Ok(at)
}

/// Injects `nemesis` into `args.cluster` and heals it: returns the fault and the moment
/// (`shared.now()`) it began. `seed` picks which follower or Sentinel a fault takes.
pub(crate) async fn inject(
    nemesis: Nemesis,
    args: &Args,
    shared: &Shared,
    seed: u64,
) -> anyhow::Result<(Fault, u64)> {
    let cluster = args.cluster.as_str();
    let pick = |of: &[String]| of[(seed % of.len() as u64) as usize].clone();
    let at;
    let mut new_leader = None;
    let members = match nemesis {
        Nemesis::LeaderKill | Nemesis::LeaderPause | Nemesis::LeaderIsolate => {
            let member = leader(cluster, None).await?;
            let (fault, heal) = match nemesis {
                Nemesis::LeaderPause => ("pause", "resume"),
                Nemesis::LeaderIsolate => ("isolate", "rejoin"),
                _ => ("kill", "start"),
            };
            control(&[&member, fault]).await?;
            at = shared.now();
            let next = leader(cluster, Some(&member)).await?;
            new_leader = Some((next, (shared.now() - at) as f64 / 1e9));
            stay_down(shared, at, args.down).await;
            control(&[&member, heal]).await?;
            if nemesis != Nemesis::LeaderKill {
                control(&[&member, "ready"]).await?;
            }
            vec![member]
        }
        Nemesis::FollowerKill | Nemesis::QuorumLoss => {
            let current = leader(cluster, None).await?;
            let followers: Vec<String> = members_where(cluster, is_voter)
                .await?
                .into_iter()
                .filter(|m| *m != current)
                .collect();
            anyhow::ensure!(!followers.is_empty(), "{cluster} has no follower");
            let mut down = vec![pick(&followers)];
            if nemesis == Nemesis::QuorumLoss {
                down.push(current);
            }
            // The follower first: with it back, the remaining member has a quorum again.
            at = kill_for(shared, &down, args.down, false).await?;
            down
        }
        Nemesis::AgentKill => {
            let agent = vec!["consul-agent".to_owned()];
            at = kill_for(shared, &agent, args.down, false).await?;
            agent
        }
        Nemesis::SentinelKill | Nemesis::SentinelQuorumLoss => {
            let sentinels = members_where(cluster, is_sentinel).await?;
            anyhow::ensure!(sentinels.len() >= 3, "{cluster} has fewer than 3 Sentinels");
            let first = (seed % sentinels.len() as u64) as usize;
            let count = if nemesis == Nemesis::SentinelKill {
                1
            } else {
                2
            };
            let down: Vec<String> = (0..count)
                .map(|i| sentinels[(first + i) % sentinels.len()].clone())
                .collect();
            // Started without waiting for each other, then each waited for: a Sentinel is
            // ready only once it sees the other two.
            at = kill_for(shared, &down, args.down, true).await?;
            down
        }
    };
    let (new_leader, election_s) = new_leader.unzip();
    Ok((
        Fault {
            nemesis,
            members,
            new_leader,
            election_s,
            healed_s: (shared.now() - at) as f64 / 1e9,
            recovery_s: None,
            first_success_s: None,
            first_write_s: None,
        },
        at,
    ))
}

/// One injected fault and how the cluster and the clients came through it.
#[derive(Serialize)]
pub(crate) struct Fault {
    pub(crate) nemesis: Nemesis,
    /// The members it killed or paused.
    pub(crate) members: Vec<String>,
    /// The member that led after it, when it deposed the leader.
    pub(crate) new_leader: Option<String>,
    /// Seconds from the fault until the cluster named a new leader.
    pub(crate) election_s: Option<f64>,
    /// Seconds from the fault until the members were started or resumed again.
    pub(crate) healed_s: f64,
    /// Seconds from the fault until every client completed an acknowledged operation again.
    pub(crate) recovery_s: Option<f64>,
    /// Seconds from the fault until the first client did.
    pub(crate) first_success_s: Option<f64>,
    /// Seconds from the fault until the first acknowledged write.
    pub(crate) first_write_s: Option<f64>,
}
