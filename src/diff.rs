//! JSON diff and patch: `diff(prev, next)` gives an RFC 6902 patch that turns
//! `prev` into `next`; `apply` applies one.
//!
//! Objects are compared key by key. Arrays are compared as sequences
//! (Myers' O((N+M)·D) shortest edit script over element hashes, after
//! trimming the common prefix and suffix): an item inserted at the front is
//! one `add`, not a rewrite of the array; a removed item and an added one
//! side by side become a recursive diff of the two (a one-field edit in a
//! list of objects is one `replace`); an equal item removed in one place and
//! added in another is a `move`. Cost is bounded: past `MAX_EDITS` edits the
//! array is diffed index by index, and whenever the ops for an array would
//! be larger than the new array itself, a single `replace` is sent instead.
//!
//! Pure: no IO, no async. The rest of the crate sees only `diff` and
//! `apply`, so the algorithm can change without touching callers.

use std::hash::{Hash, Hasher};

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, MoveOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation,
};
use serde_json::Value;

/// A patch could not be applied to a document.
#[derive(Debug, thiserror::Error)]
#[error("patch does not apply: {0}")]
pub struct ApplyError(#[from] json_patch::PatchError);

/// Most edits (inserts + deletes) searched for per array; beyond it the
/// array is compared index by index.
const MAX_EDITS: usize = 256;
/// Values at least this large (serialized) are worth a `move` rather than
/// a `remove` and an `add`.
const MOVE_MIN_BYTES: usize = 16;

/// An RFC 6902 patch turning `prev` into `next`; empty when they are equal.
pub fn diff(prev: &Value, next: &Value) -> Patch {
    let mut ops = Vec::new();
    let mut path = PointerBuf::root();
    diff_value(prev, next, &mut path, &mut ops);
    Patch(ops)
}

/// Applies `patch` to `doc`. On error `doc` is left unchanged.
pub fn apply(doc: &mut Value, patch: &[PatchOperation]) -> Result<(), ApplyError> {
    json_patch::patch(doc, patch)?;
    Ok(())
}

/// Applies `patch` to `doc`, leaving `doc` partly patched on error: for
/// callers that discard the document then, it skips the undo log.
pub fn apply_or_discard(doc: &mut Value, patch: &[PatchOperation]) -> Result<(), ApplyError> {
    json_patch::patch_unsafe(doc, patch)?;
    Ok(())
}

fn replace(path: &PointerBuf, value: &Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: path.clone(),
        value: value.clone(),
    })
}

fn diff_value(a: &Value, b: &Value, path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                path.push_back(k.as_str());
                match y.get(k) {
                    Some(vb) => diff_value(va, vb, path, ops),
                    None => ops.push(PatchOperation::Remove(RemoveOperation {
                        path: path.clone(),
                    })),
                }
                path.pop_back();
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    path.push_back(k.as_str());
                    ops.push(PatchOperation::Add(AddOperation {
                        path: path.clone(),
                        value: vb.clone(),
                    }));
                    path.pop_back();
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => diff_array(x, y, b, path, ops),
        _ if a == b => {}
        _ => ops.push(replace(path, b)),
    }
}

/// Serialized size, for choosing between alternatives.
fn size<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// Whether `v` serializes to fewer than `limit` bytes. Serialization stops
/// at the limit, so asking this of a huge value costs about `limit` bytes
/// of work, and nothing is cloned.
fn smaller_than<T: serde::Serialize>(v: &T, limit: usize) -> bool {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_sub(b.len());
            if self.0 == 0 {
                return Err(std::io::Error::other("limit reached"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Counter(limit), v).is_ok()
}

/// A `replace` operation by reference: serializes as
/// `PatchOperation::Replace` does, without cloning the value.
#[derive(serde::Serialize)]
struct ReplaceRef<'a> {
    op: &'static str,
    path: &'a PointerBuf,
    value: &'a Value,
}

fn diff_array(
    x: &[Value],
    y: &[Value],
    whole: &Value,
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    let mut local = Vec::new();
    array_ops(x, y, path, &mut local);
    if local.is_empty() {
        return;
    }
    // One `replace` of the array is smaller: send that. Its size is at
    // least 2 bytes per item (value and comma) plus the op's own ~40, so
    // small edit lists are kept without serializing the array.
    if local.len() > 1 {
        let ours = size(&local);
        let whole_op = ReplaceRef {
            op: "replace",
            path,
            value: whole,
        };
        if ours > 2 * whole.as_array().map_or(0, Vec::len) + 40 && smaller_than(&whole_op, ours) {
            ops.push(replace(path, whole));
            return;
        }
    }
    ops.append(&mut local);
}

fn array_ops(x: &[Value], y: &[Value], path: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    let prefix = x.iter().zip(y).take_while(|(a, b)| a == b).count();
    let suffix = x[prefix..]
        .iter()
        .rev()
        .zip(y[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let a = &x[prefix..x.len() - suffix];
    let b = &y[prefix..y.len() - suffix];
    if a.is_empty() && b.is_empty() {
        return;
    }
    let ha: Vec<u64> = a.iter().map(hash).collect();
    let hb: Vec<u64> = b.iter().map(hash).collect();
    let eq = |i: usize, j: usize| ha[i] == hb[j] && a[i] == b[j];
    let Some(script) = myers(a.len(), b.len(), MAX_EDITS, eq) else {
        // Too many edits to search: index by index.
        for (i, (va, vb)) in a.iter().zip(b).enumerate() {
            path.push_back(prefix + i);
            diff_value(va, vb, path, ops);
            path.pop_back();
        }
        for i in (b.len()..a.len()).rev() {
            path.push_back(prefix + i);
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: path.clone(),
            }));
            path.pop_back();
        }
        for (i, vb) in b.iter().enumerate().skip(a.len()) {
            path.push_back(prefix + i);
            ops.push(PatchOperation::Add(AddOperation {
                path: path.clone(),
                value: vb.clone(),
            }));
            path.pop_back();
        }
        return;
    };
    emit(a, b, &ha, &hb, &script, prefix, path, ops);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Edit {
    Keep,
    Delete,
    Insert,
}

/// Where an old element goes.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Kept,
    Removed,
    /// Moved to new index j.
    MovedTo(usize),
    /// Replaced in place by new index j (diffed recursively).
    Became(usize),
}

/// A slot of the array as the ops transform it.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Old(usize),
    New,
}

#[allow(clippy::too_many_arguments)]
fn emit(
    a: &[Value],
    b: &[Value],
    ha: &[u64],
    hb: &[u64],
    script: &[Edit],
    base: usize,
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    // Old/new index of each edit.
    let mut fate = vec![Fate::Removed; a.len()];
    let mut source: Vec<Option<usize>> = vec![None; b.len()];
    let (mut i, mut j) = (0, 0);
    let mut dels = Vec::new();
    let mut inss = Vec::new();
    for e in script {
        match e {
            Edit::Keep => {
                fate[i] = Fate::Kept;
                source[j] = Some(i);
                i += 1;
                j += 1;
            }
            Edit::Delete => {
                dels.push(i);
                i += 1;
            }
            Edit::Insert => {
                inss.push(j);
                j += 1;
            }
        }
    }
    // Moves: an inserted value equal to a deleted one (worth it if large).
    let mut moved_from = vec![false; a.len()];
    for &jn in &inss {
        if size(&b[jn]) < MOVE_MIN_BYTES {
            continue;
        }
        if let Some(&io) = dels
            .iter()
            .find(|&&io| !moved_from[io] && ha[io] == hb[jn] && a[io] == b[jn])
        {
            moved_from[io] = true;
            fate[io] = Fate::MovedTo(jn);
            source[jn] = Some(io);
        }
    }
    // Substitutions: within each run of deletes followed by inserts, pair
    // the rest in order and diff them.
    let (mut i, mut j, mut k) = (0, 0, 0);
    while k < script.len() {
        if script[k] == Edit::Keep {
            i += 1;
            j += 1;
            k += 1;
            continue;
        }
        let (mut run_d, mut run_i) = (Vec::new(), Vec::new());
        while k < script.len() && script[k] != Edit::Keep {
            match script[k] {
                Edit::Delete => {
                    if !moved_from[i] {
                        run_d.push(i);
                    }
                    i += 1;
                }
                _ => {
                    if source[j].is_none() {
                        run_i.push(j);
                    }
                    j += 1;
                }
            }
            k += 1;
        }
        for (&io, &jn) in run_d.iter().zip(&run_i) {
            fate[io] = Fate::Became(jn);
            source[jn] = Some(io);
        }
    }

    // Replay: `cur` is the array as the ops so far have made it. Removals
    // first (from the back, so indices stay valid); move sources stay.
    let mut cur: Vec<Slot> = (0..a.len()).map(Slot::Old).collect();
    for io in (0..a.len()).rev() {
        if fate[io] == Fate::Removed {
            path.push_back(base + io);
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: path.clone(),
            }));
            path.pop_back();
            cur.remove(io);
        }
    }
    // Then the new order, left to right. `q` is just after the last placed
    // slot; only move sources not yet moved may sit among or after placed
    // slots. Kept and diffed elements keep their relative order, so each is
    // already in place when its turn comes (nothing but pending move
    // sources lies between `q` and it).
    let mut q = 0;
    for jn in 0..b.len() {
        match source[jn] {
            None => {
                path.push_back(base + q);
                ops.push(PatchOperation::Add(AddOperation {
                    path: path.clone(),
                    value: b[jn].clone(),
                }));
                path.pop_back();
                cur.insert(q, Slot::New);
                q += 1;
            }
            Some(io) => {
                // Kept and diffed elements are at or after `q`; only a move
                // source may be anywhere (at most MAX_EDITS of those).
                let from = if matches!(fate[io], Fate::MovedTo(_)) {
                    0
                } else {
                    q
                };
                let pos = from
                    + cur[from..]
                        .iter()
                        .position(|s| *s == Slot::Old(io))
                        .expect("a matched old element is still in the array");
                if let Fate::MovedTo(_) = fate[io] {
                    let to = if pos < q { q - 1 } else { q };
                    if pos != to {
                        let mut from = path.clone();
                        from.push_back(base + pos);
                        path.push_back(base + to);
                        ops.push(PatchOperation::Move(MoveOperation {
                            from,
                            path: path.clone(),
                        }));
                        path.pop_back();
                        cur.remove(pos);
                        cur.insert(to, Slot::Old(io));
                    }
                    cur[to] = Slot::New;
                    q = to + 1;
                } else {
                    if let Fate::Became(_) = fate[io] {
                        path.push_back(base + pos);
                        diff_value(&a[io], &b[jn], path, ops);
                        path.pop_back();
                    }
                    cur[pos] = Slot::New;
                    q = pos + 1;
                }
            }
        }
    }
}

/// Myers' shortest edit script from `n` old to `m` new elements, or `None`
/// if it needs more than `max` inserts + deletes.
fn myers(n: usize, m: usize, max: usize, eq: impl Fn(usize, usize) -> bool) -> Option<Vec<Edit>> {
    let max = max.min(n + m);
    let offset = max + 1;
    let mut v = vec![0usize; 2 * max + 3];
    let mut trace: Vec<Vec<usize>> = Vec::new();
    let mut found = None;
    'outer: for d in 0..=max {
        trace.push(v.clone());
        let d = d as isize;
        let mut k = -d;
        while k <= d {
            let idx = (k + offset as isize) as usize;
            let mut x = if k == -d || (k != d && v[idx - 1] < v[idx + 1]) {
                v[idx + 1]
            } else {
                v[idx - 1] + 1
            };
            let mut y = (x as isize - k) as usize;
            while x < n && y < m && eq(x, y) {
                x += 1;
                y += 1;
            }
            v[idx] = x;
            if x >= n && y >= m {
                found = Some(d as usize);
                break 'outer;
            }
            k += 2;
        }
    }
    let d_final = found?;
    // Walk back through the trace.
    let mut script = Vec::with_capacity(n + m);
    let (mut x, mut y) = (n as isize, m as isize);
    for d in (1..=d_final as isize).rev() {
        let v = &trace[d as usize];
        let k = x - y;
        let idx = |k: isize| (k + offset as isize) as usize;
        let prev_k = if k == -d || (k != d && v[idx(k - 1)] < v[idx(k + 1)]) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = v[idx(prev_k)] as isize;
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            script.push(Edit::Keep);
            x -= 1;
            y -= 1;
        }
        script.push(if x == prev_x {
            Edit::Insert
        } else {
            Edit::Delete
        });
        x = prev_x;
        y = prev_y;
    }
    while x > 0 && y > 0 {
        script.push(Edit::Keep);
        x -= 1;
        y -= 1;
    }
    script.reverse();
    Some(script)
}

/// A structural hash of a JSON value (no allocation). Equality is always
/// confirmed on a hash match, so a fast non-cryptographic hash will do.
fn hash(v: &Value) -> u64 {
    let mut h = FxHasher(0);
    hash_into(v, &mut h);
    h.finish()
}

/// The rustc "Fx" hash: a rotate, xor and multiply per word; several times
/// faster than SipHash on short keys, and hash flooding is harmless here.
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn hash_into(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => {
            2u8.hash(h);
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.hash(h),
                (_, Some(u), _) => u.hash(h),
                (_, _, Some(f)) => f.to_bits().hash(h),
                _ => {}
            }
        }
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            for x in a {
                hash_into(x, h);
            }
        }
        Value::Object(o) => {
            (5u8, o.len()).hash(h);
            for (k, x) in o {
                k.hash(h);
                hash_into(x, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(a: &Value, b: &Value) -> Patch {
        let p = diff(a, b);
        let mut d = a.clone();
        json_patch::patch(&mut d, &p).unwrap_or_else(|e| {
            panic!("{e}: {a} → {b} via {}", serde_json::to_string(&p).unwrap())
        });
        assert_eq!(&d, b, "patch {}", serde_json::to_string(&p).unwrap());
        p
    }

    #[test]
    fn round_trip_with_awkward_keys() {
        let a = json!({"a/b": 1, "c~d": [1, 2, 3], "ü": "x", "": 0});
        let b = json!({"a/b": 2, "c~d": [0, 1, 2, 3], "ü": "y", "new": null, "": 1});
        check(&a, &b);
        assert!(diff(&b, &b).0.is_empty());
    }

    #[test]
    fn root_type_change() {
        check(&json!([1, 2]), &json!({"x": 1}));
        check(&json!("s"), &json!(null));
    }

    #[test]
    fn a_front_insert_is_one_add() {
        let a: Vec<Value> = (0..1000)
            .map(|i| json!({"id": i, "name": format!("item {i}")}))
            .collect();
        let mut b = a.clone();
        b.insert(0, json!({"id": -1, "name": "new"}));
        let p = check(&Value::Array(a), &Value::Array(b));
        assert_eq!(p.0.len(), 1, "{}", serde_json::to_string(&p).unwrap());
        assert!(matches!(&p.0[0], PatchOperation::Add(op) if op.path.as_str() == "/0"));
    }

    #[test]
    fn a_field_edit_in_a_list_is_one_replace() {
        let a: Vec<Value> = (0..100).map(|i| json!({"id": i, "price": i})).collect();
        let mut b = a.clone();
        b[50]["price"] = json!(9999);
        let p = check(&Value::Array(a), &Value::Array(b));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"[{"op":"replace","path":"/50/price","value":9999}]"#
        );
    }

    #[test]
    fn a_moved_item_is_one_move() {
        let a: Vec<Value> = (0..50)
            .map(|i| json!({"id": i, "name": format!("item number {i}")}))
            .collect();
        let mut b = a.clone();
        let x = b.remove(3);
        b.insert(40, x);
        let p = check(&Value::Array(a.clone()), &Value::Array(b));
        assert_eq!(p.0.len(), 1, "{}", serde_json::to_string(&p).unwrap());
        assert!(matches!(p.0[0], PatchOperation::Move(_)));
        // And to the front, from the back.
        let mut c = a.clone();
        let x = c.remove(49);
        c.insert(0, x);
        let p = check(&Value::Array(a), &Value::Array(c));
        assert_eq!(p.0.len(), 1, "{}", serde_json::to_string(&p).unwrap());
    }

    #[test]
    fn the_size_check_matches_the_serialized_replace() {
        let path = PointerBuf::parse("/a~1b/0").unwrap();
        for v in [
            json!(null),
            json!([1, "ü", {"k": [2, 3]}]),
            json!((0..500).collect::<Vec<_>>()),
        ] {
            let exact = size(&replace(&path, &v));
            let by_ref = ReplaceRef {
                op: "replace",
                path: &path,
                value: &v,
            };
            assert_eq!(size(&by_ref), exact);
            for limit in [0, 1, exact - 1, exact, exact + 1, 10 * exact] {
                assert_eq!(smaller_than(&by_ref, limit), exact < limit, "{v} {limit}");
            }
        }
    }

    #[test]
    fn a_rewritten_array_is_one_replace() {
        let a = json!({"l": (0..100).collect::<Vec<_>>()});
        let b = json!({"l": (1000..1100).collect::<Vec<_>>()});
        let p = check(&a, &b);
        assert_eq!(p.0.len(), 1);
    }

    #[test]
    fn huge_edits_fall_back_and_stay_correct() {
        let a: Vec<Value> = (0..3000).map(|i| json!(i)).collect();
        let b: Vec<Value> = (0..3000)
            .map(|i| json!(if i % 2 == 0 { i } else { -i }))
            .collect();
        check(&Value::Array(a), &Value::Array(b));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(|n| json!(n)),
            prop::sample::select(vec!["", "x", "ü", "a/b", "~1", "😀"]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..7).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["a", "b", "a/b", "c~d", "~", "é", "", "~0~1"]),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// `b` derived from `a` by list edits (front/middle inserts, deletes,
    /// moves, field edits), the realistic case.
    fn arb_pair() -> impl Strategy<Value = (Value, Value)> {
        (
            prop::collection::vec(arb_json(), 0..12),
            prop::collection::vec((0u8..5, any::<prop::sample::Index>(), arb_json()), 0..6),
        )
            .prop_map(|(items, edits)| {
                let a = items.clone();
                let mut b = items;
                for (kind, at, v) in edits {
                    let n = b.len();
                    match kind {
                        0 => b.insert(if n == 0 { 0 } else { at.index(n + 1) }, v),
                        1 if n > 0 => {
                            b.remove(at.index(n));
                        }
                        2 if n > 1 => {
                            let x = b.remove(at.index(n));
                            b.insert(at.index(n - 1), x);
                        }
                        3 if n > 0 => b[at.index(n)] = json!({"wrapped": b[at.index(n)].clone()}),
                        _ => b.insert(0, v),
                    }
                }
                (json!({"list": a, "k/~": 1}), json!({"list": b, "k/~": 2}))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn applying_the_diff_gives_the_target(a in arb_json(), b in arb_json()) {
            let p = diff(&a, &b);
            let mut d = a.clone();
            json_patch::patch(&mut d, &p).unwrap();
            prop_assert_eq!(&d, &b);
            prop_assert!(diff(&a, &a).0.is_empty());
        }

        #[test]
        fn list_edits_round_trip_and_stay_small((a, b) in arb_pair()) {
            let p = diff(&a, &b);
            let mut d = a.clone();
            json_patch::patch(&mut d, &p).unwrap();
            prop_assert_eq!(&d, &b);
            // Never much bigger than replacing the whole document.
            let whole = serde_json::to_vec(&json!([{"op": "replace", "path": "", "value": b}])).unwrap().len();
            prop_assert!(size(&p) <= whole + 64, "{} > {}", size(&p), whole);
        }

        #[test]
        fn root_arrays_round_trip(a in prop::collection::vec(arb_json(), 0..10), b in prop::collection::vec(arb_json(), 0..10)) {
            let (a, b) = (Value::Array(a), Value::Array(b));
            let p = diff(&a, &b);
            let mut d = a.clone();
            json_patch::patch(&mut d, &p).unwrap();
            prop_assert_eq!(&d, &b);
        }
    }
}
