//! How kvstore reads the znodes it writes: which znodes are keys, and what kind each one is.
//!
//! A znode is *hidden* — a parent created for its children, a deleted key that still has
//! children, a pin or a lock waiter — exactly when its data is [`MARKER`]. Every other znode
//! under the store's root is a key whose value is its data, byte for byte, except for the
//! (practically nonexistent) values that start with the marker: those are stored as
//! `MARKER ++ value` so they never read back as hidden.

use std::borrow::Cow;

use zookeeper_client::Stat;

/// Data of every hidden znode. No valid key can name a znode whose data says otherwise, so
/// listings and watches skip these.
pub(crate) const MARKER: &[u8; 16] = b"\0\0kvstore\0hidden";

/// Name of the child that pins a key's znode: a persistent pin keeps a container or TTL znode
/// from being reaped by the server, an ephemeral pin keeps a `keep_alive` key alive while its
/// session lives. Its data is [`MARKER`].
pub(crate) const PIN: &str = ".kvstore-pin";

/// Name, under the store's root, of the tree of lock waiters (all hidden).
pub(crate) const LOCKS: &str = ".kvstore-locks";

/// The data to store for a user value.
pub(crate) fn encode(value: &[u8]) -> Cow<'_, [u8]> {
    if value.starts_with(MARKER) {
        Cow::Owned([&MARKER[..], value].concat())
    } else {
        Cow::Borrowed(value)
    }
}

/// The user value stored in `data`, or `None` for a hidden znode.
pub(crate) fn decode(data: &[u8]) -> Option<&[u8]> {
    if data == MARKER {
        None
    } else if data.starts_with(MARKER) {
        Some(&data[MARKER.len()..])
    } else {
        Some(data)
    }
}

/// The creation mode of a znode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Persistent,
    Container,
    Ttl,
    Ephemeral,
}

/// ACL version (`aversion`) kvstore gives the container znodes it creates.
pub(crate) const CONTAINER_ACL_VERSION: i32 = 1;
/// ACL version kvstore gives the TTL znodes it creates.
pub(crate) const TTL_ACL_VERSION: i32 = 2;

/// The creation mode of a znode kvstore wrote.
///
/// ZooKeeper does not tell clients whether a znode is a container or a TTL node: its `Stat`
/// shows `ephemeralOwner = 0` for both, like a plain persistent znode (source: ZooKeeper
/// `DataTree.copyStat` / `EphemeralType`, checked against 3.8). So kvstore marks the ones it
/// creates by setting their (unchanged) ACL once or twice right after creating them, which
/// bumps the ACL version `aversion` — a field no data write changes — to
/// [`CONTAINER_ACL_VERSION`] or [`TTL_ACL_VERSION`]. Any other non-zero `ephemeralOwner` is
/// the owning session of an ephemeral znode.
pub(crate) fn kind(stat: &Stat) -> Kind {
    if stat.ephemeral_owner != 0 {
        Kind::Ephemeral
    } else {
        match stat.aversion {
            0 => Kind::Persistent,
            CONTAINER_ACL_VERSION => Kind::Container,
            _ => Kind::Ttl,
        }
    }
}

/// `last_index` of a znode: its `mzxid`, the transaction id of its last write — non-zero,
/// different after every write, and never reused by a re-created znode.
pub(crate) fn index(stat: &Stat) -> u64 {
    u64::try_from(stat.mzxid).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_only_the_marker_is_hidden() {
        for value in [
            &b""[..],
            b"plain",
            &MARKER[..],
            &[&MARKER[..], b"x"].concat(),
            &MARKER[..15],
        ] {
            assert_eq!(decode(&encode(value)), Some(value), "{value:?}");
        }
        assert_eq!(decode(MARKER), None);
        assert!(matches!(encode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn kinds_from_ephemeral_owner_and_acl_version() {
        let stat = |owner: i64, aversion: i32| Stat {
            czxid: 1,
            mzxid: 1,
            pzxid: 1,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion: 0,
            aversion,
            ephemeral_owner: owner,
            data_length: 0,
            num_children: 0,
        };
        assert_eq!(kind(&stat(0, 0)), Kind::Persistent);
        assert_eq!(kind(&stat(0, CONTAINER_ACL_VERSION)), Kind::Container);
        assert_eq!(kind(&stat(0, TTL_ACL_VERSION)), Kind::Ttl);
        assert_eq!(kind(&stat(0x0100_0001_2345_0001, 0)), Kind::Ephemeral);
    }
}
