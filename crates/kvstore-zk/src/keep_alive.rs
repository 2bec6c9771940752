//! `keep_alive` keys for the lease engine: the ephemeral pin lease and the registrar that
//! writes a lost registration again on a new session.
//!
//! A registration's pin lives in a session whose timeout is the registration's TTL (one
//! session per distinct TTL, shared with locks of that TTL), not in the store's own session:
//! when the owner dies or is cut off, the server expires that session within the TTL, drops
//! the pin, and reaps the TTL znode at its next container check — so a dead instance leaves
//! the registry within TTL + the container check interval, whatever the store's session
//! timeout (10 s by default). Measured before this: 10.2 s for a 2 s TTL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{Lease, Precondition, Registrar, Release, Renewal, write_again};
use kvstore_core::{KvPair, Result, WriteOptions};
use tokio::time::Instant;

use crate::node::PIN;
use crate::session::renewal_error;

use crate::client::Inner;
use crate::write::Mode;

/// A `keep_alive` key's lease: its ephemeral pin in the store's session, which keeps the TTL
/// znode from expiring. It renews (any request renews a ZooKeeper session) while the pin
/// exists; a pin gone with an expired session is a lost lease, and the registration set then
/// writes the key again with a pin in the store's new session.
pub(crate) struct PinLease {
    pub(crate) inner: Arc<Inner>,
    pub(crate) key: String,
    /// The registration's TTL: the timeout of the session its pin lives in.
    pub(crate) ttl: Duration,
}

impl fmt::Debug for PinLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinLease")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish()
    }
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

/// Writes a lost registration again: a read, then a write with a new pin that checks the key
/// is still absent or unchanged since the read.
pub(crate) struct PinRegistrar(pub(crate) Arc<Inner>);

#[async_trait]
impl Registrar for PinRegistrar {
    async fn register_again(
        &self,
        key: &str,
        value: &Bytes,
        ttl: Duration,
    ) -> Result<Option<(Arc<dyn kvstore_core::backend::Lease>, Instant)>> {
        let inner = &self.0;
        let client = inner.lock_session(ttl).await?;
        let sent = Instant::now();
        let opts = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
        let read = || inner.read_key(&client, key, true);
        let write = |condition| inner.write_on(&client, key, value, condition, Some(&opts));
        Ok(write_again(value, read, write).await?.map(|_| {
            let lease: Arc<dyn kvstore_core::backend::Lease> = Arc::new(PinLease {
                inner: inner.clone(),
                key: key.to_owned(),
                ttl,
            });
            (lease, sent)
        }))
    }
}

impl Inner {
    /// Writes `value` at `key` under `condition` — on the store's session, or for a
    /// `keep_alive` key on the session of its TTL, which then holds its pin; the heart of `put`
    /// and `atomic_put`.
    pub(crate) async fn write(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        condition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.check_open()?;
        let client = match Mode::of(opts) {
            Mode::KeepAlive(ttl) => self.lock_session(ttl).await?,
            _ => self.client().await?,
        };
        let sent = Instant::now();
        let pair = self.write_on(&client, key, value, condition, opts).await?;
        if let Mode::KeepAlive(ttl) = Mode::of(opts) {
            self.registrations.insert(
                &pair.key,
                pair.value.clone(),
                ttl,
                Arc::new(PinLease {
                    inner: self.clone(),
                    key: pair.key.clone(),
                    ttl,
                }),
                sent,
                Arc::new(PinRegistrar(self.clone())),
            );
        }
        Ok(pair)
    }
}
