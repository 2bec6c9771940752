//! Typed configuration for the redb and in-memory stores, and their URL form.

use derive_setters::Setters;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use kvstore_core::backend::{duration_option, size_option};
use kvstore_core::{Error, Result};
use url::Url;

use crate::{MEMORY_SCHEME, SCHEME};

/// Default time [`RedbStore::open`](crate::RedbStore::open) keeps retrying a file that another
/// process holds: 5 seconds.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Default largest value accepted: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// Default most memory redb's page cache may use: 1 GiB, redb's own default
/// (`redb::Builder::new`). The cache holds pages of the file as they are read and written, so it
/// never grows past the file's size; set [`RedbConfig::cache_size`] lower to bound a large file's
/// memory.
pub const DEFAULT_CACHE_SIZE: usize = 1024 * 1024 * 1024;

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A redb file, created if missing.
    File(PathBuf),
    /// redb's in-memory backend: gone when the last handle is dropped.
    Memory,
}

/// Configuration of a [`RedbStore`](crate::RedbStore).
///
/// # URL form
///
/// | URL | meaning |
/// | --- | --- |
/// | `redb:///abs/path.redb` | file at an absolute path |
/// | `redb:relative/path.redb` | file relative to the working directory |
/// | `memory://` | in-memory store |
///
/// | query option | meaning | default |
/// | --- | --- | --- |
/// | `timeout` | how long to retry a file held by another process (`500ms`, `5s`) | 5 s |
/// | `max_value_size` | largest value in bytes | 16 MiB |
/// | `cache_size` | most memory redb's page cache uses, in bytes | 1 GiB |
///
/// # Examples
///
/// ```
/// use kvstore_redb::{Location, RedbConfig};
///
/// let config = "redb:data/app.redb?timeout=1s".parse::<RedbConfig>()?;
/// assert_eq!(config.location, Location::File("data/app.redb".into()));
/// assert_eq!(config.open_timeout, std::time::Duration::from_secs(1));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
#[derive(Debug, Clone, Setters)]
#[non_exhaustive]
#[setters(generate = false, prefix = "with_")]
pub struct RedbConfig {
    /// Where the data lives.
    pub location: Location,
    /// How long `open` retries a file that another process holds before failing; default
    /// [`DEFAULT_OPEN_TIMEOUT`].
    #[setters(generate)]
    pub open_timeout: Duration,
    /// Largest value accepted, in bytes; default [`DEFAULT_MAX_VALUE_SIZE`].
    #[setters(generate)]
    pub max_value_size: usize,
    /// Most memory redb's page cache (read cache and write buffer together) uses, in bytes;
    /// default [`DEFAULT_CACHE_SIZE`]. A smaller cache trades reads from the file (the OS page
    /// cache) for memory; `0` caches nothing. Applies to in-memory stores too, which cache
    /// pages of their in-memory file the same way.
    #[setters(generate)]
    pub cache_size: usize,
}

impl RedbConfig {
    /// A file store at `path` with default settings.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        RedbConfig {
            location: Location::File(path.into()),
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }

    /// An in-memory store with default settings.
    pub fn memory() -> Self {
        RedbConfig {
            location: Location::Memory,
            ..RedbConfig::file("")
        }
    }
}

impl FromStr for RedbConfig {
    type Err = Error;

    /// Parses a `redb:` or `memory:` URL (see the table above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for another scheme, an empty path, a host in a `redb:` URL, an
    /// unknown query option or an unparsable value.
    fn from_str(url: &str) -> Result<Self> {
        let invalid = |msg: String| Error::invalid_config(SCHEME, msg);
        let url = Url::parse(url).map_err(|e| invalid(format!("{url:?}: {e}")))?;
        let url = &url;
        let mut config = match url.scheme() {
            SCHEME => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(invalid(format!(
                        "{url}: a redb URL has no host; use redb:///abs/path or redb:rel/path"
                    )));
                }
                let path = percent_encoding::percent_decode_str(url.path())
                    .decode_utf8()
                    .map_err(|e| invalid(format!("{url}: path is not UTF-8: {e}")))?;
                if path.is_empty() || path == "/" {
                    return Err(invalid(format!("{url}: no file path")));
                }
                RedbConfig::file(path.as_ref())
            }
            MEMORY_SCHEME => RedbConfig::memory(),
            other => return Err(invalid(format!("scheme {other:?} is not redb or memory"))),
        };
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "timeout" => config.open_timeout = duration_option(SCHEME, &name, &value)?,
                "max_value_size" => config.max_value_size = size_option(SCHEME, &name, &value)?,
                "cache_size" => config.cache_size = size_option(SCHEME, &name, &value)?,
                _ => return Err(invalid(format!("unknown option {name:?}"))),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedbConfig> {
        RedbConfig::from_str(url)
    }

    #[test]
    fn parses_absolute_relative_and_memory_urls() {
        assert_eq!(
            parse("redb:///tmp/a.redb").unwrap().location,
            Location::File("/tmp/a.redb".into())
        );
        assert_eq!(
            parse("redb:rel/a%20b.redb").unwrap().location,
            Location::File("rel/a b.redb".into())
        );
        assert_eq!(parse("memory://").unwrap().location, Location::Memory);
        let c = parse("redb:x.redb?timeout=250ms&max_value_size=10&cache_size=4096").unwrap();
        assert_eq!(
            (c.open_timeout, c.max_value_size, c.cache_size),
            (Duration::from_millis(250), 10, 4096)
        );
        assert_eq!(parse("memory://").unwrap().cache_size, DEFAULT_CACHE_SIZE);
    }

    #[test]
    fn rejects_bad_urls_with_invalid_config() {
        kvstore_testutils::assert_invalid_urls::<RedbConfig>(&[
            "redb://host/x.redb",
            "redb:///",
            "redb:x?bogus=1",
            "redb:x?timeout=soon",
            "redb:x?cache_size=-1",
            "redb:x?cache_size=1GiB",
            "etcd://h:1",
        ]);
    }
}
