//! `keep_alive` keys for the lease engine: the ephemeral pin lease, the write that makes one,
//! and the write of a lost registration again on a new session.
//!
//! A registration's pin lives in a session whose timeout is the registration's TTL (one
//! session per distinct TTL, shared with locks of that TTL), not in the store's own session:
//! when the owner dies or is cut off, the server expires that session within the TTL, drops
//! the pin, and reaps the TTL znode at its next container check — so a dead instance leaves
//! the registry within TTL + the container check interval, whatever the store's session
//! timeout (10 s by default). Measured before this: 10.2 s for a 2 s TTL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::Result;
use kvstore_core::backend::{Expiry, Lease, Precondition, Release, Renewal, Written, write_again};

use crate::node::PIN;
use crate::session::renewal_error;

use crate::client::Inner;
use crate::write::Mode;

/// A `keep_alive` key's lease: its ephemeral pin in the store's session, which keeps the TTL
/// znode from expiring. It renews (any request renews a ZooKeeper session) while the pin
/// exists; a pin gone with an expired session is a lost lease, and the registration set then
/// writes the key again with a pin in the store's new session.
#[derive(Debug)]
pub(crate) struct PinLease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) key: String,
    /// The registration's TTL: the timeout of the session its pin lives in.
    pub(crate) ttl: Duration,
}

#[async_trait]
impl Lease for PinLease {
    async fn renew(&self) -> Result<Renewal> {
        // An expired pin session is replaced here; the pin is then gone, and so is the lease.
        let client = self.inner.lock_session(self.ttl).await?;
        let pin = format!("{}/{PIN}", self.inner.path(&self.key));
        match client.check_stat(&pin).await {
            Ok(Some(_)) => Ok(Renewal::Renewed),
            Ok(None) => Ok(Renewal::Gone),
            Err(err) => Err(renewal_error(&client, err)),
        }
    }

    /// Nothing to give back: the pin belongs to the store's session, and a write that replaced
    /// the registration has already settled it.
    async fn release(&self, _why: Release) -> Result<()> {
        Ok(())
    }
}

impl Inner {
    /// Writes `value` at `key`: a `keep_alive` key on the session of its TTL, pinned by an
    /// ephemeral child of that session, whose lease is returned; any other key on the store's
    /// session.
    pub(crate) async fn write_key(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        condition: Precondition,
        expiry: Option<Expiry>,
    ) -> Result<Written> {
        let client = match Mode::of(expiry) {
            Mode::KeepAlive(ttl) => self.lock_session(ttl).await?,
            _ => self.client().await?,
        };
        let pair = self
            .write_on(&client, key, value, condition, expiry)
            .await?;
        let lease = match Mode::of(expiry) {
            Mode::KeepAlive(ttl) => Some(self.pin_lease(key, ttl)),
            _ => None,
        };
        Ok(Written { pair, lease })
    }

    /// Writes a lost registration again on the session of its TTL, where the key is still
    /// absent or unchanged since the read.
    pub(crate) async fn register_again(
        self: &Arc<Self>,
        key: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> Result<Option<Arc<dyn Lease>>> {
        let client = self.lock_session(ttl).await?;
        let expiry = Some(Expiry {
            ttl,
            keep_alive: true,
        });
        let read = || self.read_key(&client, key, true);
        let write = |condition| self.write_on(&client, key, value, condition, expiry);
        Ok(write_again(value, read, write)
            .await?
            .map(|_| self.pin_lease(key, ttl)))
    }

    fn pin_lease(self: &Arc<Self>, key: &str, ttl: Duration) -> Arc<dyn Lease> {
        Arc::new(PinLease {
            inner: self.clone(),
            key: key.to_owned(),
            ttl,
        })
    }
}
