//! The one place where etcd-client errors become [`kvstore_core::Error`].

use etcd_client::Error as EtcdError;
use kvstore_core::Error;

use crate::BACKEND;

/// gRPC `Unavailable` and transport failures are `NotReachable`, `DeadlineExceeded` is
/// `Timeout`, invalid arguments are `InvalidConfig`, anything else is `Backend`.
/// Source: etcd docs, "gRPC error codes" (api_grpc_gateway / rpc errors).
pub(crate) fn from_etcd(err: EtcdError) -> Error {
    match &err {
        EtcdError::TransportError(_) | EtcdError::IoError(_) => Error::not_reachable(BACKEND, err),
        EtcdError::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled => Error::not_reachable(BACKEND, err),
            tonic::Code::DeadlineExceeded => Error::Timeout,
            _ => Error::backend(BACKEND, err),
        },
        EtcdError::InvalidArgs(_) | EtcdError::InvalidUri(_) => Error::invalid_config(BACKEND, err),
        _ => Error::backend(BACKEND, err),
    }
}
