//! The one place where etcd-client errors become [`kvstore_core::Error`].

use etcd_client::Error as EtcdError;
use kvstore_core::Error;

use crate::BACKEND;

/// A refused password, token or permission and a TLS refusal are `PermissionDenied`; gRPC
/// `Unavailable` and transport failures are `NotReachable`, `DeadlineExceeded` is `Timeout`,
/// invalid arguments are `InvalidConfig`, anything else is `Backend`.
/// Source: etcd `api/v3rpc/rpctypes/error.go`: `PermissionDenied` ("etcdserver: permission
/// denied"), `Unauthenticated` (invalid or expired token), and `InvalidArgument` with
/// "etcdserver: authentication failed, invalid user ID or password".
pub(crate) fn from_etcd(err: EtcdError) -> Error {
    if kvstore_core::backend::tls::tls_error(&err).is_some() {
        return Error::permission_denied(BACKEND, err);
    }
    match &err {
        EtcdError::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) || status.message().contains("authentication failed") =>
        {
            Error::permission_denied(BACKEND, err)
        }
        EtcdError::TransportError(_) | EtcdError::IoError(_) => Error::not_reachable(BACKEND, err),
        EtcdError::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled => Error::not_reachable(BACKEND, err),
            tonic::Code::DeadlineExceeded => Error::Timeout,
            // A connection that broke mid-call ("transport error", code Unknown).
            _ if std::error::Error::source(status)
                .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some()) =>
            {
                Error::not_reachable(BACKEND, err)
            }
            _ => Error::backend(BACKEND, err),
        },
        EtcdError::InvalidArgs(_) | EtcdError::InvalidUri(_) => Error::invalid_config(BACKEND, err),
        _ => Error::backend(BACKEND, err),
    }
}
