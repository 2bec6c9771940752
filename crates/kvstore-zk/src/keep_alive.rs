//! `keep_alive` keys for the lease engine: the ephemeral pin lease and the registrar that
//! writes a lost registration again on the store's new session.

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
}

impl fmt::Debug for PinLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinLease").field("key", &self.key).finish()
    }
}

#[async_trait]
impl Lease for PinLease {
    async fn renew(&self) -> Result<Renewal> {
        let client = self.inner.client().await?;
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
        let client = inner.client().await?;
        let sent = Instant::now();
        let opts = WriteOptions::default().with_ttl(ttl).with_keep_alive(true);
        let read = || inner.read_key(&client, key, true);
        let write = |condition| inner.write_on(&client, key, value, condition, Some(&opts));
        Ok(write_again(value, read, write).await?.map(|_| {
            let lease: Arc<dyn kvstore_core::backend::Lease> = Arc::new(PinLease {
                inner: inner.clone(),
                key: key.to_owned(),
            });
            (lease, sent)
        }))
    }
}

impl Inner {
    /// Writes `value` at `key` under `condition` on the store's session; the heart of `put`
    /// and `atomic_put`.
    pub(crate) async fn write(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        condition: Precondition,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        self.check_open()?;
        let client = self.client().await?;
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
                }),
                sent,
                Arc::new(PinRegistrar(self.clone())),
            );
        }
        Ok(pair)
    }
}
