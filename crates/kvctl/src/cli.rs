//! The command line: global options and one struct per subcommand.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvstore::Store;

use crate::exit::Failure;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found, or CAS refused (the key changed, exists with --create, or a txn
     condition failed)
  2  usage error: bad arguments, URL, key or value
  3  server unreachable, or timed out
  4  lock or leadership lost while the command ran
  5  any other failure (permission denied, a server error)
  lock and elect exit with their command's code (128 + N when it died of signal N).

Every command but copy, completions and man needs a store: --url or KVSTORE_URL (kvctl
never picks one itself, so it creates no file you did not name). The URL takes the same
options as the library (prefix=, timeout=, tls_ca=, tls_cert=, tls_key=, credentials as
user:pass@ or token=); --password-file and --token-file keep secrets out of the command line.";

/// One command-line tool over every kvstore backend (redb, memory, Redis, etcd, ZooKeeper,
/// Consul).
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Store URL, any that kvstore::open accepts (redis://, etcd://, zk://, consul://, postgres://, redb:FILE, memory://); required by every command but copy, completions and man
    #[arg(long, env = "KVSTORE_URL", hide_env_values = true, global = true)]
    pub(crate) url: Option<String>,

    /// Read the password for the URL's user from this file (trailing newline ignored), instead of user:pass@ in the URL
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) password_file: Option<PathBuf>,

    /// Read the token (Consul ACL token) from this file (trailing newline ignored), instead of token= in the URL
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,

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
    /// Write a key (VALUE, @FILE, or - for stdin); prints its last_index.  kvctl put app/config @config.json --ttl 30s
    Put(PutArgs),
    /// Delete a key (only at last_index N with --index), or a directory with -r.  kvctl rm -r app
    Rm(RmArgs),
    /// List every key under a directory (recursive).  kvctl ls app --keys-only
    Ls(LsArgs),
    /// Write a key only if its last_index is N (or it is missing, with --create).  kvctl cas app/config v2 --index 7
    Cas(CasArgs),
    /// Print a key's value, then one line per change (-r: a directory).  kvctl watch -r app --exec 'echo $KVSTORE_KEY'
    Watch(WatchArgs),
    /// Apply puts and deletes atomically under conditions, read as JSON from stdin.  kvctl txn < txn.json
    Txn,
    /// Show the backend, its address (credentials hidden), capabilities and round-trip time.  kvctl status
    Status,
    /// Run a command while holding a lock (token in KVSTORE_FENCING_TOKEN).  kvctl lock jobs/report -- ./report.sh
    Lock(LockArgs),
    /// Print a counter, or add to it and print the new value (exact under concurrency).  kvctl counter stats/visits add 1
    Counter(CounterArgs),
    /// Join a group while a command runs, or list (--follow) its members.  kvctl group join workers w1 10.0.0.7 -- ./worker
    Group(GroupArgs),
    /// Run a command as the elected leader, or --follow the leaders.  kvctl elect sched/leader node1 -- ./scheduler
    Elect(ElectArgs),
    /// Print a directory as `consul kv export` JSON.  kvctl export app > app.json
    Export(ExportArgs),
    /// Write the keys of `consul kv export` JSON (FILE, or stdin).  kvctl import --prefix copy app.json
    Import(ImportArgs),
    /// Copy a directory between two stores; re-running resumes.  kvctl copy consul://127.0.0.1:8500 redb:backup.redb app
    Copy(CopyArgs),
    /// Print a shell completion script.  kvctl completions bash > /etc/bash_completion.d/kvctl
    Completions(CompletionsArgs),
    /// Print kvctl's man page (roff).  kvctl man > kvctl.1 && man ./kvctl.1
    Man,
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
    /// The value; @FILE reads it from a file and - from stdin (bytes as they are), as `consul kv put` does
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
    /// Delete only if the key still has this last_index (exit 1 if it changed or is gone)
    #[arg(long, conflicts_with = "recursive")]
    pub(crate) index: Option<u64>,
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
    /// The new value; @FILE reads it from a file and - from stdin
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
    /// Resume after last_index N (a value you already have): the key's current state is
    /// printed only if it changed since (a missing key prints as a delete), then every change
    #[arg(long, value_name = "N", conflicts_with = "recursive")]
    pub(crate) index: Option<u64>,
    /// With -r: one line per key event (put or delete) with the store revision it brings the
    /// directory to, from the store's per-key event stream; a `snapshot` line first (then a
    /// put line per key) says to start over
    #[arg(long, requires = "recursive")]
    pub(crate) events: bool,
    /// With --events: resume after store revision REV (from a previous line or `ls -o json`):
    /// the changes since, or a snapshot where the store can no longer tell them
    #[arg(long, value_name = "REV", requires = "events")]
    pub(crate) since: Option<u64>,
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
    /// A semaphore of N permits instead of a lock (as `consul lock -n N`): up to N commands
    /// run at once; the permit's lock key is in KVSTORE_PERMIT_KEY
    #[arg(short = 'n', long = "permits", value_name = "N")]
    pub(crate) permits: Option<u32>,
    #[command(flatten)]
    pub(crate) hold: HoldArgs,
    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct CounterArgs {
    /// The counter's key (a decimal 64-bit integer; absent counts 0)
    pub(crate) key: String,
    #[command(subcommand)]
    pub(crate) op: Option<CounterOp>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CounterOp {
    /// Add N (negative to subtract) and print the new value
    Add {
        /// The amount
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
}

#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    pub(crate) op: GroupOp,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupOp {
    /// Be a member (DIR/MEMBER = VALUE, kept alive) while COMMAND runs; leave when it ends
    Join {
        /// The group's directory
        dir: String,
        /// The member's name (one key segment)
        member: String,
        /// The member's value (what `group ls` shows)
        value: OsString,
        /// Membership TTL: how long it outlives this process stopping or losing the server
        #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
        ttl: Duration,
        /// The command and its arguments, after --
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Print the members (`MEMBER VALUE` per line); with --follow, again after every change
    Ls {
        /// The group's directory
        dir: String,
        /// Keep printing the member list after every join or leave, until interrupted
        #[arg(long)]
        follow: bool,
    },
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

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell
    pub(crate) shell: clap_complete::Shell,
}

/// What every subcommand needs: the URL (with the secrets of `--password-file` and
/// `--token-file` in it), the output format and the call timeout.
#[derive(Clone)]
pub(crate) struct Context {
    url: Option<String>,
    pub(crate) output: Output,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field(
                "url",
                &self.url.as_deref().map(kvstore::backend::redact_url),
            )
            .field("output", &self.output)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Context {
    /// The context of `cli`; reads `--password-file` and `--token-file` into the URL.
    pub(crate) fn new(cli: &Cli) -> Result<Self, Failure> {
        let mut url = cli.url.clone();
        if let Some(path) = &cli.password_file {
            let password = read_secret(path)?;
            url = Some(with_password(&require(url)?, &password)?);
        }
        if let Some(path) = &cli.token_file {
            let token = read_secret(path)?;
            url = Some(with_token(&require(url)?, &token));
        }
        Ok(Context {
            url,
            output: cli.output,
            timeout: cli.timeout,
        })
    }

    /// The `--url` store's URL, secrets included (print it only through `redact_url`).
    pub(crate) fn url(&self) -> Result<&str, Failure> {
        self.url.as_deref().ok_or_else(no_url)
    }

    /// Opens `url` within the timeout.
    pub(crate) async fn open_url(&self, url: &str) -> Result<Arc<dyn Store>, Failure> {
        self.bounded(kvstore::open(url)).await
    }

    /// Opens the store of `--url`.
    pub(crate) async fn open(&self) -> Result<Arc<dyn Store>, Failure> {
        self.open_url(self.url()?).await
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

fn no_url() -> Failure {
    Failure::Usage(
        "no store given: pass --url or set KVSTORE_URL (for example --url redb:kv.redb, which \
         creates that file, or --url redis://127.0.0.1:6379)"
            .into(),
    )
}

fn require(url: Option<String>) -> Result<String, Failure> {
    url.ok_or_else(no_url)
}

/// A secret file's content without its trailing line break (as `echo secret > file` leaves it).
fn read_secret(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Io(format!("reading {}", path.display()), e))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(Failure::Usage(format!("{} is empty", path.display())));
    }
    Ok(secret.to_owned())
}

/// The characters a URL's user information cannot carry as they are (RFC 3986 §3.2.1).
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `url` with `password` as the password of its user information (`scheme://user:PW@hosts`,
/// or `scheme://:PW@hosts` without a user). Works on multi-host URLs, which are not valid URLs
/// for a URL parser.
fn with_password(url: &str, password: &str) -> Result<String, Failure> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Failure::Usage(format!(
            "--password-file: {} has no host to log in to",
            kvstore::backend::redact_url(url)
        ))
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err(Failure::Usage(
                "--password-file: the URL already has a password".into(),
            ));
        }
        Some((user, hosts)) => (user, hosts),
        None => ("", authority),
    };
    let password = percent_encoding::utf8_percent_encode(password, USERINFO);
    Ok(format!("{scheme}://{user}:{password}@{hosts}{tail}"))
}

/// `url` with a `token=` query option.
fn with_token(url: &str, token: &str) -> String {
    let token = percent_encoding::utf8_percent_encode(token, USERINFO);
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, format!("#{fragment}")),
        None => (url, String::new()),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}token={token}{fragment}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_fills_the_user_information() {
        assert_eq!(
            with_password("redis://kv@127.0.0.1:6379/0?x=1", "p@ss:w/rd").unwrap(),
            "redis://kv:p%40ss%3Aw%2Frd@127.0.0.1:6379/0?x=1"
        );
        assert_eq!(
            with_password("etcd://h1:1,h2:2", "pw").unwrap(),
            "etcd://:pw@h1:1,h2:2"
        );
        assert!(with_password("redis://kv:old@h:1", "pw").is_err());
        assert!(with_password("redb:file.redb", "pw").is_err());
    }

    #[test]
    fn a_token_file_adds_the_token_option() {
        assert_eq!(
            with_token("consul://h:8500", "t"),
            "consul://h:8500?token=t"
        );
        assert_eq!(
            with_token("consul://h:8500?prefix=a", "t/1"),
            "consul://h:8500?prefix=a&token=t%2F1"
        );
    }
}
