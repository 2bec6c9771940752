//! The command line: global options and one struct per subcommand.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvstore::Store;

use crate::exit::Failure;

/// The store `kvctl` opens without `--url` or `KVSTORE_URL`: the quickstart's redb file.
pub(crate) const DEFAULT_URL: &str = "redb:kvstore-quickstart.redb";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found, or CAS refused (the key changed, or exists with --create)
  2  usage error: bad arguments, URL, key or value
  3  server unreachable, or timed out
  4  lock or leadership lost while the command ran
  5  any other failure (permission denied, a server error)
  lock and elect exit with their command's code (128 + N when it died of signal N).

The URL takes the same options as the library (prefix=, timeout=, tls_ca=, tls_cert=,
tls_key=, credentials as user:pass@ or token=).";

/// One command-line tool over every kvstore backend (redb, memory, Redis, etcd, ZooKeeper,
/// Consul).
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Store URL, any that kvstore::open accepts (redis://, etcd://, zk://, consul://, redb:, memory://)
    #[arg(long, env = "KVSTORE_URL", hide_env_values = true, default_value = DEFAULT_URL, global = true)]
    pub(crate) url: String,

    /// Output format of reading commands (json: one object per line for watch)
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    pub(crate) output: Output,

    /// Bound on opening the store and on each call (humantime: 500ms, 10s, 1m)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", global = true)]
    pub(crate) timeout: Duration,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Values as they are, one line per key or event
    Text,
    /// JSON objects with key, value (UTF-8 or null), value_base64 and last_index
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a key's value.  kvctl get app/config
    Get(GetArgs),
    /// Write a key (VALUE, or - for stdin); prints its last_index.  kvctl put app/config v1 --ttl 30s
    Put(PutArgs),
    /// Delete a key, or a directory with -r.  kvctl rm -r app
    Rm(RmArgs),
    /// List every key under a directory (recursive).  kvctl ls app --keys-only
    Ls(LsArgs),
    /// Write a key only if its last_index is N (or it is missing, with --create).  kvctl cas app/config v2 --index 7
    Cas(CasArgs),
    /// Print a key's value, then one line per change (-r: a directory).  kvctl watch -r app --exec 'echo $KVSTORE_KEY'
    Watch(WatchArgs),
    /// Run a command while holding a lock (token in KVSTORE_FENCING_TOKEN).  kvctl lock jobs/report -- ./report.sh
    Lock(LockArgs),
    /// Run a command as the elected leader, or --follow the leaders.  kvctl elect sched/leader node1 -- ./scheduler
    Elect(ElectArgs),
    /// Print a directory as `consul kv export` JSON.  kvctl export app > app.json
    Export(ExportArgs),
    /// Write the keys of `consul kv export` JSON (FILE, or stdin).  kvctl import --prefix copy app.json
    Import(ImportArgs),
    /// Copy a directory between two stores; re-running resumes.  kvctl copy consul://127.0.0.1:8500 redb:backup.redb app
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The key
    pub(crate) key: String,
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The key
    pub(crate) key: String,
    /// The value; - reads it from stdin (bytes as they are)
    pub(crate) value: OsString,
    /// Time to live (the key expires unless written again)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// The key, or the directory with -r
    pub(crate) key: String,
    /// Delete the directory and everything under it
    #[arg(short = 'r', long)]
    pub(crate) recursive: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// The directory; the whole keyspace when absent
    pub(crate) dir: Option<String>,
    /// Print the keys only
    #[arg(long)]
    pub(crate) keys_only: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CasArgs {
    /// The key
    pub(crate) key: String,
    /// The new value; - reads it from stdin
    pub(crate) value: OsString,
    /// The last_index the key must still have (from get -o json, put or a previous cas)
    #[arg(long, required_unless_present = "create", conflicts_with = "create")]
    pub(crate) index: Option<u64>,
    /// Write only if the key does not exist
    #[arg(long)]
    pub(crate) create: bool,
    /// Time to live of the written key
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The key, or the directory with -r
    pub(crate) key: String,
    /// Watch every key under the directory
    #[arg(short = 'r', long)]
    pub(crate) recursive: bool,
    /// Run this shell command per change, with KVSTORE_KEY, KVSTORE_VALUE,
    /// KVSTORE_VALUE_BASE64, KVSTORE_LAST_INDEX and KVSTORE_EVENT (put or delete) set, and
    /// the change's JSON on stdin
    #[arg(long, value_name = "CMD")]
    pub(crate) exec: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct HoldArgs {
    /// Lease TTL: how long the hold survives this process stopping or losing the server
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub(crate) ttl: Duration,
    /// Give up waiting after this long (exit 3); default: wait until taken
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) wait: Option<Duration>,
    /// After the hold is lost: how long the command has between SIGTERM and SIGKILL
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub(crate) grace: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// The lock's key
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) hold: HoldArgs,
    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct ElectArgs {
    /// The election's key
    pub(crate) key: String,
    /// The value to lead with (what followers see); not with --follow
    #[arg(required_unless_present = "follow", conflicts_with = "follow")]
    pub(crate) value: Option<OsString>,
    /// Print each leader with its term instead of campaigning
    #[arg(long)]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) hold: HoldArgs,
    /// The command to run while leading, after --
    #[arg(
        last = true,
        value_name = "COMMAND",
        required_unless_present = "follow"
    )]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The directory; the whole keyspace when absent
    pub(crate) dir: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Directory to put in front of every imported key
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// The JSON file; - or absent: stdin
    pub(crate) file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The store to copy from
    pub(crate) src: String,
    /// The store to copy to
    pub(crate) dst: String,
    /// The directory to copy; the whole keyspace when absent
    pub(crate) dir: Option<String>,
}

/// What every subcommand needs: the URL, the output format and the call timeout.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) url: String,
    pub(crate) output: Output,
    pub(crate) timeout: Duration,
}

impl Context {
    pub(crate) fn new(cli: &Cli) -> Self {
        Context {
            url: cli.url.clone(),
            output: cli.output,
            timeout: cli.timeout,
        }
    }

    /// Opens `url` within the timeout.
    pub(crate) async fn open_url(&self, url: &str) -> Result<Arc<dyn Store>, Failure> {
        self.bounded(kvstore::open(url)).await
    }

    /// Opens the store of `--url`.
    pub(crate) async fn open(&self) -> Result<Arc<dyn Store>, Failure> {
        self.open_url(&self.url).await
    }

    /// Runs one store call within the timeout (`Timeout` after it).
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = kvstore::Result<T>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(Failure::Store),
            Err(_) => Err(Failure::Store(kvstore::Error::Timeout)),
        }
    }
}
