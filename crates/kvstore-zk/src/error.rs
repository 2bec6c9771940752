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
