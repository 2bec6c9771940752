//! Mapping of ZooKeeper client errors onto kvstore errors.

use kvstore_core::Error;
use zookeeper_client as zk;

use crate::BACKEND;

/// Maps an error that the call site did not handle itself (`NoNode`, `NodeExists`,
/// `BadVersion` and `NotEmpty` are handled where they mean something).
pub(crate) fn from_zk(err: zk::Error) -> Error {
    match err {
        zk::Error::ConnectionLoss | zk::Error::NoHosts | zk::Error::SessionExpired => {
            Error::not_reachable(BACKEND, err)
        }
        // A server that is shedding load, or one the session just moved away from, or one cut
        // off from the quorum (read-only mode): another try, on this or another server, may
        // succeed. Source: ZooKeeper Programmer's Guide, "Handling Errors"/"Read-only mode".
        zk::Error::Throttled | zk::Error::SessionMoved | zk::Error::NotReadOnly => {
            Error::not_reachable(BACKEND, err)
        }
        // The connection broke under a request (the server was killed, say): the client
        // reports the socket's error as is. Seen when a member of an ensemble is SIGKILLed.
        ref custom @ zk::Error::Custom(_) if is_io(custom) => Error::not_reachable(BACKEND, err),
        // The client gave up on a connection that answered nothing (not even pings) for its
        // timeout, and fails every request on it with a message and no variant
        // (zookeeper-client 0.11, `session/mod.rs`). Seen when an ensemble's leader is cut off
        // from its peers: the server stops serving but keeps the socket open.
        ref custom @ zk::Error::Custom(_) if is_silent_connection(&custom.to_string()) => {
            Error::not_reachable(BACKEND, err)
        }
        zk::Error::Timeout => Error::Timeout,
        zk::Error::ClientClosed => Error::Closed { backend: BACKEND },
        // The node's ACL does not grant this session's identity (digest user) the operation,
        // or the server refused the credentials. Source: ZooKeeper Programmer's Guide,
        // "ZooKeeper access control using ACLs".
        zk::Error::NoAuth | zk::Error::AuthFailed => Error::permission_denied(BACKEND, err),
        // The server refuses a path it cannot store (a root or chroot with characters outside
        // the key grammar, which keys themselves never reach) with BadArguments.
        // Source: ZooKeeper Programmer's Guide, "ZNodes" (characters not allowed in paths).
        zk::Error::BadArguments(reason) => Error::backend(
            BACKEND,
            format!(
                "ZooKeeper refused the request's arguments ({reason}): the znode path is not one \
                 ZooKeeper can store; check the root/chroot in the URL"
            ),
        ),
        other => Error::backend(BACKEND, other),
    }
}

/// Whether an I/O error is anywhere in `err`'s source chain, including inside the
/// `Arc<dyn Error>` the client wraps it in.
fn is_io(err: &(dyn std::error::Error + 'static)) -> bool {
    kvstore_core::backend::find_source::<std::io::Error>(err).is_some()
}

/// Whether a client error's text is the one it fails requests with when their connection
/// answered nothing for the connection timeout.
fn is_silent_connection(message: &str) -> bool {
    message.contains("no response from connection in")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_connection_is_recognised_by_its_text() {
        assert!(is_silent_connection(
            "no response from connection in 5000ms"
        ));
        assert!(!is_silent_connection("node exists"));
    }

    #[test]
    fn io_errors_in_the_chain_are_transient() {
        let shared: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_io(&shared));
        let plain = std::io::Error::other("x");
        assert!(is_io(&plain));
        assert!(!is_io(&zk::Error::NoNode));
    }
}
