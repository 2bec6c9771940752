//! The limits every backend checks the same way: TTLs (at most [`MAX_TTL`](crate::MAX_TTL),
//! in whole milliseconds) and value sizes.

use crate::{Error, Result};

/// Milliseconds for a TTL that lives at least `ttl`: rounded up, at least 1 (never expire a
/// key early; a sub-millisecond TTL is not 0, which some servers read as "no expiry").
pub fn ttl_millis(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Checks a TTL against [`MAX_TTL`](crate::MAX_TTL), the same on every backend.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the maximum when `ttl` is longer.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::backend::check_ttl;
///
/// assert!(check_ttl("redis", Duration::from_secs(30)).is_ok());
/// assert!(check_ttl("redis", Duration::MAX).is_err());
/// ```
pub fn check_ttl(backend: &'static str, ttl: std::time::Duration) -> Result<()> {
    if ttl > crate::MAX_TTL {
        return Err(Error::invalid_config(
            backend,
            format!(
                "a TTL of {ttl:?} is longer than the maximum, MAX_TTL ({:?})",
                crate::MAX_TTL
            ),
        ));
    }
    Ok(())
}

/// The TTL of a write's options, checked with [`check_ttl`].
///
/// # Errors
///
/// [`Error::InvalidConfig`] when the TTL is longer than [`MAX_TTL`](crate::MAX_TTL).
pub fn write_ttl(
    backend: &'static str,
    opts: Option<&crate::WriteOptions>,
) -> Result<Option<std::time::Duration>> {
    let ttl = opts.and_then(|o| o.ttl);
    if let Some(ttl) = ttl {
        check_ttl(backend, ttl)?;
    }
    Ok(ttl)
}

/// Checks a value against a backend's limit.
///
/// # Errors
///
/// [`Error::ValueTooLarge`] when `value` is longer than `limit` bytes.
///
/// # Examples
///
/// ```
/// use kvstore_core::Error;
/// use kvstore_core::backend::check_value_size;
///
/// assert!(check_value_size("k", b"abc", 3).is_ok());
/// assert!(matches!(check_value_size("k", b"abcd", 3), Err(Error::ValueTooLarge { size: 4, limit: 3, .. })));
/// ```
pub fn check_value_size(key: &str, value: &[u8], limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(Error::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit,
        });
    }
    Ok(())
}
