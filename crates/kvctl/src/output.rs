//! How pairs and events are printed: as text, or as JSON objects.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kvstore::KvPair;
use serde_json::{Value, json};

/// A pair as JSON: `key`, `value` (the UTF-8 text, or null when the bytes are not UTF-8),
/// `value_base64` and `last_index`.
pub(crate) fn pair_json(pair: &KvPair) -> Value {
    json!({
        "key": pair.key,
        "value": std::str::from_utf8(&pair.value).ok(),
        "value_base64": BASE64.encode(&pair.value),
        "last_index": pair.last_index,
    })
}

/// A value as one line of text: UTF-8 as it is (control characters escaped), other bytes
/// escaped.
pub(crate) fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A change seen by a watch: a key written (with its new pair) or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The key has this pair now.
    Put(KvPair),
    /// The key is gone (deleted or expired).
    Delete(String),
}

impl Change {
    pub(crate) fn key(&self) -> &str {
        match self {
            Change::Put(pair) => &pair.key,
            Change::Delete(key) => key,
        }
    }

    /// `put` or `delete`.
    pub(crate) fn event(&self) -> &'static str {
        match self {
            Change::Put(_) => "put",
            Change::Delete(_) => "delete",
        }
    }

    /// One JSON object: the pair's fields and `event`; a delete has `value` null and
    /// `last_index` null.
    pub(crate) fn json(&self) -> Value {
        match self {
            Change::Put(pair) => {
                let mut value = pair_json(pair);
                value["event"] = json!("put");
                value
            }
            Change::Delete(key) => json!({
                "key": key,
                "event": "delete",
                "value": null,
                "value_base64": null,
                "last_index": null,
            }),
        }
    }

    /// One line: `put <key> <last_index> <value>` or `delete <key>`.
    pub(crate) fn line(&self) -> String {
        match self {
            Change::Put(pair) => {
                format!("put {} {} {}", pair.key, pair.last_index, text(&pair.value))
            }
            Change::Delete(key) => format!("delete {key}"),
        }
    }
}

/// The changes from one snapshot of a directory to the next (both sorted by key, as `list`
/// and `watch_tree` return them): writes where the `last_index` changed, deletes for keys
/// that are gone, in key order.
pub(crate) fn diff(before: &[KvPair], after: &[KvPair]) -> Vec<Change> {
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(old), Some(new)) if old.key == new.key => {
                if old.last_index != new.last_index || old.value != new.value {
                    changes.push(Change::Put(new.clone()));
                }
                i += 1;
                j += 1;
            }
            (Some(old), Some(new)) if old.key < new.key => {
                changes.push(Change::Delete(old.key.clone()));
                i += 1;
            }
            (Some(old), None) => {
                changes.push(Change::Delete(old.key.clone()));
                i += 1;
            }
            (_, Some(new)) => {
                changes.push(Change::Put(new.clone()));
                j += 1;
            }
            (None, None) => unreachable!("the loop condition"),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, index: u64) -> KvPair {
        KvPair::new(key, "v", index)
    }

    #[test]
    fn diff_reports_writes_and_deletes_in_key_order() {
        let before = [pair("a", 1), pair("b", 2), pair("c", 3)];
        let after = [pair("a", 1), pair("b", 5), pair("d", 6)];
        assert_eq!(
            diff(&before, &after),
            [
                Change::Put(pair("b", 5)),
                Change::Delete("c".into()),
                Change::Put(pair("d", 6)),
            ]
        );
        assert_eq!(diff(&[], &before).len(), 3);
        assert_eq!(diff(&before, &[]).len(), 3);
    }

    #[test]
    fn json_keeps_binary_values_exact() {
        let binary = KvPair::new("k", vec![0u8, 255, 10], 4);
        let value = pair_json(&binary);
        assert_eq!(value["value"], Value::Null);
        assert_eq!(value["value_base64"], "AP8K");
        assert_eq!(text(b"a\nb"), "a\\nb");
    }
}
