//! `kvctl lock` (a lock, or with `-n` a semaphore's permit), `kvctl elect` and `kvctl group
//! join`: run a command while holding a lock or a permit, leading, or being a member, forward
//! signals to it, and stop it if the hold is lost (SIGTERM, then SIGKILL after a grace period)
//! — as `etcdctl lock` and `consul lock` do. Supervising a command is Unix-only (signals,
//! process groups); elsewhere `lock` and `elect` refuse before they take anything, and
//! `elect --follow` works everywhere.

use std::ffi::OsString;
#[cfg(unix)]
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore::{
    Candidate, ElectionOptions, Group, LockLost, LockOptions, Semaphore, Store, WriteOptions,
};
#[cfg(unix)]
use nix::sys::signal::{Signal, kill};
#[cfg(unix)]
use nix::unistd::Pid;
#[cfg(unix)]
use tokio::process::{Child, Command};
#[cfg(unix)]
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{Context, ElectArgs, HoldArgs, LockArgs, Output};
use crate::exit::Failure;
use crate::output::text;

/// Waits for `acquire` within `--wait` (unbounded without it).
async fn acquire<T>(
    hold: &HoldArgs,
    acquire: impl Future<Output = kvstore::Result<T>>,
) -> Result<T, Failure> {
    let result = match hold.wait {
        Some(wait) => tokio::time::timeout(wait, acquire)
            .await
            .unwrap_or(Err(kvstore::Error::Timeout)),
        None => acquire.await,
    };
    result.map_err(Failure::Store)
}

/// Fails on platforms where kvctl cannot supervise a command, before anything is taken.
fn check_supervision(command: &str) -> Result<(), Failure> {
    if cfg!(unix) {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "kvctl {command} runs a command only on Unix (it forwards signals to the command and \
             stops its process group when the hold is lost); `kvctl elect --follow` works here"
        )))
    }
}

pub(crate) async fn lock(ctx: &Context, args: LockArgs) -> Result<(), Failure> {
    check_supervision("lock")?;
    let store = ctx.open().await?;
    let outcome = match args.permits {
        Some(permits) => hold_permit(ctx, store.clone(), &args, permits).await,
        None => hold_lock(ctx, &*store, &args).await,
    };
    let _ = store.close().await;
    outcome
}

/// `kvctl lock KEY`: the command runs while the lock is held.
async fn hold_lock(ctx: &Context, store: &dyn Store, args: &LockArgs) -> Result<(), Failure> {
    let opts = LockOptions::default().with_ttl(args.hold.ttl);
    let mut lock = ctx.bounded(store.new_lock(&args.key, Some(&opts))).await?;
    let lost = acquire(&args.hold, lock.lock()).await?;
    let token = lock.fencing_token().unwrap_or_default();
    let outcome = run_while_held(
        &args.command,
        &[("KVSTORE_FENCING_TOKEN", token.to_string())],
        lost,
        args.hold.grace,
        &format!("lost the lock {}", args.key),
    )
    .await;
    if !matches!(outcome, Err(Failure::Lost(_))) {
        // A failed release still ends within the TTL on the server.
        if let Err(err) = ctx.bounded(lock.unlock()).await {
            eprintln!("kvctl: releasing the lock: {err:?}");
        }
    }
    outcome
}

/// `kvctl lock -n N KEY`: the command runs while one of N permits is held.
async fn hold_permit(
    ctx: &Context,
    store: Arc<dyn Store>,
    args: &LockArgs,
    permits: u32,
) -> Result<(), Failure> {
    let opts = LockOptions::default().with_ttl(args.hold.ttl);
    let semaphore =
        Semaphore::new(store, &args.key, permits, Some(&opts)).map_err(Failure::Store)?;
    let permit = acquire(&args.hold, semaphore.acquire()).await?;
    let token = permit.fencing_token().unwrap_or_default();
    let outcome = run_while_held(
        &args.command,
        &[
            ("KVSTORE_FENCING_TOKEN", token.to_string()),
            ("KVSTORE_PERMIT_KEY", permit.key().to_owned()),
        ],
        permit.lost(),
        args.hold.grace,
        &format!("lost the permit {}", permit.key()),
    )
    .await;
    if !matches!(outcome, Err(Failure::Lost(_)))
        && let Err(err) = ctx.bounded(permit.release()).await
    {
        eprintln!("kvctl: releasing the permit: {err:?}");
    }
    outcome
}

/// `kvctl group join`: the command runs while this process is a member; a lost lease is
/// written again (as every registration), so the command is not stopped for it.
pub(crate) async fn group_join(
    ctx: &Context,
    dir: &str,
    member: &str,
    value: OsString,
    ttl: Duration,
    command: &[OsString],
) -> Result<(), Failure> {
    check_supervision("group join")?;
    let store = ctx.open().await?;
    let opts = WriteOptions::default().with_ttl(ttl);
    let value = value.into_encoded_bytes();
    let joined = Group::join(store.clone(), dir, member, value, Some(&opts));
    let membership = ctx.bounded(joined).await?;
    // Nothing ends a membership but this process: the command runs to its end.
    let (_held, never) = kvstore::backend::lock_lost();
    let outcome = run_while_held(
        command,
        &[("KVSTORE_MEMBER_KEY", membership.key().to_owned())],
        never,
        Duration::ZERO,
        "left the group",
    )
    .await;
    if let Err(err) = ctx.bounded(membership.leave()).await {
        eprintln!("kvctl: leaving the group: {err:?}");
    }
    let _ = store.close().await;
    outcome
}

pub(crate) async fn elect(ctx: &Context, args: ElectArgs) -> Result<(), Failure> {
    if !args.follow {
        check_supervision("elect")?;
    }
    let store = ctx.open().await?;
    let result = if args.follow {
        follow(ctx, store.clone(), &args.key).await
    } else {
        campaign(ctx, store.clone(), args).await
    };
    let _ = store.close().await;
    result
}

async fn campaign(ctx: &Context, store: Arc<dyn Store>, args: ElectArgs) -> Result<(), Failure> {
    let value = args.value.unwrap_or_default().into_encoded_bytes();
    let opts = ElectionOptions::default().with_ttl(args.hold.ttl);
    let candidate = Candidate::new(store, &args.key, value, Some(&opts));
    let leadership = acquire(&args.hold, candidate.campaign()).await?;
    let term = leadership.term().to_string();
    let outcome = run_while_held(
        &args.command,
        &[
            ("KVSTORE_TERM", term.clone()),
            ("KVSTORE_FENCING_TOKEN", term),
        ],
        leadership.lost(),
        args.hold.grace,
        &format!("lost the leadership of {}", args.key),
    )
    .await;
    if !matches!(outcome, Err(Failure::Lost(_)))
        && let Err(err) = ctx.bounded(leadership.resign()).await
    {
        eprintln!("kvctl: resigning: {err:?}");
    }
    outcome
}

/// Prints each leader (`<term> <value>`, or `none`) until interrupted.
async fn follow(ctx: &Context, store: Arc<dyn Store>, key: &str) -> Result<(), Failure> {
    let mut leaders = kvstore::follow(store, key);
    // One listener, polled first (as in `kvctl watch`).
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let leader = tokio::select! {
            biased;
            _ = &mut interrupted => return Ok(()),
            leader = leaders.next() => leader,
        };
        let Some(leader) = leader else {
            return Err(Failure::Store(kvstore::Error::not_reachable(
                "kvctl",
                "following the election ended",
            )));
        };
        let leader = leader.map_err(Failure::Store)?;
        match (ctx.output, &leader) {
            (Output::Text, Some(pair)) => println!("{} {}", pair.last_index, text(&pair.value)),
            (Output::Text, None) => println!("none"),
            (Output::Json, Some(pair)) => println!(
                "{}",
                serde_json::json!({
                    "term": pair.last_index,
                    "leader": std::str::from_utf8(&pair.value).ok(),
                    "leader_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pair.value),
                })
            ),
            (Output::Json, None) => {
                println!("{}", serde_json::json!({ "term": null, "leader": null }));
            }
        }
    }
}

/// Where a command cannot be supervised: [`check_supervision`] refuses before this is reached.
#[cfg(not(unix))]
async fn run_while_held(
    _command: &[OsString],
    _env: &[(&str, String)],
    _lost: LockLost,
    _grace: Duration,
    _lost_message: &str,
) -> Result<(), Failure> {
    check_supervision("lock")
}

/// The signals forwarded to the command.
#[cfg(unix)]
const FORWARDED: [(SignalKind, Signal); 4] = [
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
];

#[cfg(unix)]
/// Runs `command` with `env` until it exits (its exit code becomes kvctl's) or `lost`
/// resolves (the command is stopped; [`Failure::Lost`]). The command runs in its own process
/// group, so a terminal's Ctrl-C reaches it once, through kvctl.
async fn run_while_held(
    command: &[OsString],
    env: &[(&str, String)],
    lost: LockLost,
    grace: Duration,
    lost_message: &str,
) -> Result<(), Failure> {
    let (program, arguments) = command
        .split_first()
        .ok_or_else(|| Failure::Usage("no command given after --".into()))?;
    // Listening before the command starts: a signal sent once the command is running is
    // forwarded to it, never taken by kvctl's default action.
    let mut signals = Vec::new();
    for (kind, forwarded) in FORWARDED {
        let stream = signal(kind).map_err(|e| Failure::Io("listening for signals".into(), e))?;
        signals.push((stream, forwarded));
    }
    let mut child = Command::new(program)
        .args(arguments)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Io(format!("starting {program:?}"), e))?;
    let received = futures::stream::select_all(signals.iter_mut().map(|(stream, forwarded)| {
        let forwarded = *forwarded;
        futures::stream::poll_fn(move |cx| stream.poll_recv(cx)).map(move |()| forwarded)
    }));
    tokio::pin!(received);
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Failure::Io("waiting for the command".into(), e))?;
                return match exit_code(status) {
                    0 => Ok(()),
                    code => Err(Failure::Child(code)),
                };
            }
            () = &mut lost => {
                eprintln!("kvctl: {lost_message}; stopping the command");
                stop(&mut child, grace).await;
                return Err(Failure::Lost(lost_message.to_owned()));
            }
            Some(forwarded) = received.next() => send(&child, forwarded),
        }
    }
}

#[cfg(unix)]
/// SIGTERM, then SIGKILL if the command is still running after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    send(child, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

#[cfg(unix)]
fn send(child: &Child, forwarded: Signal) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // The command may have exited in between; then there is nothing to signal.
        let _ = kill(Pid::from_raw(pid), forwarded);
    }
}

#[cfg(unix)]
/// The command's exit code, or 128 + the signal that ended it (as a shell reports it).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}
