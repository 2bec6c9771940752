//! `kvctl txn`: one atomic transaction read as JSON from stdin.
//!
//! ```json
//! {"conditions": [{"when": "index", "key": "app/a", "last_index": 7},
//!                 {"when": "exists", "key": "app/b"},
//!                 {"when": "missing", "key": "app/c"},
//!                 {"when": "held", "key": "locks/job", "fencing_token": 12}],
//!  "ops": [{"op": "put", "key": "app/a", "value": "text"},
//!          {"op": "put", "key": "app/d", "value_base64": "AAEC"},
//!          {"op": "delete", "key": "app/b"}]}
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;

use crate::cli::{Context, Output};
use crate::exit::Failure;
use crate::kv::read_stdin;
use crate::output::pair_json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnInput {
    #[serde(default)]
    conditions: Vec<ConditionInput>,
    ops: Vec<OpInput>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "when", rename_all = "snake_case", deny_unknown_fields)]
enum ConditionInput {
    Index { key: String, last_index: u64 },
    Exists { key: String },
    Missing { key: String },
    Held { key: String, fencing_token: u64 },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum OpInput {
    Put {
        key: String,
        value: Option<String>,
        value_base64: Option<String>,
    },
    Delete {
        key: String,
    },
}

/// The transaction that `input` (the JSON above) describes.
fn parse(input: &[u8]) -> Result<kvstore::Txn, Failure> {
    let input: TxnInput = serde_json::from_slice(input)
        .map_err(|e| Failure::Usage(format!("the transaction on stdin: {e}")))?;
    let mut txn = kvstore::Txn::new();
    for condition in input.conditions {
        txn = match condition {
            ConditionInput::Index { key, last_index } => txn.when_index(&key, last_index),
            ConditionInput::Exists { key } => txn.when_exists(&key),
            ConditionInput::Missing { key } => txn.when_missing(&key),
            ConditionInput::Held { key, fencing_token } => txn.when_held(&key, fencing_token),
        };
    }
    for op in input.ops {
        txn = match op {
            OpInput::Put {
                key,
                value: Some(value),
                value_base64: None,
            } => txn.put(&key, value.into_bytes()),
            OpInput::Put {
                key,
                value: None,
                value_base64: Some(encoded),
            } => {
                let value = BASE64.decode(&encoded).map_err(|e| {
                    Failure::Usage(format!("{key}: value_base64 is not base64: {e}"))
                })?;
                txn.put(&key, value)
            }
            OpInput::Put { key, .. } => {
                return Err(Failure::Usage(format!(
                    "{key}: a put needs exactly one of value and value_base64"
                )));
            }
            OpInput::Delete { key } => txn.delete(&key),
        };
    }
    Ok(txn)
}

pub(crate) async fn txn(ctx: &Context) -> Result<(), Failure> {
    let txn = parse(&read_stdin().await?)?;
    let store = ctx.open().await?;
    let result = ctx.bounded(store.txn(&txn)).await;
    let _ = store.close().await;
    for (op, written) in txn.ops.iter().zip(result?) {
        match (op, written, ctx.output) {
            (_, Some(pair), Output::Text) => println!("put {} {}", pair.key, pair.last_index),
            (_, Some(pair), Output::Json) => {
                let mut line = pair_json(&pair);
                line["op"] = json!("put");
                println!("{line}");
            }
            (kvstore::TxnOp::Delete { key }, None, Output::Text) => println!("delete {key}"),
            (kvstore::TxnOp::Delete { key }, None, Output::Json) => {
                println!("{}", json!({ "op": "delete", "key": key }));
            }
            (_, None, _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvstore::{Condition, TxnOp};

    use super::*;

    #[test]
    fn every_condition_and_op_is_read() {
        let txn = parse(
            br#"{"conditions": [{"when": "index", "key": "a", "last_index": 7},
                                {"when": "exists", "key": "b"},
                                {"when": "missing", "key": "c"},
                                {"when": "held", "key": "l", "fencing_token": 3}],
                 "ops": [{"op": "put", "key": "a", "value": "x"},
                         {"op": "put", "key": "d", "value_base64": "AAE="},
                         {"op": "delete", "key": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(txn.conditions.len(), 4);
        assert_eq!(
            txn.conditions[3],
            Condition::Held {
                lock_key: "l".into(),
                fencing_token: 3
            }
        );
        assert_eq!(
            txn.ops[1],
            TxnOp::Put {
                key: "d".into(),
                value: vec![0u8, 1].into()
            }
        );
        assert_eq!(txn.ops[2], TxnOp::Delete { key: "b".into() });
    }

    #[test]
    fn malformed_input_is_a_usage_error() {
        for bad in [
            &br#"{"ops": [{"op": "put", "key": "a"}]}"#[..],
            br#"{"ops": [{"op": "put", "key": "a", "value": "x", "value_base64": "eA=="}]}"#,
            br#"{"ops": [{"op": "rename", "key": "a"}]}"#,
            br#"{"conditions": [{"when": "index", "key": "a"}], "ops": []}"#,
            br#"{"ops": [], "extra": 1}"#,
            b"not json",
        ] {
            assert!(matches!(parse(bad), Err(Failure::Usage(_))), "{bad:?}");
        }
    }
}
