//! `kvctl`: one command-line tool over every kvstore backend.
//!
//! Reads, writes, CAS, watches, locks and elections on any URL `kvstore::open` accepts, with
//! the same output and exit codes on every store. `kvctl --help` lists the subcommands with an
//! example each and the exit codes.

mod cli;
mod exit;
mod kv;
mod output;
mod recipes;
mod shell;
mod status;
mod supervise;
mod transfer;
mod txn;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, GroupOp};
use crate::exit::Failure;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    log_to_stderr();
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// With `RUST_LOG` set (`RUST_LOG=kvstore=debug`), kvstore's spans and events go to stderr,
/// each call's span when it closes (with its duration); without it kvctl logs nothing.
fn log_to_stderr() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let ctx = cli::Context::new(&cli)?;
    match cli.command {
        Command::Get(args) => kv::get(&ctx, args).await,
        Command::Put(args) => kv::put(&ctx, args).await,
        Command::Rm(args) => kv::rm(&ctx, args).await,
        Command::Ls(args) => kv::ls(&ctx, args).await,
        Command::Cas(args) => kv::cas(&ctx, args).await,
        Command::Watch(args) => watch::watch(&ctx, args).await,
        Command::Txn => txn::txn(&ctx).await,
        Command::Status => status::status(&ctx).await,
        Command::Lock(args) => supervise::lock(&ctx, args).await,
        Command::Elect(args) => supervise::elect(&ctx, args).await,
        Command::Counter(args) => recipes::counter(&ctx, args).await,
        Command::Group(args) => match args.op {
            GroupOp::Join {
                dir,
                member,
                value,
                ttl,
                command,
            } => supervise::group_join(&ctx, &dir, &member, value, ttl, &command).await,
            GroupOp::Ls { dir, follow } => recipes::group_ls(&ctx, &dir, follow).await,
        },
        Command::Export(args) => transfer::export(&ctx, args).await,
        Command::Import(args) => transfer::import(&ctx, args).await,
        Command::Copy(args) => transfer::copy(&ctx, args).await,
        Command::Completions(args) => shell::completions(args),
        Command::Man => shell::man(),
    }
    .map(|()| ExitCode::SUCCESS)
}
