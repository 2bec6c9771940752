//! Transaction helpers every backend uses the same way: the checks before any I/O, and the
//! error a failed condition gives.

use std::collections::HashSet;

use bytes::Bytes;

use super::limits::check_value_size;
use super::registration::Registrations;
use crate::{Condition, Error, KvPair, Result, Txn, TxnOp, normalize_key};

/// A condition of a checked transaction: [`Condition`] with a normalized key, as a closed enum
/// that backends match exhaustively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `Condition::IndexIs`.
    IndexIs {
        /// The normalized key.
        key: String,
        /// The expected `last_index`.
        last_index: u64,
    },
    /// `Condition::Exists`.
    Exists {
        /// The normalized key.
        key: String,
    },
    /// `Condition::Missing`.
    Missing {
        /// The normalized key.
        key: String,
    },
    /// `Condition::Held`.
    Held {
        /// The normalized key of the lock.
        lock_key: String,
        /// The fencing token.
        fencing_token: u64,
    },
}

impl Check {
    /// The key this check reads (the lock's key for `Held`).
    pub fn key(&self) -> &str {
        match self {
            Check::IndexIs { key, .. } | Check::Exists { key } | Check::Missing { key } => key,
            Check::Held { lock_key, .. } => lock_key,
        }
    }
}

/// An operation of a checked transaction: [`TxnOp`] with a normalized key, as a closed enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `TxnOp::Put`.
    Put {
        /// The normalized key.
        key: String,
        /// The value (within the backend's size limit).
        value: Bytes,
    },
    /// `TxnOp::Delete`.
    Delete {
        /// The normalized key.
        key: String,
    },
}

impl Write {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
        }
    }
}

/// A transaction that passed [`check_txn`]: every key normalized, each written key once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedTxn {
    /// The conditions, in order.
    pub checks: Vec<Check>,
    /// The operations, in order.
    pub writes: Vec<Write>,
}

impl CheckedTxn {
    /// What `Store::txn` returns once the transaction is applied with every put at `index`:
    /// `Some(pair)` per put, `None` per delete, in order.
    pub fn written(&self, index: u64) -> Vec<Option<KvPair>> {
        self.writes
            .iter()
            .map(|write| match write {
                Write::Put { key, value } => Some(KvPair::new(key.as_str(), value.clone(), index)),
                Write::Delete { .. } => None,
            })
            .collect()
    }
}

/// Checks `txn` before any I/O and returns it with every key normalized.
///
/// # Errors
///
/// `InvalidKey`; `InvalidTxn` for no operation, a key in two operations, or more conditions
/// plus operations than `max_ops`; `ValueTooLarge` for a value over `max_value_size`.
pub fn check_txn(txn: &Txn, max_ops: usize, max_value_size: usize) -> Result<CheckedTxn> {
    if txn.ops.is_empty() {
        return Err(Error::InvalidTxn {
            reason: "a transaction needs at least one operation".into(),
        });
    }
    let count = txn.conditions.len() + txn.ops.len();
    if count > max_ops {
        return Err(Error::InvalidTxn {
            reason: format!(
                "{count} conditions and operations, more than this backend's {max_ops}"
            ),
        });
    }
    let mut checks = Vec::with_capacity(txn.conditions.len());
    for condition in &txn.conditions {
        let key = normalize_key(condition.key())?.to_owned();
        checks.push(match condition {
            Condition::IndexIs { last_index, .. } => Check::IndexIs {
                key,
                last_index: *last_index,
            },
            Condition::Exists { .. } => Check::Exists { key },
            Condition::Missing { .. } => Check::Missing { key },
            Condition::Held { fencing_token, .. } => Check::Held {
                lock_key: key,
                fencing_token: *fencing_token,
            },
        });
    }
    let mut seen = HashSet::with_capacity(txn.ops.len());
    let mut writes = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        let key = normalize_key(op.key())?.to_owned();
        if !seen.insert(key.clone()) {
            return Err(Error::InvalidTxn {
                reason: format!("key {key} appears in two operations"),
            });
        }
        writes.push(match op {
            TxnOp::Put { value, .. } => {
                check_value_size(&key, value, max_value_size)?;
                Write::Put {
                    key,
                    value: value.clone(),
                }
            }
            TxnOp::Delete { .. } => Write::Delete { key },
        });
    }
    Ok(CheckedTxn { checks, writes })
}

/// The body of a backend's `Store::txn`: checks `txn` before any I/O ([`check_txn`]), runs it
/// with `run`, then ends the `keep_alive` registrations of the keys it wrote (a write without
/// `keep_alive` ends a registration).
///
/// # Errors
///
/// [`check_txn`]'s, then `run`'s.
pub async fn run_txn<F, Fut>(
    txn: &Txn,
    max_ops: usize,
    max_value_size: usize,
    registrations: &Registrations,
    run: F,
) -> Result<Vec<Option<KvPair>>>
where
    F: FnOnce(std::sync::Arc<CheckedTxn>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Option<KvPair>>>>,
{
    let checked = std::sync::Arc::new(check_txn(txn, max_ops, max_value_size)?);
    let written = run(checked.clone()).await?;
    for write in &checked.writes {
        registrations.remove(write.key());
    }
    Ok(written)
}

/// What the server found for one condition: the key's `last_index` (`None`: absent), or
/// whether the lock is held with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The condition's key, absent (`None`) or present with this `last_index`.
    Key(Option<u64>),
    /// Whether the lock is held with the condition's fencing token.
    Held(bool),
}

/// The error `condition` gives when the server found `found`, or `None` when it holds: the
/// single-key twin's error (`KeyModified`, `KeyNotFound`, `KeyExists`) or `LockNotHeld`.
pub fn condition_error(check: &Check, found: Found) -> Option<Error> {
    let key = check.key().to_owned();
    match (check, found) {
        (Check::IndexIs { .. } | Check::Exists { .. }, Found::Key(None)) => {
            Some(Error::KeyNotFound { key })
        }
        (Check::IndexIs { last_index, .. }, Found::Key(Some(have))) if have != *last_index => {
            Some(Error::KeyModified { key })
        }
        (Check::Missing { .. }, Found::Key(Some(_))) => Some(Error::KeyExists { key }),
        (Check::Held { .. }, Found::Held(false)) => Some(Error::LockNotHeld { lock_key: key }),
        _ => None,
    }
}

/// The error of the first condition (in order) that fails given what `find` reports for each;
/// `None` when all hold.
pub fn first_failure(checks: &[Check], mut find: impl FnMut(&Check) -> Found) -> Option<Error> {
    checks
        .iter()
        .find_map(|check| condition_error(check, find(check)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_come_before_io() {
        let too_big = vec![0u8; 11];
        assert!(matches!(
            check_txn(&Txn::new().when_exists("a"), 64, 10),
            Err(Error::InvalidTxn { .. })
        ));
        assert!(matches!(
            check_txn(&Txn::new().put("a", "1").delete("/a/"), 64, 10),
            Err(Error::InvalidTxn { .. })
        ));
        assert!(matches!(
            check_txn(&Txn::new().put("a//b", "1"), 64, 10),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            check_txn(&Txn::new().put("a", too_big), 64, 10),
            Err(Error::ValueTooLarge { .. })
        ));
        assert!(matches!(
            check_txn(&Txn::new().when_missing("x").put("a", "1"), 1, 10),
            Err(Error::InvalidTxn { .. })
        ));
        let ok = check_txn(&Txn::new().when_held("/l/", 3).put("/a/", "1"), 64, 10).unwrap();
        assert_eq!(ok.checks[0].key(), "l");
        assert_eq!(ok.writes[0].key(), "a");
    }

    #[test]
    fn the_first_failing_condition_names_the_error() {
        let conditions = check_txn(
            &Txn::new()
                .when_index("a", 5)
                .when_missing("b")
                .when_held("l", 9)
                .put("x", "1"),
            64,
            10,
        )
        .unwrap()
        .checks;
        let err = first_failure(&conditions, |c| match c.key() {
            "a" => Found::Key(Some(5)),
            "b" => Found::Key(Some(1)),
            _ => Found::Held(false),
        });
        assert!(matches!(err, Some(Error::KeyExists { key }) if key == "b"));
        let err = first_failure(&conditions, |c| match c.key() {
            "a" => Found::Key(Some(6)),
            _ => Found::Held(false),
        });
        assert!(matches!(err, Some(Error::KeyModified { key }) if key == "a"));
        assert!(
            first_failure(&conditions, |c| match c.key() {
                "a" => Found::Key(Some(5)),
                "b" => Found::Key(None),
                _ => Found::Held(true),
            })
            .is_none()
        );
    }
}
