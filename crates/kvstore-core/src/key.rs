//! The key grammar: the single definition of which keys are valid and how they are normalized.

use crate::{Error, Result};

/// The longest normalized key accepted, in bytes of UTF-8.
///
/// Chosen so that a key plus a backend's own prefix fits every backend's path limits with room
/// to spare (ZooKeeper paths and Consul URLs are the tightest).
pub const MAX_KEY_LEN: usize = 1024;

/// The start of a reserved key segment: kvstore's bookkeeping (lock waiters and holders,
/// hidden markers that keep a ZooKeeper parent alive) lives under segments that begin with
/// `.kvstore` on backends whose keyspace has no name a user key cannot take (ZooKeeper,
/// Consul). A key or directory with such a segment is [`Error::InvalidKey`] on every backend,
/// so no call can read, overwrite, delete or list bookkeeping, and no lock can be freed by
/// deleting a key.
pub const RESERVED_SEGMENT_PREFIX: &str = ".kvstore";

/// Normalizes and validates a key; the single definition of kvstore's key grammar.
///
/// A key is `/`-separated UTF-8 segments. Leading and trailing `/` are ignored, so `"/a/b/"`
/// normalizes to `"a/b"`. The returned slice borrows from `key`.
///
/// # Errors
///
/// [`Error::InvalidKey`], before any I/O, when the key
/// - is empty (or only `/`),
/// - has an empty segment (`a//b`),
/// - has a `.` or `..` segment,
/// - contains a control character (U+0000–U+001F, U+007F–U+009F), or a private-use
///   (U+E000–U+F8FF) or special (U+FFF0–U+FFFF) character, or any character outside the Basic
///   Multilingual Plane (above U+FFFF, such as emoji). ZooKeeper refuses all of these in paths
///   (Java strings are UTF-16, and `PathUtils.validatePath` rejects surrogates and these ranges),
///   so kvstore rejects them on every backend and a key portable to one backend is portable to all,
/// - is longer than [`MAX_KEY_LEN`] bytes once normalized,
/// - has a segment that starts with [`RESERVED_SEGMENT_PREFIX`] (`.kvstore-locks`,
///   `a/.kvstore-pin`): those names are kvstore's own bookkeeping on some backends, so they are
///   reserved on all of them.
///
/// # Examples
///
/// ```
/// use kvstore_core::{normalize_key, Error};
///
/// assert_eq!(normalize_key("/app/config/")?, "app/config");
/// assert!(matches!(normalize_key("app//config"), Err(Error::InvalidKey { .. })));
/// assert!(matches!(normalize_key("/"), Err(Error::InvalidKey { .. })));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn normalize_key(key: &str) -> Result<&str> {
    normalize(key, false)
}

/// Normalizes and validates a directory: the same grammar as [`normalize_key`], except that
/// the empty directory (`""` or `"/"`) is allowed and means the whole keyspace.
///
/// # Errors
///
/// [`Error::InvalidKey`] for every rule of [`normalize_key`] but emptiness.
///
/// # Examples
///
/// ```
/// use kvstore_core::normalize_dir;
///
/// assert_eq!(normalize_dir("/")?, "");
/// assert_eq!(normalize_dir("services/")?, "services");
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn normalize_dir(dir: &str) -> Result<&str> {
    normalize(dir, true)
}

/// Whether `key` lies strictly below `dir` (both normalized): `"a/b"` is below `"a"`, but
/// `"ab/x"` and `"a"` itself are not. Every key is below the empty directory.
///
/// # Examples
///
/// ```
/// use kvstore_core::is_descendant;
///
/// assert!(is_descendant("a/b/c", "a"));
/// assert!(!is_descendant("ab/x", "a"));
/// assert!(!is_descendant("a", "a"));
/// assert!(is_descendant("a", ""));
/// ```
pub fn is_descendant(key: &str, dir: &str) -> bool {
    if dir.is_empty() {
        return !key.is_empty();
    }
    key.len() > dir.len() + 1 && key.starts_with(dir) && key.as_bytes()[dir.len()] == b'/'
}

fn normalize(raw: &str, allow_empty: bool) -> Result<&str> {
    let invalid = |reason| {
        Err(Error::InvalidKey {
            key: raw.to_owned(),
            reason,
        })
    };
    let key = raw.trim_matches('/');
    if key.is_empty() {
        return if allow_empty {
            Ok(key)
        } else {
            invalid("key is empty")
        };
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("key is longer than MAX_KEY_LEN (1024) bytes");
    }
    if let Some(c) = key.chars().find(|&c| !is_allowed_char(c)) {
        return if c.is_control() {
            invalid("key contains a control character")
        } else if u32::from(c) > 0xFFFF {
            invalid(
                "key contains a character outside the Basic Multilingual Plane (such as an emoji), \
                 which ZooKeeper cannot store in a path",
            )
        } else {
            invalid("key contains a private-use or special character")
        };
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("key has an empty segment"),
            "." | ".." => return invalid("key has a `.` or `..` segment"),
            _ if segment.starts_with(RESERVED_SEGMENT_PREFIX) => {
                return invalid(
                    "key has a segment starting with `.kvstore`, a name reserved for kvstore's \
                     bookkeeping (lock waiters, hidden markers)",
                );
            }
            _ => {}
        }
    }
    Ok(key)
}

fn is_allowed_char(c: char) -> bool {
    !(c.is_control()
        || u32::from(c) > 0xFFFF
        || ('\u{E000}'..='\u{F8FF}').contains(&c)
        || ('\u{FFF0}'..='\u{FFFF}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> &'static str {
        match normalize_key(key) {
            Err(Error::InvalidKey { reason, .. }) => reason,
            other => panic!("expected InvalidKey for {key:?}, got {other:?}"),
        }
    }

    #[test]
    fn strips_leading_and_trailing_slashes() {
        assert_eq!(normalize_key("a").unwrap(), "a");
        assert_eq!(normalize_key("/a/b/").unwrap(), "a/b");
        assert_eq!(normalize_key("//a/b//").unwrap(), "a/b");
        assert_eq!(normalize_dir("").unwrap(), "");
        assert_eq!(normalize_dir("///").unwrap(), "");
    }

    #[test]
    fn rejects_every_rule_with_its_reason() {
        assert_eq!(reason(""), "key is empty");
        assert_eq!(reason("/"), "key is empty");
        assert_eq!(reason("a//b"), "key has an empty segment");
        assert_eq!(reason("a/./b"), "key has a `.` or `..` segment");
        assert_eq!(reason("../a"), "key has a `.` or `..` segment");
        assert_eq!(reason("a\nb"), "key contains a control character");
        assert_eq!(reason("a\u{0}b"), "key contains a control character");
        assert_eq!(reason("a\u{85}b"), "key contains a control character");
        assert_eq!(
            reason("a\u{E000}"),
            "key contains a private-use or special character"
        );
        assert_eq!(
            reason("a\u{FFFE}"),
            "key contains a private-use or special character"
        );
        for emoji in ["a/\u{1F600}", "\u{10000}", "x\u{10FFFF}"] {
            assert!(
                reason(emoji).contains("outside the Basic Multilingual Plane"),
                "{emoji:?}"
            );
        }
        assert_eq!(
            reason(&"k".repeat(MAX_KEY_LEN + 1)),
            "key is longer than MAX_KEY_LEN (1024) bytes"
        );
        assert!(matches!(
            normalize_dir("a//b"),
            Err(Error::InvalidKey { .. })
        ));
        for reserved in [
            ".kvstore-locks/a",
            ".kvstore",
            "a/.kvstore-pin",
            "a/.kvstorex/b",
        ] {
            assert!(
                reason(reserved).contains("reserved for kvstore's bookkeeping"),
                "{reserved}"
            );
            assert!(
                matches!(normalize_dir(reserved), Err(Error::InvalidKey { .. })),
                "{reserved}"
            );
        }
    }

    #[test]
    fn accepts_unusual_but_valid_keys() {
        let max = "k".repeat(MAX_KEY_LEN);
        assert_eq!(normalize_key(&max).unwrap(), max);
        for key in [
            "a.b",
            "...",
            "a*b?[c]",
            "ünïcödé/键",
            "a b",
            "-_~%",
            "\u{FFEF}",
            ".kvstor",
            "a/x.kvstore",
            "kvstore-locks",
        ] {
            assert_eq!(normalize_key(key).unwrap(), key);
        }
    }

    #[test]
    fn descendants_respect_segment_boundaries() {
        assert!(is_descendant("a/b", "a"));
        assert!(is_descendant("a/b/c", "a/b"));
        assert!(!is_descendant("ab", "a"));
        assert!(!is_descendant("ab/c", "a"));
        assert!(!is_descendant("a", "a"));
        assert!(!is_descendant("a/", "a"));
        assert!(is_descendant("x", ""));
    }
}
