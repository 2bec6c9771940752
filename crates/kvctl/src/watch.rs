//! `kvctl watch`: one line (or JSON object) per change, optionally running a command per
//! change, until interrupted.

use std::process::Stdio;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use kvstore::{EventKind, KvPair, WatchEvent};
use tokio::io::AsyncWriteExt;

use crate::cli::{Context, Output, WatchArgs};
use crate::exit::Failure;
use crate::output::{Change, diff};

pub(crate) async fn watch(ctx: &Context, args: WatchArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    // `ctrl_c` installs its handler when first polled, so it goes first (`biased`): a first
    // line printed before it was polled, then Ctrl-C, killed the process with the signal
    // instead of ending the watch with 0.
    let result = tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => Ok(()),
        result = follow_changes(ctx, &*store, &args) => result,
    };
    let _ = store.close().await;
    result
}

async fn follow_changes(
    ctx: &Context,
    store: &dyn kvstore::Store,
    args: &WatchArgs,
) -> Result<(), Failure> {
    if args.events {
        let opts = args
            .since
            .map(|rev| kvstore::WatchOptions::default().with_since(rev));
        let mut stream = ctx
            .bounded(store.watch_events(&args.key, opts.as_ref()))
            .await?;
        while let Some(item) = stream.next().await {
            match item.map_err(Failure::Store)? {
                WatchEvent::Snapshot { pairs, revision } => {
                    match ctx.output {
                        Output::Text => println!("{revision} snapshot {}", pairs.len()),
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({ "revision": revision, "event": "snapshot", "count": pairs.len() })
                        ),
                    }
                    for pair in pairs {
                        emit_at(ctx, args, &Change::Put(pair), revision).await?;
                    }
                }
                WatchEvent::Changes { events, revision } => {
                    for event in events {
                        let change = match event.kind {
                            EventKind::Delete => Change::Delete(event.key),
                            _ => Change::Put(KvPair::new(event.key, event.value, event.last_index)),
                        };
                        emit_at(ctx, args, &change, revision).await?;
                    }
                }
                _ => {}
            }
        }
    } else if args.recursive {
        let mut stream = ctx.bounded(store.watch_tree(&args.key, None)).await?;
        let mut last: Vec<KvPair> = Vec::new();
        while let Some(snapshot) = stream.next().await {
            let snapshot = snapshot.map_err(Failure::Store)?;
            for change in diff(&last, &snapshot) {
                emit(ctx, args, &change).await?;
            }
            last = snapshot;
        }
    } else {
        let mut stream = ctx.bounded(store.watch(&args.key, None)).await?;
        let mut first = true;
        while let Some(item) = stream.next().await {
            let change = match (item.map_err(Failure::Store)?, first, args.index) {
                // Resuming: the caller has the key at `known`; its current state is news only
                // if it changed since (last_index grows with every write of the key).
                (Some(pair), true, Some(known)) if pair.last_index <= known => None,
                (Some(pair), _, _) => Some(Change::Put(pair)),
                // A missing key is not news at the start, unless the caller had it.
                (None, true, None) => None,
                (None, _, _) => Some(Change::Delete(args.key.clone())),
            };
            first = false;
            if let Some(change) = change {
                emit(ctx, args, &change).await?;
            }
        }
    }
    // The store ended the watch (closed, or the server away past its reconnect timeout).
    Err(Failure::Store(kvstore::Error::not_reachable(
        "kvctl",
        "the watch ended",
    )))
}

/// Prints one change, then runs `--exec` for it (waiting for the command to finish).
async fn emit(ctx: &Context, args: &WatchArgs, change: &Change) -> Result<(), Failure> {
    match ctx.output {
        Output::Text => println!("{}", change.line()),
        Output::Json => println!("{}", change.json()),
    }
    exec(args, change, None).await
}

/// [`emit`] for an event of `--events`: the line starts with the revision it brings the
/// directory to (JSON: a `revision` field; `--exec`: `KVSTORE_REVISION`).
async fn emit_at(
    ctx: &Context,
    args: &WatchArgs,
    change: &Change,
    revision: u64,
) -> Result<(), Failure> {
    match ctx.output {
        Output::Text => println!("{revision} {}", change.line()),
        Output::Json => {
            let mut object = change.json();
            object["revision"] = revision.into();
            println!("{object}");
        }
    }
    exec(args, change, Some(revision)).await
}

/// Runs `--exec` for one change, if given.
async fn exec(args: &WatchArgs, change: &Change, revision: Option<u64>) -> Result<(), Failure> {
    let Some(command) = &args.exec else {
        return Ok(());
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .env("KVSTORE_KEY", change.key())
        .env("KVSTORE_EVENT", change.event());
    if let Some(revision) = revision {
        cmd.env("KVSTORE_REVISION", revision.to_string());
    }
    if let Change::Put(pair) = change {
        cmd.env("KVSTORE_LAST_INDEX", pair.last_index.to_string())
            .env("KVSTORE_VALUE_BASE64", BASE64.encode(&pair.value));
        if let Some(value) = env_value(&pair.value) {
            cmd.env("KVSTORE_VALUE", value);
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Io(format!("starting {command:?}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin closes it early; that is not an error.
        let _ = stdin
            .write_all(format!("{}\n", change.json()).as_bytes())
            .await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Failure::Io(format!("waiting for {command:?}"), e))?;
    if !status.success() {
        eprintln!(
            "kvctl: {command:?} exited with {status} for {}",
            change.key()
        );
    }
    Ok(())
}

/// A value as an environment variable's value: its bytes on Unix (where a variable holds any
/// bytes but NUL), UTF-8 elsewhere; `None` when it cannot be one (then it comes in
/// `KVSTORE_VALUE_BASE64` only).
fn env_value(value: &[u8]) -> Option<std::ffi::OsString> {
    if value.contains(&0) {
        return None;
    }
    #[cfg(unix)]
    {
        Some(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(value).to_os_string())
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(value)
            .ok()
            .map(std::ffi::OsString::from)
    }
}
