//! The one nesting bound for documents entering the log.
//!
//! Stored values are re-read with serde_json, which refuses input nested
//! deeper than [`READ_DEPTH`] containers. A stored patch wraps a document
//! [`PATCH_OVERHEAD`] levels deeper than the document itself (the first
//! version is `[{"op":"add","path":"","value":DOC}]`; any later op's `value`
//! is a subtree of a document, so no deeper), and a snapshot is the bare
//! document. So every document at most [`MAX_DOC_DEPTH`] deep is storable
//! *and* re-readable; a deeper one must be refused before it is stored, or
//! the log holds a record that can never be read back.

use serde_json::Value;

/// Deepest nesting serde_json (default recursion limit) parses: 127
/// containers (`[[…]]` 127 deep parses, 128 deep does not). Pinned by a test.
pub const READ_DEPTH: usize = 127;

/// Levels a stored patch adds around a document (array of ops, op object).
pub const PATCH_OVERHEAD: usize = 2;

/// Deepest document (in nested arrays/objects; a scalar is 0, `[]` is 1)
/// the log accepts.
pub const MAX_DOC_DEPTH: usize = READ_DEPTH - PATCH_OVERHEAD;

/// A document nested deeper than [`MAX_DOC_DEPTH`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the document is nested deeper than {limit} levels")]
pub struct TooDeep {
    /// The bound, [`MAX_DOC_DEPTH`].
    pub limit: usize,
}

/// Whether `doc` is within [`MAX_DOC_DEPTH`]. Iterative (an explicit stack
/// that never holds more than `MAX_DOC_DEPTH + 1` levels of work per path),
/// so a document built in memory of any depth cannot overflow the stack.
pub fn check_depth(doc: &Value) -> Result<(), TooDeep> {
    // (value, depth of the container holding it, 0 for the root)
    let mut stack: Vec<(&Value, usize)> = vec![(doc, 0)];
    while let Some((v, above)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        let depth = above + 1;
        if depth > MAX_DOC_DEPTH {
            return Err(TooDeep {
                limit: MAX_DOC_DEPTH,
            });
        }
        stack.extend(
            children
                .filter(|c| c.is_array() || c.is_object())
                .map(|c| (c, depth)),
        );
    }
    Ok(())
}
