//! JSON diff and patch: `diff(prev, next)` gives an RFC 6902 patch that turns
//! `prev` into `next`; `apply` applies one.
//!
//! Pure: no IO, no async. The rest of the crate sees only these two
//! functions, so the diff algorithm can change without touching callers.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

/// A patch could not be applied to a document.
#[derive(Debug, thiserror::Error)]
#[error("patch does not apply: {0}")]
pub struct ApplyError(#[from] json_patch::PatchError);

/// An RFC 6902 patch turning `prev` into `next`; empty when they are equal.
pub fn diff(prev: &Value, next: &Value) -> Patch {
    json_patch::diff(prev, next)
}

/// Applies `patch` to `doc`. On error `doc` is left unchanged.
pub fn apply(doc: &mut Value, patch: &[PatchOperation]) -> Result<(), ApplyError> {
    json_patch::patch(doc, patch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_with_awkward_keys() {
        let a = json!({"a/b": 1, "c~d": [1, 2, 3], "ü": "x"});
        let b = json!({"a/b": 2, "c~d": [0, 1, 2, 3], "ü": "y", "new": null});
        let p = diff(&a, &b);
        let mut d = a.clone();
        apply(&mut d, &p).unwrap();
        assert_eq!(d, b);
        assert!(diff(&b, &b).0.is_empty());
    }

    #[test]
    fn root_type_change() {
        let a = json!([1, 2]);
        let b = json!({"x": 1});
        let mut d = a.clone();
        apply(&mut d, &diff(&a, &b)).unwrap();
        assert_eq!(d, b);
    }
}
