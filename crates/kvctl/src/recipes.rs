//! `kvctl counter` and `kvctl group ls`: the recipes that read or change a value and print it
//! (`group join` runs a command, in `supervise.rs`).

use futures::StreamExt;
use kvstore::{Counter, Group, KvPair};

use crate::cli::{Context, CounterArgs, CounterOp, Output};
use crate::exit::Failure;
use crate::output::{pair_json, text};

/// Prints the counter's value, or adds to it and prints the new value.
pub(crate) async fn counter(ctx: &Context, args: CounterArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let counter = Counter::new(store.clone(), &args.key);
    let value = match args.op {
        None => ctx.bounded(counter.get()).await,
        Some(CounterOp::Add { delta }) => ctx.bounded(counter.add(delta)).await,
    };
    let _ = store.close().await;
    let value = value?;
    match ctx.output {
        Output::Text => println!("{value}"),
        Output::Json => println!("{}", serde_json::json!({ "key": args.key, "value": value })),
    }
    Ok(())
}

/// Prints the members of the group at `dir`; with `follow`, again after every change until
/// interrupted (or the watch gives up).
pub(crate) async fn group_ls(ctx: &Context, dir: &str, follow: bool) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let result = list_members(ctx, &*store, dir, follow).await;
    let _ = store.close().await;
    result
}

async fn list_members(
    ctx: &Context,
    store: &dyn kvstore::Store,
    dir: &str,
    follow: bool,
) -> Result<(), Failure> {
    if !follow {
        let members = match ctx.bounded(store.list(dir, None)).await {
            Err(Failure::Store(kvstore::Error::KeyNotFound { .. })) => Vec::new(),
            other => other?,
        };
        print_members(ctx, &members, false);
        return Ok(());
    }
    let mut members = ctx.bounded(Group::follow(store, dir)).await?;
    // One listener, polled first: its handler is in place before the first line is printed,
    // and a Ctrl-C between two lines is not lost (as in `kvctl watch`).
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut interrupted => return Ok(()),
            next = members.next() => next,
        };
        let Some(list) = next else {
            return Err(Failure::Store(kvstore::Error::not_reachable(
                "kvctl",
                "following the group ended",
            )));
        };
        print_members(ctx, &list.map_err(Failure::Store)?, true);
    }
}

/// One line per member (`MEMBER VALUE`), or one JSON object per member; when following, a
/// line `--` (text) or an array per list (JSON) tells the lists apart.
fn print_members(ctx: &Context, members: &[KvPair], follow: bool) {
    let name = |p: &KvPair| p.key.rsplit('/').next().unwrap_or_default().to_owned();
    match ctx.output {
        Output::Text => {
            for member in members {
                println!("{} {}", name(member), text(&member.value));
            }
            if follow {
                println!("--");
            }
        }
        Output::Json => {
            let objects = members.iter().map(|m| {
                let mut object = pair_json(m);
                object["member"] = serde_json::Value::from(name(m));
                object
            });
            if follow {
                println!("{}", serde_json::Value::from_iter(objects));
            } else {
                for object in objects {
                    println!("{object}");
                }
            }
        }
    }
}
