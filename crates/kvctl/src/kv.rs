//! The single-call subcommands: get, put, rm, ls, cas.

use std::ffi::OsString;
use std::io::Write;

use kvstore::{KvPair, WriteOptions};
use tokio::io::AsyncReadExt;

use crate::cli::{CasArgs, Context, GetArgs, LsArgs, Output, PutArgs, RmArgs};
use crate::exit::Failure;
use crate::output::{pair_json, text};

/// Everything on stdin, as bytes.
pub(crate) async fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Failure::Io("reading stdin".into(), e))?;
    Ok(bytes)
}

/// The bytes of a VALUE argument: stdin for `-`, a file's content for `@FILE` (as `consul kv
/// put` reads them), else the argument's own bytes. A value that starts with `@` itself goes
/// through stdin.
pub(crate) async fn value_bytes(value: OsString) -> Result<Vec<u8>, Failure> {
    if value == "-" {
        return read_stdin().await;
    }
    let bytes = value.into_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(path) => {
            // The bytes came from an OsString, minus an ASCII prefix, so they are one again.
            let path = std::path::PathBuf::from(String::from_utf8_lossy(path).into_owned());
            tokio::fs::read(&path)
                .await
                .map_err(|e| Failure::Io(format!("reading {}", path.display()), e))
        }
        None => Ok(bytes),
    }
}

fn write_options(ttl: Option<std::time::Duration>) -> Option<WriteOptions> {
    ttl.map(|ttl| WriteOptions::default().with_ttl(ttl))
}

/// Writes `bytes` and a newline to stdout.
fn print_raw(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Io("writing to stdout".into(), e))
}

/// Prints a written pair's `last_index` (text) or the pair (JSON).
fn print_written(ctx: &Context, pair: &KvPair) {
    match ctx.output {
        Output::Text => println!("last_index {}", pair.last_index),
        Output::Json => println!("{}", pair_json(pair)),
    }
}

pub(crate) async fn get(ctx: &Context, args: GetArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let pair = ctx.bounded(store.get(&args.key, None)).await;
    let _ = store.close().await;
    let pair = pair?;
    match ctx.output {
        Output::Text => print_raw(&pair.value),
        Output::Json => {
            println!("{}", pair_json(&pair));
            Ok(())
        }
    }
}

pub(crate) async fn put(ctx: &Context, args: PutArgs) -> Result<(), Failure> {
    let value = value_bytes(args.value).await?;
    let store = ctx.open().await?;
    let written = ctx
        .bounded(store.put(&args.key, &value, write_options(args.ttl).as_ref()))
        .await;
    let _ = store.close().await;
    print_written(ctx, &written?);
    Ok(())
}

pub(crate) async fn rm(ctx: &Context, args: RmArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let result = match (args.recursive, args.index) {
        (true, _) => ctx.bounded(store.delete_tree(&args.key)).await,
        // Only `last_index` of the previous pair is compared (the contract of `atomic_delete`).
        (false, Some(index)) => {
            let previous = KvPair::new(args.key.clone(), Vec::new(), index);
            ctx.bounded(store.atomic_delete(&args.key, &previous)).await
        }
        (false, None) => ctx.bounded(store.delete(&args.key)).await,
    };
    let _ = store.close().await;
    result
}

pub(crate) async fn ls(ctx: &Context, args: LsArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let dir = args.dir.unwrap_or_default();
    // JSON output carries the revision the listing was read at, where the store tells it
    // (`list_at`), so `watch -r --events --since REV` resumes from it with no gap.
    let listed = match ctx.output {
        Output::Json => match ctx.bounded(store.list_at(&dir, None)).await {
            Ok((pairs, revision)) => Ok((pairs, Some(revision))),
            Err(Failure::Store(kvstore::Error::CallNotSupported { .. })) => {
                ctx.bounded(store.list(&dir, None)).await.map(|p| (p, None))
            }
            Err(err) => Err(err),
        },
        Output::Text => ctx.bounded(store.list(&dir, None)).await.map(|p| (p, None)),
    };
    let _ = store.close().await;
    let (pairs, revision) = listed?;
    for pair in pairs {
        match (ctx.output, args.keys_only) {
            (Output::Text, true) => println!("{}", pair.key),
            (Output::Text, false) => println!("{}\t{}", pair.key, text(&pair.value)),
            (Output::Json, keys_only) => {
                let mut object = if keys_only {
                    serde_json::json!({ "key": pair.key })
                } else {
                    pair_json(&pair)
                };
                if let Some(revision) = revision {
                    object["revision"] = revision.into();
                }
                println!("{object}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn cas(ctx: &Context, args: CasArgs) -> Result<(), Failure> {
    let value = value_bytes(args.value).await?;
    // Only `last_index` of the previous pair is compared (the contract of `atomic_put`).
    let previous = args
        .index
        .filter(|_| !args.create)
        .map(|index| KvPair::new(args.key.clone(), Vec::new(), index));
    let store = ctx.open().await?;
    let written = ctx
        .bounded(store.atomic_put(
            &args.key,
            &value,
            previous.as_ref(),
            write_options(args.ttl).as_ref(),
        ))
        .await;
    let _ = store.close().await;
    print_written(ctx, &written?);
    Ok(())
}
