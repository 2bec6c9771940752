//! Failures and the exit code each one gives (listed in `kvctl --help`).

use std::process::ExitCode;

use kvstore::Error;

/// Why a subcommand did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A store call failed.
    Store(Error),
    /// The arguments or input make no sense (exit 2).
    Usage(String),
    /// Reading input or starting a command failed (exit 5).
    Io(String, std::io::Error),
    /// The lock or leadership was lost while the command ran (exit 4).
    #[cfg_attr(
        not(unix),
        allow(dead_code, reason = "commands run under a lock on Unix only")
    )]
    Lost(String),
    /// The supervised command ended with this exit code (returned as kvctl's own).
    #[cfg_attr(
        not(unix),
        allow(dead_code, reason = "commands run under a lock on Unix only")
    )]
    Child(u8),
}

/// Exit code: key not found or CAS refused.
const NOT_FOUND_OR_REFUSED: u8 = 1;
/// Exit code: usage error.
const USAGE: u8 = 2;
/// Exit code: unreachable or timed out.
const UNREACHABLE: u8 = 3;
/// Exit code: lock or leadership lost.
const LOST: u8 = 4;
/// Exit code: anything else.
const OTHER: u8 = 5;

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Store(err) => match err {
                Error::KeyNotFound { .. }
                | Error::KeyModified { .. }
                | Error::KeyExists { .. }
                | Error::LockNotHeld { .. } => NOT_FOUND_OR_REFUSED,
                Error::InvalidConfig { .. }
                | Error::InvalidTxn { .. }
                | Error::InvalidKey { .. }
                | Error::InvalidValue { .. }
                | Error::ValueTooLarge { .. }
                | Error::BackendNotSupported { .. }
                | Error::CallNotSupported { .. } => USAGE,
                Error::NotReachable { .. } | Error::Timeout | Error::CannotLock { .. } => {
                    UNREACHABLE
                }
                _ => OTHER,
            },
            Failure::Usage(_) => USAGE,
            Failure::Io(..) => OTHER,
            Failure::Lost(_) => LOST,
            Failure::Child(code) => *code,
        }
    }

    /// Prints the failure as one line on stderr and returns its exit code.
    pub(crate) fn report(self) -> ExitCode {
        let message = match &self {
            Failure::Store(err) => chain(err),
            Failure::Usage(message) | Failure::Lost(message) => message.clone(),
            Failure::Io(what, err) => format!("{what}: {err}"),
            Failure::Child(code) => return ExitCode::from(*code),
        };
        eprintln!("kvctl: {}", message.replace('\n', " "));
        ExitCode::from(self.code())
    }
}

/// An error and its sources, joined with `: `. A cause whose text the line already holds (a
/// wrapper that repeats its source, as I/O errors inside client errors do) is not repeated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_documented_table() {
        let store = |err| Failure::Store(err).code();
        assert_eq!(store(Error::not_found("k")), 1);
        assert_eq!(store(Error::KeyModified { key: "k".into() }), 1);
        assert_eq!(store(Error::invalid_config("redis", "bad")), 2);
        assert_eq!(store(Error::Timeout), 3);
        assert_eq!(store(Error::not_reachable("etcd", "down")), 3);
        assert_eq!(store(Error::permission_denied("consul", "no")), 5);
        assert_eq!(Failure::Lost("lost".into()).code(), 4);
        assert_eq!(Failure::Usage("bad".into()).code(), 2);
        assert_eq!(
            store(Error::LockNotHeld {
                lock_key: "l".into()
            }),
            1
        );
    }

    #[test]
    fn a_repeated_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Error::not_reachable("redis", Wrapper(io));
        let line = chain(&err);
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(line.starts_with(&err.to_string()), "{line}");
    }
}
