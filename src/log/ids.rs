//! Event id allocation: strictly increasing per resource, even when the wall
//! clock steps back, because each id is allocated relative to the last one.
//!
//! Pure: the caller passes the clock and the last id, and stores the result.

use ulid::Ulid;

use crate::model::{EventId, MAX_ULID_MS};

/// The next event id after `last`, stamped `now_ms` when the clock allows.
///
/// If the clock is behind `last` (stepped back, or many ids in one
/// millisecond) the id is `last + 1`, keeping `last`'s time. Returns `None`
/// only when no id greater than `last` exists.
pub(crate) fn next(last: Option<EventId>, now_ms: u64) -> Option<EventId> {
    let now_ms = now_ms.min(MAX_ULID_MS);
    // Random bits keep ids unguessable across resources; the top bit is left
    // clear so that `+ 1` within a millisecond has room.
    let random = rand::random::<u128>() & ((1u128 << 79) - 1);
    let fresh = Ulid::from_parts(now_ms, random);
    match last {
        None => Some(EventId(fresh)),
        Some(l) if fresh > l.0 => Some(EventId(fresh)),
        Some(l) => l.successor(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strictly_increasing_whatever_the_clock(clock in proptest::collection::vec(0u64..10_000, 1..200)) {
            let mut last = None;
            for now in clock {
                let id = next(last, now).unwrap();
                if let Some(l) = last { prop_assert!(id > l); }
                last = Some(id);
            }
        }
    }

    #[test]
    fn uses_the_clock_when_it_moves_forward() {
        let a = next(None, 1000).unwrap();
        assert_eq!(a.time_ms(), 1000);
        let b = next(Some(a), 2000).unwrap();
        assert_eq!(b.time_ms(), 2000);
        let c = next(Some(b), 10).unwrap();
        assert_eq!(c.time_ms(), 2000);
        assert!(c > b);
    }
}
