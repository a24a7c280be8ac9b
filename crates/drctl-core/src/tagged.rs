//! Internally tagged enums (`kind: stop`, `type: postgres`) read from a node with precise
//! error positions.
//!
//! serde's derived internally tagged enums buffer the map before choosing the variant, which
//! loses every position inside it. Here the tag is read first, then the variant's struct is
//! deserialized straight from the node, so every error keeps its line and column. Unknown
//! fields are all reported: each one is recorded and removed, and the variant is read again.

use crate::diag::{unknown_message, Pos};
use crate::yaml::{DeError, Node};

/// Errors found while reading one tagged value; all of them, not just the first.
pub type Errs = Vec<DeError>;

pub(crate) fn read_tagged<T>(
    node: &Node,
    tag: &str,
    what: &str,
    kinds: &[&'static str],
    extra_fields: &[&'static str],
    read: impl Fn(&str, &Node) -> Option<Result<T, DeError>>,
) -> Result<T, Errs> {
    if node.as_map().is_none() {
        return Err(vec![DeError::at(
            node.pos,
            format!(
                "expected a {what} (a mapping with `{tag}:`), found {}",
                node.type_name()
            ),
        )]);
    }
    let Some((tag_key, tag_val)) = node.get_entry(tag) else {
        let list: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
        return Err(vec![DeError::at(
            node.pos,
            format!(
                "{what} has no `{tag}`; add `{tag}:` with one of {}",
                list.join(", ")
            ),
        )]);
    };
    let Some(kind) = tag_val.as_str() else {
        return Err(vec![DeError::at(
            tag_val.pos,
            format!("`{tag}` must be a word, found {}", tag_val.type_name()),
        )]);
    };
    let _ = tag_key;
    let mut body = node.without_keys(&[tag]);
    let mut errors = Vec::new();
    // Bounded: each round removes one key.
    for _ in 0..64 {
        match read(kind, &body) {
            None => {
                return Err(vec![DeError::at(
                    tag_val.pos,
                    unknown_message(&format!("{what} {tag}"), kind, kinds),
                )])
            }
            Some(Ok(v)) if errors.is_empty() => return Ok(v),
            Some(Ok(_)) => return Err(errors),
            Some(Err(mut e)) => {
                let top_level = e
                    .unknown
                    .as_ref()
                    .is_some_and(|(f, _)| body.get_entry(f).is_some());
                if let (true, Some((field, expected))) = (top_level, e.unknown.clone()) {
                    let mut candidates: Vec<&str> = expected.clone();
                    candidates.extend_from_slice(extra_fields);
                    e.message = format!(
                        "{} (in this `{kind}` {what})",
                        unknown_message("field", &field, &candidates)
                    );
                    if e.pos.is_none() {
                        e.pos = body.get_entry(&field).map(|(k, _)| k.pos);
                    }
                    errors.push(e);
                    body = body.without_keys(&[&field]);
                    continue;
                }
                if e.pos.is_none() || e.pos == Some(body.pos) {
                    // Errors about the whole mapping (a missing field) say whose it is.
                    e.message = format!("{} (in this `{kind}` {what})", e.message);
                }
                errors.push(e);
                return Err(errors);
            }
        }
    }
    Err(errors)
}

/// Position of an error, defaulting to the node it was read from.
pub(crate) fn pos_or(e: &DeError, node: &Node) -> Pos {
    e.pos.unwrap_or(node.pos)
}
