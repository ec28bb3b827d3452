//! Subtree streams (`?path=<JSON Pointer>`): the pure projection of a
//! resource's events onto the value at one pointer, and the two bounded
//! caches that let every subscriber of a path share the work.
//!
//! [`project`] takes the value at the pointer before and after an event
//! and the event's patch, and answers `None` (the subtree did not change)
//! or the change with paths relative to the pointer; a change it cannot
//! express below the pointer (an ancestor replaced or removed, the value
//! appearing, disappearing, or shifting inside an array) is one
//! `replace` at `""` of the new value (`null` where absent). No IO.
//!
//! [`Versions`] keeps a resource's few newest documents (shared `Arc`s)
//! while it has subtree subscribers, so that a live event's before and
//! after are at hand; [`Projections`], held by each published event, keeps
//! its rewritten frame per pointer, computed once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{
    CopyOperation, MoveOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation,
    TestOperation,
};
use serde_json::Value;

use crate::hub::Published;
use crate::model::{Event, EventId};

/// A parsed, non-root JSON Pointer (RFC 6901). The root pointer `""` is
/// the whole document: callers represent it as no pointer at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer {
    /// As given (still escaped): the cache key, and what errors show.
    text: Arc<str>,
    /// The reference tokens, unescaped.
    tokens: Vec<String>,
}

/// Why a string is not a JSON Pointer the server accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PointerError {
    /// Not empty and not starting with `/`.
    #[error("a JSON Pointer is empty or starts with '/'")]
    NoSlash,
    /// `~` not followed by `0` or `1`.
    #[error("in a JSON Pointer '~' must be followed by '0' or '1'")]
    BadEscape,
    /// Longer than [`Pointer::MAX_LEN`] bytes.
    #[error("a JSON Pointer may be at most {} bytes long", Pointer::MAX_LEN)]
    TooLong,
    /// More tokens than a stored document can be deep.
    #[error("a JSON Pointer may have at most {} tokens", Pointer::MAX_TOKENS)]
    TooDeep,
}

impl Pointer {
    /// Longest pointer accepted, in bytes.
    pub const MAX_LEN: usize = 1024;
    /// Most tokens accepted: no stored document is deeper
    /// (`model::MAX_DOC_DEPTH`).
    pub const MAX_TOKENS: usize = 128;

    /// Parses `s`; `Ok(None)` for the root pointer `""` (the whole
    /// document).
    pub fn parse(s: &str) -> Result<Option<Pointer>, PointerError> {
        if s.len() > Self::MAX_LEN {
            return Err(PointerError::TooLong);
        }
        if s.is_empty() {
            return Ok(None);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PointerError::NoSlash);
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if tokens.len() == Self::MAX_TOKENS {
                return Err(PointerError::TooDeep);
            }
            tokens.push(unescape(raw)?);
        }
        Ok(Some(Pointer {
            text: s.into(),
            tokens,
        }))
    }

    /// The pointer as given (escaped).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the pointer in `doc`, if there is one.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.tokens.iter().try_fold(doc, |v, t| match v {
            Value::Object(m) => m.get(t),
            Value::Array(a) => index(t).and_then(|i| a.get(i)),
            _ => None,
        })
    }

    /// The value at the pointer in `doc` as JSON text, `null` where absent:
    /// a subtree stream's snapshot.
    pub fn snapshot(&self, doc: &Value) -> Bytes {
        to_json(self.get(doc).unwrap_or(&Value::Null))
    }
}

fn unescape(raw: &str) -> Result<String, PointerError> {
    if !raw.contains('~') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(PointerError::BadEscape),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// An array index token as RFC 6901 spells it: `0` or no leading zero.
fn index(t: &str) -> Option<usize> {
    let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits || (t.len() > 1 && t.starts_with('0')) {
        return None;
    }
    t.parse().ok()
}

/// JSON text of a value (serializing a `Value` cannot fail).
fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("a JSON value serializes"))
}

/// Where a location an operation writes sits relative to the pointer.
enum Relation {
    /// At the pointer or above it: the subtree is replaced, removed or
    /// created as a whole.
    Covers,
    /// Strictly below it, at these tokens relative to the pointer.
    Below(Vec<String>),
    /// Beside it in an array, where inserting or removing may shift the
    /// pointer's element (or make it appear): decided by the values.
    Shifts,
    /// Elsewhere: the subtree cannot change.
    Apart,
}

/// How `path` relates to `pointer`; `inserts` when the operation inserts
/// or removes at `path` (so array siblings shift), not only replaces.
fn relate(pointer: &[String], path: &PointerBuf, inserts: bool) -> Relation {
    let path: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
    let common = pointer
        .iter()
        .zip(&path)
        .take_while(|(a, b)| a == b)
        .count();
    if common == path.len() {
        return Relation::Covers;
    }
    if common == pointer.len() {
        return Relation::Below(path[common..].to_vec());
    }
    // They part at depth `common`. Only an insertion or a removal directly
    // in the parent they share can move the pointer's element, and only
    // at or before its index (`-` appends, which may make it appear).
    let beside = inserts && path.len() == common + 1;
    let ours = index(&pointer[common]);
    let theirs = &path[common];
    match (beside, ours) {
        (true, Some(i)) if theirs == "-" || index(theirs).is_some_and(|j| j <= i) => {
            Relation::Shifts
        }
        _ => Relation::Apart,
    }
}

fn relative(tokens: &[String]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(|t| Token::new(t.as_str())))
}

/// The change an event made to the subtree at `pointer`: `None` if the
/// value there is the same before and after (`before`/`after`: the value
/// at the pointer, `None` where absent, which reads as `null`), else a patch that turns `before`
/// (or `null`) into `after` (or `null`): the event's operations below the
/// pointer with relative paths, or one `replace` at `""`.
pub fn project(
    pointer: &Pointer,
    before: Option<&Value>,
    ops: &[PatchOperation],
    after: Option<&Value>,
) -> Option<Patch> {
    let p = &pointer.tokens[..];
    let mut rel = Vec::new();
    let mut whole = false;
    for op in ops {
        match op {
            PatchOperation::Add(o) => match relate(p, &o.path, true) {
                Relation::Below(t) => rel.push(PatchOperation::Add(json_patch::AddOperation {
                    path: relative(&t),
                    value: o.value.clone(),
                })),
                Relation::Apart => {}
                Relation::Covers | Relation::Shifts => whole = true,
            },
            PatchOperation::Remove(o) => match relate(p, &o.path, true) {
                Relation::Below(t) => rel.push(PatchOperation::Remove(RemoveOperation {
                    path: relative(&t),
                })),
                Relation::Apart => {}
                Relation::Covers | Relation::Shifts => whole = true,
            },
            PatchOperation::Replace(o) => match relate(p, &o.path, false) {
                Relation::Below(t) => rel.push(PatchOperation::Replace(ReplaceOperation {
                    path: relative(&t),
                    value: o.value.clone(),
                })),
                Relation::Apart => {}
                Relation::Covers | Relation::Shifts => whole = true,
            },
            PatchOperation::Move(o) => {
                match (relate(p, &o.from, true), relate(p, &o.path, true)) {
                    (Relation::Below(from), Relation::Below(path)) => {
                        rel.push(PatchOperation::Move(MoveOperation {
                            from: relative(&from),
                            path: relative(&path),
                        }))
                    }
                    (Relation::Apart, Relation::Apart) => {}
                    // In or out across the pointer: only the value says.
                    _ => whole = true,
                }
            }
            PatchOperation::Copy(o) => match relate(p, &o.path, true) {
                Relation::Apart => {}
                Relation::Below(path) => match relate(p, &o.from, false) {
                    Relation::Below(from) => rel.push(PatchOperation::Copy(CopyOperation {
                        from: relative(&from),
                        path: relative(&path),
                    })),
                    _ => whole = true,
                },
                Relation::Covers | Relation::Shifts => whole = true,
            },
            PatchOperation::Test(o) => {
                if let Relation::Below(t) = relate(p, &o.path, false) {
                    rel.push(PatchOperation::Test(TestOperation {
                        path: relative(&t),
                        value: o.value.clone(),
                    }));
                }
            }
        }
    }
    let wrote_below = rel.iter().any(|o| !matches!(o, PatchOperation::Test(_)));
    if !whole && !wrote_below {
        // Nothing written at, above, below or beside the pointer.
        return None;
    }
    // Absent reads as `null`: a value that appears as `null` is no change.
    if before.unwrap_or(&Value::Null) == after.unwrap_or(&Value::Null) {
        return None;
    }
    let replace = || replace_all(after);
    let (false, Some(b)) = (whole, before) else {
        return Some(replace());
    };
    // Only operations below the pointer: they are the change, unless the
    // check says otherwise (then the whole value is).
    let mut v = b.clone();
    let applies = crate::diff::apply_or_discard(&mut v, &rel).is_ok();
    if applies && Some(&v) == after {
        Some(Patch(rel))
    } else {
        Some(replace())
    }
}

/// The patch that makes a subtree `value` (`null` where absent) whatever
/// it was: `[{"op":"replace","path":"","value":…}]`.
pub fn replace_all(value: Option<&Value>) -> Patch {
    Patch(vec![PatchOperation::Replace(ReplaceOperation {
        path: PointerBuf::root(),
        value: value.cloned().unwrap_or(Value::Null),
    })])
}

/// [`project`] as JSON text, for an event whose patch is stored as text.
/// A patch that does not parse (never the case for a stored one) becomes
/// the whole value when it changed.
pub fn project_json(
    pointer: &Pointer,
    before: Option<&Value>,
    patch: &[u8],
    after: Option<&Value>,
) -> Option<Bytes> {
    let projected = match serde_json::from_slice::<Patch>(patch) {
        Ok(ops) => project(pointer, before, &ops.0, after)?,
        Err(_) if before.unwrap_or(&Value::Null) == after.unwrap_or(&Value::Null) => return None,
        Err(_) => replace_all(after),
    };
    Some(to_json(&projected))
}

/// Documents kept per resource while it has subtree subscribers: enough
/// for subscribers a few events behind to find an event's before and
/// after; one further behind reads the log.
pub const RECENT_VERSIONS: usize = 8;

/// A resource's newest documents, kept only while some feed of it has a
/// pointer (a [`VersionsGuard`] is alive). The documents are the store's
/// own `Arc`s: keeping one costs nothing until the head moves on.
#[derive(Default)]
pub struct Versions {
    subscribers: AtomicUsize,
    recent: Mutex<VecDeque<(EventId, Arc<Value>)>>,
}

impl Versions {
    /// Counts a subtree subscriber in until the guard is dropped.
    pub fn watch(self: &Arc<Self>) -> VersionsGuard {
        self.subscribers.fetch_add(1, Relaxed);
        VersionsGuard(self.clone())
    }

    /// Keeps `doc` as the document of event `id`, if anyone watches.
    pub fn record(&self, id: EventId, doc: &Arc<Value>) {
        if self.subscribers.load(Relaxed) == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let at = recent.partition_point(|(i, _)| *i < id);
        if recent.get(at).is_some_and(|(i, _)| *i == id) {
            return;
        }
        recent.insert(at, (id, doc.clone()));
        while recent.len() > RECENT_VERSIONS {
            recent.pop_front();
        }
    }

    /// The document of event `id`, if it is among the kept ones.
    pub fn get(&self, id: EventId) -> Option<Arc<Value>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, d)| d.clone())
    }
}

/// A subtree subscriber's hold on [`Versions`]; the documents are
/// released when the last one goes.
pub struct VersionsGuard(Arc<Versions>);

impl VersionsGuard {
    /// The versions held.
    pub fn versions(&self) -> &Versions {
        &self.0
    }
}

impl Drop for VersionsGuard {
    fn drop(&mut self) {
        if self.0.subscribers.fetch_sub(1, Relaxed) == 1 {
            self.0
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

/// Distinct pointers whose rewritten event a published event keeps; a
/// further pointer's subscribers each compute their own (same result).
pub const MAX_CACHED_POINTERS: usize = 64;

/// One projection: the rewritten event, or `None` where the event does
/// not touch the subtree.
type Slot = Arc<OnceLock<Option<Arc<Published>>>>;

/// A published event's rewritten forms, one per pointer, each computed
/// once (the first subscriber of that pointer computes, the others wait
/// for it and share it, with its own cache of encoded frames).
#[derive(Default, Debug)]
pub struct Projections {
    slots: Mutex<Vec<(Arc<str>, Slot)>>,
}

impl Projections {
    /// The event as seen through `pointer`, made by `make` on first use.
    pub fn get_or_make(
        &self,
        pointer: &Pointer,
        make: impl FnOnce() -> Option<Arc<Published>>,
    ) -> Option<Arc<Published>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.iter().find(|(k, _)| **k == *pointer.text) {
                Some((_, s)) => Some(s.clone()),
                None if slots.len() < MAX_CACHED_POINTERS => {
                    let s = Slot::default();
                    slots.push((pointer.text.clone(), s.clone()));
                    Some(s)
                }
                None => None,
            }
        };
        match slot {
            Some(s) => s.get_or_init(make).clone(),
            None => make(),
        }
    }
}

/// The published event `p` as seen through `pointer`, given the documents
/// before and after it (`before` `None` for a resource's first event).
pub fn rewrite(
    p: &Published,
    pointer: &Pointer,
    before: Option<&Value>,
    after: &Value,
) -> Option<Arc<Published>> {
    p.subtrees.get_or_make(pointer, || {
        let patch = project_json(
            pointer,
            before.and_then(|d| pointer.get(d)),
            &p.event.patch,
            pointer.get(after),
        )?;
        Some(Arc::new(Published::new(
            Event {
                id: p.event.id,
                patch,
            },
            p.prev,
        )))
    })
}

#[cfg(test)]
mod tests;
