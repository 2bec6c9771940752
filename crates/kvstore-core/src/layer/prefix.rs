//! The prefix (namespace) layer.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use super::Layer;
use crate::{
    Capabilities, Condition, Error, EventStream, KvPair, LockLost, LockOptions, Locker,
    ReadOptions, Result, Store, Txn, TxnOp, WatchEvent, WatchOptions, WatchStream, WatchTreeStream,
    WriteOptions, normalize_dir, normalize_key,
};

/// Puts every key of the wrapped store under a directory: through the layer, key `a/b` is
/// `<prefix>/a/b` on the server, and results, watch items and errors name `a/b` again. Two
/// stores with different prefixes on one server do not see each other's keys; `list("")`,
/// `watch_tree("")` and `delete_tree("")` cover the prefix's directory only. Locks and
/// `when_held` conditions are prefixed too, so a lock taken through the layer is the same lock
/// for every client using the same prefix.
///
/// Works on every backend, redb and memory included (the network backends also take a
/// `prefix` URL option, which does the same on the server side). Keys are checked against the
/// key grammar before the prefix is added, so a bad key is `InvalidKey` naming the caller's
/// key; the longest key through the layer is [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) minus the
/// prefix and one `/`.
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
/// use kvstore_core::layer::{PrefixLayer, StoreExt};
///
/// let tenant = store.clone().layer(PrefixLayer::new("tenants/acme")?);
/// tenant.put("config/a", b"1", None).await?;
/// assert_eq!(tenant.get("config/a", None).await?.key, "config/a");
/// assert!(store.exists("tenants/acme/config/a", None).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PrefixLayer {
    prefix: Arc<str>,
}

impl PrefixLayer {
    /// A layer that puts every key under `prefix` (normalized like a directory: `"/a/b/"` is
    /// `a/b`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when `prefix` is empty or not a valid directory of the key
    /// grammar (empty or `.` segments, reserved names, characters a backend cannot store).
    pub fn new(prefix: &str) -> Result<Self> {
        let normalized = normalize_dir(prefix)?;
        if normalized.is_empty() {
            return Err(Error::InvalidKey {
                key: prefix.to_owned(),
                reason: "a prefix must name a directory, not the whole keyspace",
            });
        }
        Ok(PrefixLayer {
            prefix: normalized.into(),
        })
    }
}

impl Layer for PrefixLayer {
    fn layer(&self, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Prefixed {
            inner,
            names: Names {
                prefix: Arc::clone(&self.prefix),
            },
        })
    }
}

/// Maps the caller's names onto the server's and back.
#[derive(Debug, Clone)]
struct Names {
    prefix: Arc<str>,
}

impl Names {
    fn key(&self, key: &str) -> Result<String> {
        Ok(format!("{}/{}", self.prefix, normalize_key(key)?))
    }

    fn dir(&self, dir: &str) -> Result<String> {
        let dir = normalize_dir(dir)?;
        Ok(if dir.is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}/{dir}", self.prefix)
        })
    }

    /// The caller's name for a server name under the prefix (the prefix itself is `""`).
    fn strip(&self, name: String) -> String {
        match name.strip_prefix(&*self.prefix) {
            Some("") => String::new(),
            Some(rest) => match rest.strip_prefix('/') {
                Some(rest) => rest.to_owned(),
                None => name,
            },
            None => name,
        }
    }

    fn pair(&self, mut pair: KvPair) -> KvPair {
        pair.key = self.strip(pair.key);
        pair
    }

    fn error(&self, err: Error) -> Error {
        match err {
            Error::KeyNotFound { key } => Error::KeyNotFound {
                key: self.strip(key),
            },
            Error::KeyExists { key } => Error::KeyExists {
                key: self.strip(key),
            },
            Error::KeyModified { key } => Error::KeyModified {
                key: self.strip(key),
            },
            Error::InvalidKey { key, reason } => Error::InvalidKey {
                key: self.strip(key),
                reason,
            },
            Error::ValueTooLarge { key, size, limit } => Error::ValueTooLarge {
                key: self.strip(key),
                size,
                limit,
            },
            Error::LockNotHeld { lock_key } => Error::LockNotHeld {
                lock_key: self.strip(lock_key),
            },
            Error::CannotLock { key, source } => Error::CannotLock {
                key: self.strip(key),
                source,
            },
            other => other,
        }
    }

    fn previous(&self, previous: &KvPair) -> Result<KvPair> {
        let mut mapped = previous.clone();
        mapped.key = self.key(&previous.key)?;
        Ok(mapped)
    }

    fn txn(&self, txn: &Txn) -> Result<Txn> {
        let mut mapped = Txn::new();
        for condition in &txn.conditions {
            mapped = match condition {
                Condition::IndexIs { key, last_index } => {
                    mapped.when_index(&self.key(key)?, *last_index)
                }
                Condition::Exists { key } => mapped.when_exists(&self.key(key)?),
                Condition::Missing { key } => mapped.when_missing(&self.key(key)?),
                Condition::Held {
                    lock_key,
                    fencing_token,
                } => mapped.when_held(&self.key(lock_key)?, *fencing_token),
            };
        }
        for op in &txn.ops {
            mapped = match op {
                TxnOp::Put { key, value } => mapped.put(&self.key(key)?, value.clone()),
                TxnOp::Delete { key } => mapped.delete(&self.key(key)?),
            };
        }
        Ok(mapped)
    }
}

struct Prefixed {
    inner: Arc<dyn Store>,
    names: Names,
}

impl fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix", &self.names.prefix)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Store for Prefixed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &str, value: &[u8], opts: Option<&WriteOptions>) -> Result<KvPair> {
        let n = &self.names;
        let pair = self.inner.put(&n.key(key)?, value, opts).await;
        pair.map(|p| n.pair(p)).map_err(|e| n.error(e))
    }

    async fn get(&self, key: &str, opts: Option<&ReadOptions>) -> Result<KvPair> {
        let n = &self.names;
        let pair = self.inner.get(&n.key(key)?, opts).await;
        pair.map(|p| n.pair(p)).map_err(|e| n.error(e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let n = &self.names;
        self.inner
            .delete(&n.key(key)?)
            .await
            .map_err(|e| n.error(e))
    }

    async fn exists(&self, key: &str, opts: Option<&ReadOptions>) -> Result<bool> {
        let n = &self.names;
        let exists = self.inner.exists(&n.key(key)?, opts).await;
        exists.map_err(|e| n.error(e))
    }

    async fn list(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<Vec<KvPair>> {
        let n = &self.names;
        let root = normalize_dir(dir)?.is_empty();
        match self.inner.list(&n.dir(dir)?, opts).await {
            Ok(pairs) => Ok(pairs.into_iter().map(|p| n.pair(p)).collect()),
            // The whole keyspace is never missing: an empty one lists as empty.
            Err(Error::KeyNotFound { .. }) if root => Ok(Vec::new()),
            Err(err) => Err(n.error(err)),
        }
    }

    async fn delete_tree(&self, dir: &str) -> Result<()> {
        let n = &self.names;
        let tree = self.inner.delete_tree(&n.dir(dir)?).await;
        tree.map_err(|e| n.error(e))
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        opts: Option<&WriteOptions>,
    ) -> Result<KvPair> {
        let n = &self.names;
        let previous = previous.map(|p| n.previous(p)).transpose()?;
        let pair = (self.inner)
            .atomic_put(&n.key(key)?, value, previous.as_ref(), opts)
            .await;
        pair.map(|p| n.pair(p)).map_err(|e| n.error(e))
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let n = &self.names;
        let previous = n.previous(previous)?;
        let deleted = self.inner.atomic_delete(&n.key(key)?, &previous).await;
        deleted.map_err(|e| n.error(e))
    }

    async fn watch(&self, key: &str, opts: Option<&ReadOptions>) -> Result<WatchStream> {
        let n = self.names.clone();
        let stream = self.inner.watch(&n.key(key)?, opts).await;
        let stream = stream.map_err(|e| n.error(e))?;
        Ok(stream
            .map(move |item| match item {
                Ok(pair) => Ok(pair.map(|p| n.pair(p))),
                Err(err) => Err(n.error(err)),
            })
            .boxed())
    }

    async fn watch_tree(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<WatchTreeStream> {
        let n = self.names.clone();
        let stream = self.inner.watch_tree(&n.dir(dir)?, opts).await;
        let stream = stream.map_err(|e| n.error(e))?;
        Ok(stream
            .map(move |item| match item {
                Ok(pairs) => Ok(pairs.into_iter().map(|p| n.pair(p)).collect()),
                Err(err) => Err(n.error(err)),
            })
            .boxed())
    }

    async fn list_at(&self, dir: &str, opts: Option<&ReadOptions>) -> Result<(Vec<KvPair>, u64)> {
        let n = &self.names;
        let listed = self.inner.list_at(&n.dir(dir)?, opts).await;
        let (pairs, revision) = listed.map_err(|e| n.error(e))?;
        Ok((pairs.into_iter().map(|p| n.pair(p)).collect(), revision))
    }

    async fn watch_events(&self, dir: &str, opts: Option<&WatchOptions>) -> Result<EventStream> {
        let n = self.names.clone();
        let stream = self.inner.watch_events(&n.dir(dir)?, opts).await;
        let stream = stream.map_err(|e| n.error(e))?;
        Ok(stream
            .map(move |item| match item {
                Ok(WatchEvent::Snapshot { pairs, revision }) => Ok(WatchEvent::Snapshot {
                    pairs: pairs.into_iter().map(|p| n.pair(p)).collect(),
                    revision,
                }),
                Ok(WatchEvent::Changes {
                    mut events,
                    revision,
                }) => {
                    for event in &mut events {
                        event.key = n.strip(std::mem::take(&mut event.key));
                    }
                    Ok(WatchEvent::Changes { events, revision })
                }
                Err(err) => Err(n.error(err)),
            })
            .boxed())
    }

    async fn new_lock(&self, key: &str, opts: Option<&LockOptions>) -> Result<Box<dyn Locker>> {
        let n = &self.names;
        let locker = self.inner.new_lock(&n.key(key)?, opts).await;
        let inner = locker.map_err(|e| n.error(e))?;
        Ok(Box::new(PrefixedLocker {
            inner,
            names: n.clone(),
        }))
    }

    async fn txn(&self, txn: &Txn) -> Result<Vec<Option<KvPair>>> {
        let n = &self.names;
        let results = self.inner.txn(&n.txn(txn)?).await.map_err(|e| n.error(e))?;
        Ok(results
            .into_iter()
            .map(|pair| pair.map(|p| n.pair(p)))
            .collect())
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A lock through the prefix layer: errors name the caller's key.
#[derive(Debug)]
struct PrefixedLocker {
    inner: Box<dyn Locker>,
    names: Names,
}

#[async_trait]
impl Locker for PrefixedLocker {
    async fn lock(&mut self) -> Result<LockLost> {
        self.inner.lock().await.map_err(|e| self.names.error(e))
    }

    async fn unlock(&mut self) -> Result<()> {
        self.inner.unlock().await.map_err(|e| self.names.error(e))
    }

    fn fencing_token(&self) -> Option<u64> {
        self.inner.fencing_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let n = Names {
            prefix: "app/one".into(),
        };
        assert_eq!(n.key("/a/b/").unwrap(), "app/one/a/b");
        assert_eq!(n.dir("").unwrap(), "app/one");
        assert_eq!(n.dir("a").unwrap(), "app/one/a");
        assert_eq!(n.strip("app/one/a/b".into()), "a/b");
        assert_eq!(n.strip("app/one".into()), "");
        // A sibling that merely shares the string prefix is not under it.
        assert_eq!(n.strip("app/onex/a".into()), "app/onex/a");
        assert!(matches!(n.key(""), Err(Error::InvalidKey { .. })));
        assert!(matches!(n.key("a//b"), Err(Error::InvalidKey { key, .. }) if key == "a//b"));
    }

    #[test]
    fn a_prefix_must_be_a_directory() {
        assert!(matches!(
            PrefixLayer::new("/"),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            PrefixLayer::new("a/../b"),
            Err(Error::InvalidKey { .. })
        ));
        assert_eq!(&*PrefixLayer::new("/a/b/").unwrap().prefix, "a/b");
    }

    #[test]
    fn errors_name_the_callers_key() {
        let n = Names { prefix: "p".into() };
        let err = n.error(Error::not_found("p/a"));
        assert!(matches!(err, Error::KeyNotFound { key } if key == "a"));
        let err = n.error(Error::LockNotHeld {
            lock_key: "p/l".into(),
        });
        assert!(matches!(err, Error::LockNotHeld { lock_key } if lock_key == "l"));
    }
}
