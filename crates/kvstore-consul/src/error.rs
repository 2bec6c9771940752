//! The one place where HTTP-client failures and the agent's error answers become
//! [`kvstore_core::Error`].

use std::time::Duration;

use kvstore_core::Error;
use reqwest::StatusCode;

use crate::BACKEND;

/// A request that got no answer: a TLS refusal is `PermissionDenied`, a timeout is `Timeout`,
/// a refused or broken connection is `NotReachable` (transient), anything else the client
/// reports is `Backend`.
pub(crate) fn from_reqwest(err: reqwest::Error) -> Error {
    if kvstore_core::backend::tls::tls_error(&err).is_some() {
        Error::permission_denied(BACKEND, err)
    } else if err.is_timeout() {
        Error::Timeout
    } else if err.is_connect() || err.is_request() {
        Error::not_reachable(BACKEND, err)
    } else {
        Error::backend(BACKEND, err)
    }
}

/// An error status with its body. A refused session TTL is a permanent `InvalidConfig` (see
/// [`refused_session_ttl_min`]); 500/502/503 ("No cluster leader", "rpc error": the cluster is
/// (re)starting) are transient; 400 is `InvalidConfig`; 401 and 403 (an unknown or revoked
/// token, "ACL not found", or a token whose policy does not grant the call, "Permission
/// denied"; Consul docs, "ACL system") are `PermissionDenied`; the rest is `Backend`.
pub(crate) fn from_status(status: StatusCode, body: &str) -> Error {
    if let Some(min) = refused_session_ttl_min(body) {
        return ttl_below_minimum(min);
    }
    let message = format!("HTTP {status}: {}", body.trim());
    match status {
        StatusCode::INTERNAL_SERVER_ERROR
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::BAD_GATEWAY => Error::not_reachable(BACKEND, message),
        StatusCode::BAD_REQUEST => Error::invalid_config(BACKEND, message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::permission_denied(BACKEND, message)
        }
        _ => Error::backend(BACKEND, message),
    }
}

/// A failed transaction operation that no condition explains: `PermissionDenied` when the
/// token's policy does not grant it ("Permission denied: token … lacks permission
/// 'key:write'", or "ACL not found" for an unknown token; Consul docs, "ACL system"), else
/// `Backend`.
pub(crate) fn from_txn_failure(what: String) -> Error {
    if what.starts_with("Permission denied") || what.contains("ACL not found") {
        Error::permission_denied(BACKEND, what)
    } else {
        Error::backend(BACKEND, what)
    }
}

/// Whether a failed transaction operation says its session is gone (invalidated or
/// destroyed): the agent answers `Invalid session "<id>"` (observed on Consul 1.21.0).
pub(crate) fn is_invalid_session(what: &str) -> bool {
    what.contains("Invalid session")
}

/// The minimum in the agent's refusal of a session TTL, which reads
/// `Invalid Session TTL '<ns>', must be between [<min>=<max>]` (Go durations such as `10s`).
/// Source: the body Consul 1.21.0 answers to `PUT /v1/session/create` with a short TTL (pinned by
/// `tests/stock.rs`); the minimum is the agent's `session_ttl_min` (Consul docs, "Agent
/// configuration file reference", 10 s by default).
pub(crate) fn refused_session_ttl_min(body: &str) -> Option<Duration> {
    let rest = &body[body.find("Invalid Session TTL")?..];
    let bounds = &rest[rest.find('[')? + 1..];
    let min = &bounds[..bounds.find('=')?];
    parse_go_duration(min)
}

/// Parses the Go durations Consul prints (`10s`, `1m0s`, `1.5s`, `500ms`).
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * seconds;
        rest = tail;
    }
    Some(Duration::from_secs_f64(total))
}

/// A TTL below the agent's `session_ttl_min`: a refusal that retrying cannot fix.
pub(crate) fn ttl_below_minimum(min: Duration) -> Error {
    Error::invalid_config(
        BACKEND,
        format!(
            "this Consul agent refuses TTLs below its session_ttl_min of {min:?}: use a TTL of at \
             least {min:?}, or lower `session_ttl_min` in the agent configuration"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_minimum_from_a_refused_session_ttl() {
        let body = "Invalid Session TTL '2000000000', must be between [10s=24h0m0s]";
        assert_eq!(refused_session_ttl_min(body), Some(Duration::from_secs(10)));
        assert_eq!(
            refused_session_ttl_min("Invalid Session TTL '1', must be between [1m30s=24h0m0s]"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(
            refused_session_ttl_min("rpc error: No cluster leader"),
            None
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert!(from_status(StatusCode::SERVICE_UNAVAILABLE, "No cluster leader").is_transient());
        assert!(matches!(
            from_status(StatusCode::BAD_REQUEST, "bad"),
            Error::InvalidConfig { .. }
        ));
        let refused = from_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid Session TTL '2000000000', must be between [10s=24h0m0s]",
        );
        assert!(matches!(refused, Error::InvalidConfig { .. }) && !refused.is_transient());
    }
}
