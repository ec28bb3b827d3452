//! JSON diff and patch: `diff(prev, next)` gives an RFC 6902 patch that turns
//! `prev` into `next`; `apply` applies one.
//!
//! Objects are compared key by key. Arrays are compared as sequences
//! (Myers' O((N+M)·D) shortest edit script over element hashes, after
//! trimming the common prefix and suffix): an item inserted at the front is
//! one `add`, not a rewrite of the array; a removed item and an added one
//! side by side become a recursive diff of the two (a one-field edit in a
//! list of objects is one `replace`); an equal item removed in one place and
//! added in another is a `move`. Past `MAX_EDITS` edits the array is diffed
//! index by index, and whenever the ops for an array would be larger than
//! the new array itself, a single `replace` is sent instead.
//!
//! Cost is bounded by a budget of work units, counted, not timed, so the
//! outcome is a function of the two documents: roughly one unit per node
//! hashed, compared, cloned or visited, per Myers step, per 32 bytes of
//! string or serialized output, and per byte of an op's path. Nested arrays hash and compare their
//! subtrees once per level, so without it a document nested deep around a
//! large array costs depth × size. [`budget`] gives every diff
//! `WORK_PER_NODE` units per node of the two documents (plus
//! `WORK_FLOOR`; the nodes are counted only if a diff spends the floor);
//! past it the diff is one root `replace` of the whole new
//! document, which is always correct. Realistic changes spend a small
//! fraction of it (`benches/diff.rs` prints the figures).
//!
//! Pure: no IO, no async. The rest of the crate sees only `diff`,
//! `diff_budgeted`, `diff_within` and `apply`, so the algorithm can change without touching
//! callers.

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
/// Work units a diff may spend per node of the two documents.
pub const WORK_PER_NODE: u64 = 16;
/// Work units every diff may spend, however small the documents.
pub const WORK_FLOOR: u64 = 1 << 20;

/// What [`diff_within`] produced.
#[derive(Debug)]
pub struct Diffed {
    /// Turns `prev` into `next`; empty exactly when they are equal.
    pub patch: Patch,
    /// The budget ran out: `patch` is one `replace` of the whole document.
    pub budget_exceeded: bool,
    /// Work units spent (all of the budget when it ran out).
    pub work: u64,
}

/// An RFC 6902 patch turning `prev` into `next`; empty when they are equal.
/// Within the default [`budget`].
pub fn diff(prev: &Value, next: &Value) -> Patch {
    diff_budgeted(prev, next).patch
}

/// The default budget for diffing `prev` into `next`: `WORK_PER_NODE` per
/// node of the two, plus `WORK_FLOOR`. Counting costs one walk of each.
pub fn budget(prev: &Value, next: &Value) -> u64 {
    let nodes = nodes(prev).saturating_add(nodes(next));
    WORK_FLOOR.saturating_add(WORK_PER_NODE.saturating_mul(nodes))
}

/// [`diff`], also saying whether the default [`budget`] ran out. The
/// nodes are counted only once a diff has spent `WORK_FLOOR`, so a cheap
/// diff of large documents does not pay for the count.
pub fn diff_budgeted(prev: &Value, next: &Value) -> Diffed {
    run(
        prev,
        next,
        Budget {
            left: WORK_FLOOR,
            total: WORK_FLOOR,
            grow: Some((prev, next)),
        },
    )
}

/// [`diff`] with an explicit budget of work units. Past it, the patch is
/// `[{"op":"replace","path":"","value":next}]` (empty if the documents are
/// equal).
pub fn diff_within(prev: &Value, next: &Value, budget: u64) -> Diffed {
    run(
        prev,
        next,
        Budget {
            left: budget,
            total: budget,
            grow: None,
        },
    )
}

fn run(prev: &Value, next: &Value, mut budget: Budget<'_>) -> Diffed {
    let mut ops = Vec::new();
    let mut path = PointerBuf::root();
    match diff_value(prev, next, &mut path, &mut ops, &mut budget) {
        Ok(()) => Diffed {
            patch: Patch(ops),
            budget_exceeded: false,
            work: budget.total - budget.left,
        },
        Err(Exceeded) => {
            drop(ops);
            // Equal documents cost about one unit per node, far below any
            // budget; checked anyway, since an empty patch must mean equal.
            let patch = if prev == next {
                Vec::new()
            } else {
                vec![replace(&PointerBuf::root(), next)]
            };
            Diffed {
                patch: Patch(patch),
                budget_exceeded: true,
                work: budget.total,
            }
        }
    }
}

/// Applies `patch` to `doc`. On error `doc` is left unchanged: the patch
/// is applied to a copy, not undone (json-patch 5.0.0's own undo panics
/// on some patches that fail, e.g. a `copy` then a `move` below itself).
pub fn apply(doc: &mut Value, patch: &[PatchOperation]) -> Result<(), ApplyError> {
    let mut out = doc.clone();
    json_patch::patch_unsafe(&mut out, patch)?;
    *doc = out;
    Ok(())
}

/// Applies `patch` to `doc`, leaving `doc` partly patched on error: for
/// callers that discard the document then, it skips the undo log.
pub fn apply_or_discard(doc: &mut Value, patch: &[PatchOperation]) -> Result<(), ApplyError> {
    json_patch::patch_unsafe(doc, patch)?;
    Ok(())
}

/// Nodes of a JSON value (every value, container or leaf, counts one).
pub fn nodes(v: &Value) -> u64 {
    match v {
        Value::Array(a) => a.iter().fold(1, |n, x| n.saturating_add(nodes(x))),
        Value::Object(o) => o.values().fold(1, |n, x| n.saturating_add(nodes(x))),
        _ => 1,
    }
}

/// Whether `v` has at least `limit` nodes; visits at most `limit` of them.
pub fn nodes_at_least(v: &Value, limit: u64) -> bool {
    fn walk(v: &Value, left: &mut u64) -> bool {
        if *left <= 1 {
            *left = 0;
            return true;
        }
        *left -= 1;
        match v {
            Value::Array(a) => a.iter().any(|x| walk(x, left)),
            Value::Object(o) => o.values().any(|x| walk(x, left)),
            _ => false,
        }
    }
    let mut left = limit;
    limit == 0 || walk(v, &mut left)
}

/// Work left; spending past it is `Exceeded`.
struct Budget<'a> {
    left: u64,
    /// Granted so far.
    total: u64,
    /// The documents whose `WORK_PER_NODE` share is granted when `left`
    /// runs out (the default budget), counted only then.
    grow: Option<(&'a Value, &'a Value)>,
}

/// The budget ran out.
#[derive(Debug)]
struct Exceeded;

type Step<T = ()> = Result<T, Exceeded>;

impl Budget<'_> {
    #[inline]
    fn charge(&mut self, units: u64) -> Step {
        if let Some(left) = self.left.checked_sub(units) {
            self.left = left;
            return Ok(());
        }
        self.exhausted(units)
    }

    #[cold]
    fn exhausted(&mut self, units: u64) -> Step {
        if let Some((a, b)) = self.grow.take() {
            let more = WORK_PER_NODE.saturating_mul(nodes(a).saturating_add(nodes(b)));
            self.left = self.left.saturating_add(more);
            self.total = self.total.saturating_add(more);
            return self.charge(units);
        }
        self.left = 0;
        Err(Exceeded)
    }

    /// A run of `len` bytes (a string, a key, a path, output).
    #[inline]
    fn bytes(&mut self, len: usize) -> Step {
        self.charge(1 + len as u64 / 32)
    }

    /// `n` items moved or scanned in a vector (a few bytes each).
    #[inline]
    fn items(&mut self, n: usize) -> Step {
        self.charge(1 + n as u64 / 8)
    }

    /// A copy of the path, for an op: one unit per byte, so the paths an
    /// array of deep changes makes (each as long as the depth) cannot
    /// outgrow the budget in memory.
    fn path(&mut self, path: &PointerBuf) -> Step<PointerBuf> {
        self.charge(1 + path.as_str().len() as u64)?;
        Ok(path.clone())
    }

    /// A copy of `v`, one unit per node (and per 32 bytes of string).
    fn clone(&mut self, v: &Value) -> Step<Value> {
        self.charge(1)?;
        Ok(match v {
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.clone(x))
                    .collect::<Step<Vec<Value>>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        self.bytes(k.len())?;
                        Ok((k.clone(), self.clone(x)?))
                    })
                    .collect::<Step<serde_json::Map<String, Value>>>()?,
            ),
            Value::String(s) => {
                self.bytes(s.len())?;
                v.clone()
            }
            _ => v.clone(),
        })
    }
}

fn replace(path: &PointerBuf, value: &Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: path.clone(),
        value: value.clone(),
    })
}

fn add(path: &PointerBuf, value: &Value, budget: &mut Budget<'_>) -> Step<PatchOperation> {
    Ok(PatchOperation::Add(AddOperation {
        path: budget.path(path)?,
        value: budget.clone(value)?,
    }))
}

fn remove(path: &PointerBuf, budget: &mut Budget<'_>) -> Step<PatchOperation> {
    Ok(PatchOperation::Remove(RemoveOperation {
        path: budget.path(path)?,
    }))
}

/// `a == b` (serde_json's equality), charged per node compared.
fn same(a: &Value, b: &Value, budget: &mut Budget<'_>) -> Step<bool> {
    budget.charge(1)?;
    Ok(match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for (p, q) in x.iter().zip(y) {
                if !same(p, q, budget)? {
                    return Ok(false);
                }
            }
            true
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for (k, p) in x {
                budget.bytes(k.len())?;
                match y.get(k) {
                    Some(q) if same(p, q, budget)? => {}
                    _ => return Ok(false),
                }
            }
            true
        }
        (Value::String(s), Value::String(t)) => {
            budget.bytes(s.len().min(t.len()))?;
            s == t
        }
        _ => a == b,
    })
}

fn diff_value(
    a: &Value,
    b: &Value,
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
    budget: &mut Budget<'_>,
) -> Step {
    budget.charge(1)?;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                budget.bytes(k.len())?;
                path.push_back(k.as_str());
                match y.get(k) {
                    Some(vb) => diff_value(va, vb, path, ops, budget)?,
                    None => ops.push(remove(path, budget)?),
                }
                path.pop_back();
            }
            for (k, vb) in y {
                budget.bytes(k.len())?;
                if !x.contains_key(k) {
                    path.push_back(k.as_str());
                    ops.push(add(path, vb, budget)?);
                    path.pop_back();
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => diff_array(x, y, b, path, ops, budget)?,
        _ if same(a, b, budget)? => {}
        _ => {
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: budget.path(path)?,
                value: budget.clone(b)?,
            }));
        }
    }
    Ok(())
}

/// Serialized size, for choosing between alternatives; charged per write.
fn size<T: serde::Serialize>(v: &T, budget: &mut Budget<'_>) -> Step<usize> {
    struct Counter<'a, 'b> {
        len: usize,
        budget: &'a mut Budget<'b>,
    }
    impl std::io::Write for Counter<'_, '_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.budget
                .bytes(b.len())
                .map_err(|_| std::io::Error::other("budget exceeded"))?;
            self.len += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { len: 0, budget };
    // Serializing a `Value` (or ops of them) fails only through the writer.
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => Ok(c.len),
        Err(_) => Err(Exceeded),
    }
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
    budget: &mut Budget<'_>,
) -> Step {
    let mut local = Vec::new();
    array_ops(x, y, path, &mut local, budget)?;
    if local.is_empty() {
        return Ok(());
    }
    // One `replace` of the array is smaller: send that. Its size is at
    // least 2 bytes per item (value and comma) plus the op's own ~40, so
    // small edit lists are kept without serializing the array.
    if local.len() > 1 {
        let ours = size(&local, budget)?;
        let whole_op = ReplaceRef {
            op: "replace",
            path,
            value: whole,
        };
        if ours > 2 * whole.as_array().map_or(0, Vec::len) + 40 {
            // Stops after `ours` bytes.
            budget.bytes(ours)?;
            if smaller_than(&whole_op, ours) {
                drop(local);
                ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: budget.path(path)?,
                    value: budget.clone(whole)?,
                }));
                return Ok(());
            }
        }
    }
    budget.items(local.len())?;
    ops.append(&mut local);
    Ok(())
}

fn array_ops(
    x: &[Value],
    y: &[Value],
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
    budget: &mut Budget<'_>,
) -> Step {
    let mut prefix = 0;
    while prefix < x.len().min(y.len()) && same(&x[prefix], &y[prefix], budget)? {
        prefix += 1;
    }
    let mut suffix = 0;
    while suffix < (x.len() - prefix).min(y.len() - prefix)
        && same(&x[x.len() - 1 - suffix], &y[y.len() - 1 - suffix], budget)?
    {
        suffix += 1;
    }
    let a = &x[prefix..x.len() - suffix];
    let b = &y[prefix..y.len() - suffix];
    if a.is_empty() && b.is_empty() {
        return Ok(());
    }
    let ha = a
        .iter()
        .map(|v| hash(v, budget))
        .collect::<Step<Vec<u64>>>()?;
    let hb = b
        .iter()
        .map(|v| hash(v, budget))
        .collect::<Step<Vec<u64>>>()?;
    let eq = |i: usize, j: usize, budget: &mut Budget<'_>| -> Step<bool> {
        Ok(ha[i] == hb[j] && same(&a[i], &b[j], budget)?)
    };
    let Some(script) = myers(a.len(), b.len(), MAX_EDITS, eq, budget)? else {
        // Too many edits to search: index by index.
        for (i, (va, vb)) in a.iter().zip(b).enumerate() {
            path.push_back(prefix + i);
            diff_value(va, vb, path, ops, budget)?;
            path.pop_back();
        }
        for i in (b.len()..a.len()).rev() {
            path.push_back(prefix + i);
            ops.push(remove(path, budget)?);
            path.pop_back();
        }
        for (i, vb) in b.iter().enumerate().skip(a.len()) {
            path.push_back(prefix + i);
            ops.push(add(path, vb, budget)?);
            path.pop_back();
        }
        return Ok(());
    };
    emit(a, b, &ha, &hb, &script, prefix, path, ops, budget)
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
    budget: &mut Budget<'_>,
) -> Step {
    budget.items(2 * (a.len() + b.len()) + script.len())?;
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
        budget.charge(1)?;
        if smaller_than(&b[jn], MOVE_MIN_BYTES) {
            continue;
        }
        budget.items(dels.len())?;
        let mut found = None;
        for &io in &dels {
            if !moved_from[io] && ha[io] == hb[jn] && same(&a[io], &b[jn], budget)? {
                found = Some(io);
                break;
            }
        }
        if let Some(io) = found {
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
            ops.push(remove(path, budget)?);
            path.pop_back();
            budget.items(cur.len() - io)?;
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
                ops.push(add(path, &b[jn], budget)?);
                path.pop_back();
                budget.items(cur.len() - q)?;
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
                budget.items(pos - from)?;
                if let Fate::MovedTo(_) = fate[io] {
                    let to = if pos < q { q - 1 } else { q };
                    if pos != to {
                        let mut from = budget.path(path)?;
                        from.push_back(base + pos);
                        path.push_back(base + to);
                        ops.push(PatchOperation::Move(MoveOperation {
                            from,
                            path: budget.path(path)?,
                        }));
                        path.pop_back();
                        budget.items(2 * cur.len())?;
                        cur.remove(pos);
                        cur.insert(to, Slot::Old(io));
                    }
                    cur[to] = Slot::New;
                    q = to + 1;
                } else {
                    if let Fate::Became(_) = fate[io] {
                        path.push_back(base + pos);
                        diff_value(&a[io], &b[jn], path, ops, budget)?;
                        path.pop_back();
                    }
                    cur[pos] = Slot::New;
                    q = pos + 1;
                }
            }
        }
    }
    Ok(())
}

/// Myers' shortest edit script from `n` old to `m` new elements, or `None`
/// if it needs more than `max` inserts + deletes. One unit per diagonal
/// visited and per comparison, besides what `eq` charges.
fn myers(
    n: usize,
    m: usize,
    max: usize,
    eq: impl Fn(usize, usize, &mut Budget<'_>) -> Step<bool>,
    budget: &mut Budget<'_>,
) -> Step<Option<Vec<Edit>>> {
    let max = max.min(n + m);
    let offset = max + 1;
    let mut v = vec![0usize; 2 * max + 3];
    let mut trace: Vec<Vec<usize>> = Vec::new();
    let mut found = None;
    'outer: for d in 0..=max {
        budget.items(v.len())?;
        trace.push(v.clone());
        let d = d as isize;
        let mut k = -d;
        while k <= d {
            budget.charge(1)?;
            let idx = (k + offset as isize) as usize;
            let mut x = if k == -d || (k != d && v[idx - 1] < v[idx + 1]) {
                v[idx + 1]
            } else {
                v[idx - 1] + 1
            };
            let mut y = (x as isize - k) as usize;
            while x < n && y < m && {
                budget.charge(1)?;
                eq(x, y, budget)?
            } {
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
    let Some(d_final) = found else {
        return Ok(None);
    };
    budget.items(n + m)?;
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
    Ok(Some(script))
}

/// A structural hash of a JSON value (no allocation), charged per node.
/// Equality is always confirmed on a hash match, so a fast
/// non-cryptographic hash will do.
fn hash(v: &Value, budget: &mut Budget<'_>) -> Step<u64> {
    let mut h = FxHasher(0);
    hash_into(v, &mut h, budget)?;
    Ok(h.finish())
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

fn hash_into(v: &Value, h: &mut impl Hasher, budget: &mut Budget<'_>) -> Step {
    budget.charge(1)?;
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
        Value::String(s) => {
            budget.bytes(s.len())?;
            (3u8, s).hash(h);
        }
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            for x in a {
                hash_into(x, h, budget)?;
            }
        }
        Value::Object(o) => {
            (5u8, o.len()).hash(h);
            for (k, x) in o {
                budget.bytes(k.len())?;
                k.hash(h);
                hash_into(x, h, budget)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn len_of<T: serde::Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).unwrap().len()
    }

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
            let exact = len_of(&replace(&path, &v));
            let by_ref = ReplaceRef {
                op: "replace",
                path: &path,
                value: &v,
            };
            assert_eq!(len_of(&by_ref), exact);
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

    /// Issue 17's hostile shape: `depth` arrays around one of `n` elements,
    /// every element of which differs between versions 0 and 1.
    fn hostile(depth: usize, n: usize, version: usize) -> Value {
        let mut doc = Value::Array((0..n).map(|i| json!((i + version) % 2)).collect());
        for _ in 0..depth {
            doc = Value::Array(vec![doc]);
        }
        doc
    }

    #[test]
    fn issue_17_deep_documents_hit_the_budget_and_replace_the_root() {
        let (a, b) = (hostile(120, 50_000, 0), hostile(120, 50_000, 1));
        let d = diff_within(&a, &b, budget(&a, &b));
        assert!(d.budget_exceeded, "spent {} of {}", d.work, budget(&a, &b));
        // The default budget, counted lazily, is the same budget.
        let lazy = diff_budgeted(&a, &b);
        assert!(lazy.budget_exceeded);
        assert_eq!(lazy.work, budget(&a, &b));
        assert_eq!(lazy.patch, d.patch);
        let p = diff(&a, &b);
        assert_eq!(p.0.len(), 1);
        assert!(
            matches!(&p.0[0], PatchOperation::Replace(op) if op.path.as_str().is_empty() && op.value == b)
        );
        let text = serde_json::to_string(&p).unwrap();
        assert!(
            text.starts_with(r#"[{"op":"replace","path":"","value":[[["#),
            "{}",
            &text[..60]
        );
        check(&a, &b);
        check(&b, &a);
        // Equal documents never fall back, and never give a patch.
        assert!(diff_within(&a, &a, 0).patch.0.is_empty());
        assert!(diff(&a, &a.clone()).0.is_empty());
    }

    #[test]
    fn nodes_at_least_agrees_with_nodes() {
        for v in [
            json!(1),
            json!([]),
            json!([1, [2, 3]]),
            json!({"a": [1, {"b": 2}], "c": null}),
            hostile(3, 10, 0),
        ] {
            let n = nodes(&v);
            for limit in 0..n + 3 {
                assert_eq!(nodes_at_least(&v, limit), n >= limit, "{v} {limit}");
            }
        }
    }

    #[test]
    fn realistic_edits_stay_far_below_the_budget() {
        let a: Vec<Value> = (0..2000)
            .map(|i| json!({"id": i, "name": format!("item {i}"), "tags": ["x", "y"]}))
            .collect();
        let mut b = a.clone();
        b.insert(0, json!({"id": -1}));
        b.remove(1000);
        b[1500]["name"] = json!("renamed");
        let x = b.remove(10);
        b.insert(1900, x);
        let (a, b) = (json!({ "items": a }), json!({ "items": b }));
        let d = diff_budgeted(&a, &b);
        assert!(!d.budget_exceeded);
        assert_eq!(d.work, diff_within(&a, &b, budget(&a, &b)).work);
        // Within a quarter of the share proportional to the documents
        // (about 3 units a node: compare the ends, hash the middle).
        assert!(
            d.work * 4 < WORK_PER_NODE * (nodes(&a) + nodes(&b)),
            "spent {} on {} nodes",
            d.work,
            nodes(&a) + nodes(&b)
        );
        assert_eq!(
            d.patch.0.len(),
            4,
            "{}",
            serde_json::to_string(&d.patch).unwrap()
        );
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
            prop_assert!(len_of(&p) <= whole + 64, "{} > {}", len_of(&p), whole);
        }

        #[test]
        fn a_tiny_budget_falls_back_to_a_correct_root_replace((a, b) in arb_pair(), budget in 0u64..64) {
            let d = diff_within(&a, &b, budget);
            let mut got = a.clone();
            json_patch::patch(&mut got, &d.patch).unwrap();
            prop_assert_eq!(&got, &b);
            prop_assert_eq!(d.patch.0.is_empty(), a == b);
            if d.budget_exceeded {
                prop_assert!(d.work == budget);
                if a != b {
                    prop_assert_eq!(d.patch.0.len(), 1);
                    prop_assert!(matches!(&d.patch.0[0], PatchOperation::Replace(op) if op.path.as_str().is_empty()));
                }
            } else {
                // Within budget, the same patch as with any larger budget.
                prop_assert_eq!(d.patch, diff(&a, &b));
            }
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
