//! The same workloads done with each backend's own client, the way an application using that
//! client alone would do them (the most direct equivalent of each call).

mod consul;
mod etcd;
mod postgres;
mod redb;
mod redis;
mod zk;

use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

pub(crate) use consul::consul;
pub(crate) use etcd::etcd;
pub(crate) use postgres::postgres;
pub(crate) use redb::redb;
pub(crate) use redis::redis;
pub(crate) use zk::zk;

/// Deleting what one cell's raw side wrote under its directory, per backend.
pub(crate) mod cleanup {
    pub(crate) use super::consul::cleanup as consul;
    pub(crate) use super::etcd::cleanup as etcd;
    pub(crate) use super::postgres::cleanup as postgres;
    pub(crate) use super::redb::cleanup as redb;
    pub(crate) use super::redis::cleanup as redis;
    pub(crate) use super::zk::cleanup as zk;
}

pub(super) type Rx = Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, Instant)>>>;

pub(super) fn channel() -> (tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Instant)>, Rx) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, Arc::new(Mutex::new(rx)))
}
