//! `kvctl export`, `import` and `copy`: whole directories between stores and files, in the
//! JSON format of `consul kv export` (`[{"key", "flags", "value"}]`, the value in base64), so
//! files move between `consul kv` and kvctl.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cli::{Context, CopyArgs, ExportArgs, ImportArgs};
use crate::exit::Failure;
use crate::kv::read_stdin;

/// One entry of `consul kv export`.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    /// Consul's opaque flags; kvstore has none, so 0 on export and ignored on import.
    #[serde(default)]
    flags: u64,
    /// The value, base64.
    value: String,
}

pub(crate) async fn export(ctx: &Context, args: ExportArgs) -> Result<(), Failure> {
    let store = ctx.open().await?;
    let pairs = ctx
        .bounded(store.list(args.dir.as_deref().unwrap_or(""), None))
        .await;
    let _ = store.close().await;
    let entries: Vec<Entry> = pairs?
        .into_iter()
        .map(|pair| Entry {
            key: pair.key,
            flags: 0,
            value: BASE64.encode(&pair.value),
        })
        .collect();
    let json = serde_json::to_string_pretty(&entries).expect("entries serialize");
    println!("{json}");
    Ok(())
}

pub(crate) async fn import(ctx: &Context, args: ImportArgs) -> Result<(), Failure> {
    let text = match args.file.as_deref() {
        None => read_stdin().await?,
        Some(path) if path.as_os_str() == "-" => read_stdin().await?,
        Some(path) => tokio::fs::read(path)
            .await
            .map_err(|e| Failure::Io(format!("reading {}", path.display()), e))?,
    };
    let entries: Vec<Entry> = serde_json::from_slice(&text)
        .map_err(|e| Failure::Usage(format!("not `consul kv export` JSON: {e}")))?;
    // Check everything before the first write, so bad input writes nothing.
    let mut pairs = Vec::with_capacity(entries.len());
    for entry in entries {
        let value = BASE64
            .decode(&entry.value)
            .map_err(|e| Failure::Usage(format!("{}: value is not base64: {e}", entry.key)))?;
        let key = match &args.prefix {
            Some(prefix) => format!("{}/{}", prefix.trim_end_matches('/'), entry.key),
            None => entry.key,
        };
        kvstore::normalize_key(&key).map_err(Failure::Store)?;
        pairs.push((key, value));
    }
    let store = ctx.open().await?;
    let progress = progress(pairs.len(), "importing");
    let mut result = Ok(());
    for (key, value) in &pairs {
        if let Err(failure) = ctx.bounded(store.put(key, value, None)).await {
            result = Err(failure);
            break;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let _ = store.close().await;
    result?;
    eprintln!("kvctl: imported {}", keys(pairs.len()));
    Ok(())
}

pub(crate) async fn copy(ctx: &Context, args: CopyArgs) -> Result<(), Failure> {
    let src = ctx.open_url(&args.src).await?;
    let dst = ctx.open_url(&args.dst).await?;
    let result = copy_between(ctx, &*src, &*dst, args.dir.as_deref().unwrap_or("")).await;
    let _ = (src.close().await, dst.close().await);
    let (copied, skipped) = result?;
    eprintln!("kvctl: copied {}, {skipped} already equal", keys(copied));
    Ok(())
}

/// Copies every pair under `dir`, skipping pairs whose value the destination already has (so
/// an interrupted copy resumes where it stopped). Returns (copied, skipped).
async fn copy_between(
    ctx: &Context,
    src: &dyn kvstore::Store,
    dst: &dyn kvstore::Store,
    dir: &str,
) -> Result<(usize, usize), Failure> {
    let pairs = ctx.bounded(src.list(dir, None)).await?;
    let progress = progress(pairs.len(), "copying");
    let (mut copied, mut skipped) = (0, 0);
    for pair in &pairs {
        let existing = match ctx.bounded(dst.get(&pair.key, None)).await {
            Ok(existing) => Some(existing),
            Err(Failure::Store(kvstore::Error::KeyNotFound { .. })) => None,
            Err(other) => return Err(other),
        };
        if existing.is_some_and(|e| e.value == pair.value) {
            skipped += 1;
        } else {
            ctx.bounded(dst.put(&pair.key, &pair.value, None)).await?;
            copied += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok((copied, skipped))
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} keys ({eta})")
            .expect("a valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `1 key`, `2 keys`.
fn keys(n: usize) -> String {
    if n == 1 {
        "1 key".to_owned()
    } else {
        format!("{n} keys")
    }
}
