//! Domain types shared by every layer: resource ids, event ids, points in
//! time, events and resource settings.
//!
//! Pure: no IO, no async, no sled. Wire formats (JSON bodies, SSE frames) live
//! in `api`/`sse`; disk formats live in `log::codec`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use ulid::Ulid;

mod pages;
mod settings;
pub use pages::{PageNext, Pages, PagesInput};
mod webhook;
pub use settings::{check_interval, parse_duration, parse_retain, ResourceInput, SettingsError};
pub use webhook::{Cursor, Resources, Start, WebhookRecord, WebhookSpec};

/// Largest millisecond timestamp a ULID can carry (48 bits).
pub const MAX_ULID_MS: u64 = (1 << 48) - 1;
/// Mask of a ULID's 80 random bits.
const RANDOM_MASK: u128 = (1 << 80) - 1;

/// A resource id: `[A-Za-z0-9._-]{1,128}`, and never `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

/// Why a string is not a valid [`ResourceId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceIdError {
    /// Empty, or longer than 128 bytes.
    #[error("resource id must be 1 to 128 characters long")]
    Length,
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("resource id may only contain A-Z, a-z, 0-9, '.', '_' and '-'")]
    Charset,
    /// `.` or `..`, which would be path tricks in URLs.
    #[error("resource id may not be '.' or '..'")]
    Dots,
}

impl ResourceId {
    /// Longest id, in bytes (all of them ASCII).
    pub const MAX_LEN: usize = 128;

    /// Checks `s` against the id rules and keeps a copy of it.
    pub fn new(s: &str) -> Result<ResourceId, ResourceIdError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ResourceIdError::Length);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ResourceIdError::Charset);
        }
        if s == "." || s == ".." {
            return Err(ResourceIdError::Dots);
        }
        Ok(ResourceId(s.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ResourceId {
    type Err = ResourceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceId::new(s)
    }
}

/// An event id: a ULID whose time part is when the change was detected.
/// Strictly increasing within a resource, across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Ulid);

impl EventId {
    /// Milliseconds since the Unix epoch at which the change was detected.
    pub fn time_ms(self) -> u64 {
        self.0.timestamp_ms()
    }

    /// The event's time as RFC 3339 with milliseconds, in UTC.
    pub fn time_rfc3339(self) -> String {
        format_rfc3339_ms(self.time_ms())
    }

    /// The smallest id strictly greater than `self`, if any.
    pub fn successor(self) -> Option<EventId> {
        self.0.increment().ok().map(EventId)
    }

    /// The ULID's 128 bits, big-endian: byte order is id order, which the
    /// log's keys rely on.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The inverse of [`EventId::to_bytes`]; every 16 bytes are an id.
    pub fn from_bytes(b: [u8; 16]) -> EventId {
        EventId(Ulid::from_bytes(b))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ulid::ULID_LEN];
        f.write_str(self.0.array_to_str(&mut buf))
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with exactly three fractional
/// digits, e.g. `2026-11-22T10:00:00.123Z`.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Unreachable for 48-bit millisecond values; keep a total function.
        Err(_) => ms.to_string(),
    }
}

/// Milliseconds since the Unix epoch, now (wall clock).
pub fn now_ms() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(MAX_ULID_MS)
}

/// A point in a resource's history: an id (event id or any ULID) or an
/// instant. "As of T" includes every event whose id is ≤ T (for an id) or
/// whose time is ≤ T (for an instant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A ULID: an event id, or any other ULID (ids ≤ it are included).
    Id(Ulid),
    /// Unix milliseconds, clamped to the range a ULID can carry.
    Time(u64),
}

/// Parses a ULID: exactly 26 Crockford base32 characters whose value fits
/// in 128 bits. The `ulid` crate's own parser shifts the first character's
/// top two bits out, so `8ZZZ…` would read as a small id; here a first
/// character above `7` is an error (`None`), never a wrapped id.
pub fn parse_ulid(s: &str) -> Option<Ulid> {
    // 26 characters of 5 bits are 130 bits: the first may carry only 3.
    match s.as_bytes().first() {
        Some(b'0'..=b'7') if s.len() == ulid::ULID_LEN => Ulid::from_string(s).ok(),
        _ => None,
    }
}

/// Whether `s` has the shape of a ULID (26 base32 characters) but a value
/// past 128 bits, which [`parse_ulid`] refuses.
pub fn is_overflowing_ulid(s: &str) -> bool {
    s.len() == ulid::ULID_LEN && parse_ulid(s).is_none() && Ulid::from_string(s).is_ok()
}

/// Why a string is not a [`Point`]. Carries the offending value so that a
/// 400 can name it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a point in time: {}", if *.overflow {
    "a 26-character ULID must start with 0-7 (larger values do not fit in 128 bits)"
} else {
    "expected a ULID (26 characters), an RFC 3339 timestamp or Unix milliseconds"
})]
pub struct PointError {
    /// The refused input, cut to 80 bytes (with `…`) for the message.
    pub value: String,
    /// A ULID-shaped value too large for 128 bits.
    pub overflow: bool,
}

/// Longest input [`Point::parse`] will look at; anything longer is rejected
/// without further work.
const MAX_POINT_LEN: usize = 64;

impl Point {
    /// Parses a ULID (26 Crockford base32 characters, at most
    /// `7ZZZZZZZZZZZZZZZZZZZZZZZZZ`), an RFC 3339 timestamp (any offset) or a
    /// Unix time in milliseconds (ASCII digits, other than 26 of them
    /// starting with 8 or 9: those are an overflowing ULID, refused).
    pub fn parse(s: &str) -> Result<Point, PointError> {
        let err = || PointError {
            value: truncate_for_message(s),
            overflow: false,
        };
        let t = s.trim();
        if t.is_empty() || t.len() > MAX_POINT_LEN {
            return Err(err());
        }
        if let Some(u) = parse_ulid(t) {
            return Ok(Point::Id(u));
        }
        // Refused before the digits rule below: 26 digits starting with 8
        // or 9 are an (overflowing) ULID, not a time.
        if is_overflowing_ulid(t) {
            return Err(PointError {
                overflow: true,
                ..err()
            });
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for a u64 is still "a time far in the future".
            let ms = t.parse::<u64>().unwrap_or(u64::MAX);
            return Ok(Point::Time(ms.min(MAX_ULID_MS)));
        }
        let dt = OffsetDateTime::parse(t, &Rfc3339).map_err(|_| err())?;
        let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
        let ms = u64::try_from(ms.max(0)).unwrap_or(MAX_ULID_MS);
        Ok(Point::Time(ms.min(MAX_ULID_MS)))
    }

    /// The largest ULID included by this point: every event id ≤ this bound
    /// is "as of" the point.
    pub fn upper_bound(self) -> Ulid {
        match self {
            Point::Id(u) => u,
            Point::Time(ms) => Ulid::from_parts(ms.min(MAX_ULID_MS), RANDOM_MASK),
        }
    }
}

impl FromStr for Point {
    type Err = PointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Point::parse(s)
    }
}

fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One change to a resource: its id and its RFC 6902 patch as JSON text.
/// The patch is kept as text so catch-up can send it without re-encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's id; its time is when the change was detected.
    pub id: EventId,
    /// A JSON array of RFC 6902 operations, UTF-8 JSON text.
    pub patch: Bytes,
}

/// Settings of a registered resource, as given by the config file or the
/// API, after [`ResourceSpec::validate`] (`model::settings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSpec {
    /// The resource's id, unique among resources.
    pub id: ResourceId,
    /// The upstream: an `http` or `https` URL, as given. It may hold
    /// credentials: show it through [`redact_url`].
    pub url: String,
    /// Time between the starts of two polls; at least
    /// [`ResourceSpec::MIN_INTERVAL`].
    pub interval: Duration,
    /// Headers sent to the upstream. May hold secrets: never shown by the API.
    pub headers: BTreeMap<String, String>,
    /// Patches between stored snapshots, 1 ..=
    /// [`ResourceSpec::MAX_SNAPSHOT_EVERY`].
    pub snapshot_every: u32,
    /// History kept; `None` keeps everything.
    pub retain: Option<Duration>,
    /// Created by the streamdata proxy for an unknown URL, and so removed
    /// after `proxy.idle` without subscribers. Stored with the resource,
    /// never inferred from its id: a resource registered under an id that
    /// looks like the proxy's is never reaped.
    pub ad_hoc: bool,
    /// Fed by its owner (`PUT`/`PATCH …/document`), never polled; then
    /// `url` is empty.
    pub push: bool,
    /// A paginated upstream: the document is the concatenation of its
    /// pages' arrays (`poll::pages`). `None`: one page, the document.
    pub pages: Option<Pages>,
}

/// Every default and bound of resource settings, written once: the
/// validator, the config file, the API, the proxy and the demo use these.
impl ResourceSpec {
    /// Shortest poll interval, of resources and of `proxy.interval`: 100 ms.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    /// Poll interval when none is given: 5 s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// `snapshot_every` when none is given: 100 patches.
    pub const DEFAULT_SNAPSHOT_EVERY: u32 = 100;
    /// Largest `snapshot_every`: 100000 patches.
    pub const MAX_SNAPSHOT_EVERY: u32 = 100_000;
    /// History kept when no `retain` is given: 7 days.
    pub const DEFAULT_RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);
    /// History of an ad-hoc resource: as long as it lives, at most a day.
    pub const AD_HOC_RETAIN: Duration = Duration::from_secs(24 * 3600);
}

/// 64-bit FNV-1a: a stable (across runs and Rust versions) short hash for
/// ad-hoc resource ids. Not a secret: only the URL goes in, never headers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The id the streamdata proxy gives an ad-hoc resource for `url`
/// (`sd-<hash>`; `-2`…`-16` are appended for other headers).
pub fn ad_hoc_base(url: &str) -> String {
    format!("sd-{:016x}", fnv1a(normalize_url(url).as_bytes()))
}

/// Whether `id` is one the proxy derives for `url` (`sd-<hash>[-<n>]`).
/// Only for records written before the ad-hoc flag was stored
/// (`log::codec`): everywhere else the stored flag decides.
pub fn is_ad_hoc_id(id: &ResourceId, url: &str) -> bool {
    let base = ad_hoc_base(url);
    match id.as_str().strip_prefix(base.as_str()) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('-')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (2..=16).contains(&n)),
        None => false,
    }
}

/// URLs compare after parsing (scheme/host case, default port, empty path).
pub fn normalize_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.to_string(),
        Err(_) => url.to_owned(),
    }
}

// ---- URLs shown to clients and logs

/// What a redacted secret is shown as.
pub const REDACTED: &str = "***";

/// Query parameter names whose values [`redact_url`] hides: compared
/// case-insensitively, after percent-decoding, with `-` read as `_`.
pub const CREDENTIAL_NAMES: &[&str] = &[
    "token",
    "access_token",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "signature",
    "x_sd_token",
    "session",
    "sessionid",
    "credential",
    "credentials",
];

/// Suffixes that make a name credential-looking too (`refresh_token`,
/// `x_api_key`, `app_secret`, `x_amz_signature`, ...).
const CREDENTIAL_SUFFIXES: &[&str] = &["token", "_key", "secret", "password", "signature"];

/// Whether a query parameter's (decoded) name looks like it carries a
/// credential.
pub fn is_credential_name(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    CREDENTIAL_NAMES.contains(&n.as_str()) || CREDENTIAL_SUFFIXES.iter().any(|s| n.ends_with(s))
}

/// `url` as shown to clients and written to logs: a password in the
/// userinfo becomes `***` (a lone user name too: `https://<token>@host` is
/// a common way to pass a token), and so does the value of every query
/// parameter whose name [`is_credential_name`]. Everything else is kept
/// verbatim. Polling uses the real URL; this is for display only.
pub fn redact_url(url: &str) -> String {
    let out = redact_verbatim(url);
    // The text surgery follows the URL grammar; if the parser the fetcher
    // uses still finds a secret in the result (an exotic spelling), show
    // the parser's own, normalised, redaction instead.
    match url::Url::parse(&out) {
        Ok(u) if shows_secret(&u) => redact_parsed(u),
        _ => out,
    }
}

fn redact_verbatim(url: &str) -> String {
    let (before_fragment, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (head, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    let mut out = redact_userinfo(head);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    out.push_str(fragment);
    out
}

/// `scheme://user:pw@host/path` → `scheme://user:***@host/path`.
fn redact_userinfo(head: &str) -> String {
    let Some(colon) = head.find(':') else {
        return head.to_owned();
    };
    let rest = &head[colon + 1..];
    let slashes = rest.len() - rest.trim_start_matches(['/', '\\']).len();
    let auth_start = colon + 1 + slashes;
    let authority_len = head[auth_start..]
        .find(['/', '\\'])
        .unwrap_or(head.len() - auth_start);
    let authority = &head[auth_start..auth_start + authority_len];
    let Some(at) = authority.rfind('@') else {
        return head.to_owned();
    };
    let userinfo = &authority[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None if userinfo.is_empty() => String::new(),
        None => REDACTED.to_owned(),
    };
    format!("{}{shown}{}", &head[..auth_start], &head[auth_start + at..])
}

fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|part| {
            let (raw_name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if !value.is_empty() && is_credential_name(&name) {
                format!("{raw_name}={REDACTED}")
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn shows_secret(u: &url::Url) -> bool {
    let pw = u.password().is_some_and(|p| p != REDACTED);
    let user = u.password().is_none() && !u.username().is_empty() && u.username() != REDACTED;
    let query = u
        .query_pairs()
        .any(|(k, v)| is_credential_name(&k) && !v.is_empty() && v != REDACTED);
    pw || user || query
}

fn redact_parsed(mut u: url::Url) -> String {
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    } else if !u.username().is_empty() {
        let _ = u.set_username(REDACTED);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_credential_name(&k) && !v.is_empty() {
                    REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A resource as stored: its settings plus when it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRecord {
    /// Its settings, validated.
    pub spec: ResourceSpec,
    /// Unix milliseconds.
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resource_ids() {
        assert!(ResourceId::new("btc-eur").is_ok());
        assert!(ResourceId::new("a.b_c-D9").is_ok());
        assert_eq!(ResourceId::new(""), Err(ResourceIdError::Length));
        assert_eq!(
            ResourceId::new(&"a".repeat(129)),
            Err(ResourceIdError::Length)
        );
        assert!(ResourceId::new(&"a".repeat(128)).is_ok());
        assert_eq!(ResourceId::new("a/b"), Err(ResourceIdError::Charset));
        assert_eq!(ResourceId::new("a%2Fb"), Err(ResourceIdError::Charset));
        assert_eq!(ResourceId::new("a\nb"), Err(ResourceIdError::Charset));
        assert_eq!(ResourceId::new(".."), Err(ResourceIdError::Dots));
        assert_eq!(ResourceId::new("."), Err(ResourceIdError::Dots));
        assert!(ResourceId::new("...").is_ok());
    }

    #[test]
    fn points() {
        let u = Ulid::from_parts(1_700_000_000_000, 42);
        assert_eq!(Point::parse(&u.to_string()), Ok(Point::Id(u)));
        assert_eq!(
            Point::parse("1700000000000"),
            Ok(Point::Time(1_700_000_000_000))
        );
        assert_eq!(
            Point::parse("2023-11-14T22:13:20Z"),
            Ok(Point::Time(1_700_000_000_000))
        );
        assert_eq!(
            Point::parse("2023-11-14T23:13:20.5+01:00"),
            Ok(Point::Time(1_700_000_000_500))
        );
        assert_eq!(Point::parse("1969-01-01T00:00:00Z"), Ok(Point::Time(0)));
        assert_eq!(
            Point::parse("99999999999999999999999999999"),
            Ok(Point::Time(MAX_ULID_MS))
        );
        for bad in [
            "",
            "abc",
            "2023-13-01T00:00:00Z",
            "-5",
            "1.5",
            &"9".repeat(100),
        ] {
            let e = Point::parse(bad).unwrap_err();
            assert!(e.to_string().contains("not a point"), "{e}");
        }
    }

    #[test]
    fn issue_17_overflowing_ulids_are_rejected_not_wrapped() {
        let max = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
        assert_eq!(parse_ulid(max), Some(Ulid(u128::MAX)));
        assert_eq!(parse_ulid("00000000000000000000000000"), Some(Ulid(0)));
        assert_eq!(parse_ulid(&max.to_ascii_lowercase()), Some(Ulid(u128::MAX)));
        for bad in [
            "80000000000000000000000000",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "zzzzzzzzzzzzzzzzzzzzzzzzzz",
            "90000000000000000000000001",
        ] {
            assert_eq!(parse_ulid(bad), None, "{bad}");
            assert!(is_overflowing_ulid(bad), "{bad}");
            let e = Point::parse(bad).unwrap_err();
            assert!(e.overflow, "{bad}");
            let msg = e.to_string();
            assert!(msg.contains(bad) && msg.contains("not a point"), "{msg}");
        }
        // Not ULID-shaped at all: the ordinary error, not "overflow".
        assert!(!is_overflowing_ulid("7ZZZZZZZZZZZZZZZZZZZZZZZZ"));
        assert!(!is_overflowing_ulid("8ZZZZZZZZZZZZZZZZZZZZZZZZU"));
        assert_eq!(parse_ulid("8ZZZZZZZZZZZZZZZZZZZZZZZZU"), None);
        // 27 digits are still a far-future time, i.e. "now".
        assert_eq!(
            Point::parse("800000000000000000000000000"),
            Ok(Point::Time(MAX_ULID_MS))
        );
    }

    #[test]
    fn issue_17_credentials_in_urls_are_redacted() {
        for (url, shown) in [
            (
                "https://user:pw@api.example.com/x?api_key=SECRET&cur=EUR",
                "https://user:***@api.example.com/x?api_key=***&cur=EUR",
            ),
            (
                "http://ghp_tok@h/x?a=1&Token=t&X-Sd-Token=s&ACCESS_TOKEN=a",
                "http://***@h/x?a=1&Token=***&X-Sd-Token=***&ACCESS_TOKEN=***",
            ),
            (
                "http://h/x?%61pi_key=S&refresh-token=R&x_amz_signature=Z&sig=1&k=2#frag",
                "http://h/x?%61pi_key=***&refresh-token=***&x_amz_signature=***&sig=***&k=2#frag",
            ),
            (
                "HTTP://u:p@h:8080?secret=s",
                "HTTP://u:***@h:8080?secret=***",
            ),
            ("http://h/p@q?x=1", "http://h/p@q?x=1"),
            ("http://h/x?key&key=", "http://h/x?key&key="),
            ("http://@h/", "http://@h/"),
            (
                "https://api.example.com/ticker?cur=EUR",
                "https://api.example.com/ticker?cur=EUR",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // Spellings only the parser reads as userinfo are redacted too.
        let odd = redact_url("http:\\\\u:pw@h/");
        assert!(!odd.contains("pw"), "{odd}");
    }

    #[test]
    fn ad_hoc_ids_are_stable_and_recognised() {
        let url = "https://API.example.com:443/ticker?cur=EUR";
        let base = ad_hoc_base(url);
        assert_eq!(base, ad_hoc_base("https://api.example.com/ticker?cur=EUR"));
        // Fixed forever: ids of stored ad-hoc resources depend on it.
        assert_eq!(
            ad_hoc_base("https://api.example.com/x"),
            format!("sd-{:016x}", fnv1a(b"https://api.example.com/x"))
        );
        assert!(ResourceId::new(&base).is_ok());
        let id = |s: &str| ResourceId::new(s).unwrap();
        assert!(is_ad_hoc_id(&id(&base), url));
        assert!(is_ad_hoc_id(&id(&format!("{base}-2")), url));
        assert!(!is_ad_hoc_id(&id(&format!("{base}-17")), url));
        assert!(!is_ad_hoc_id(&id(&base), "https://other.example.com/"));
        assert!(!is_ad_hoc_id(&id("btc-eur"), url));
    }

    #[test]
    fn time_bound_includes_whole_millisecond() {
        let p = Point::Time(1000);
        assert!(Ulid::from_parts(1000, RANDOM_MASK) <= p.upper_bound());
        assert!(Ulid::from_parts(1001, 0) > p.upper_bound());
    }

    #[test]
    fn rfc3339_ms() {
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    proptest! {
        #[test]
        fn point_parse_never_panics(s in ".{0,80}") {
            let _ = Point::parse(&s);
        }

        #[test]
        fn redacted_urls_never_show_the_password_or_credential_values(
            user in "[a-z]{0,5}",
            pw in "[A-Za-z0-9%]{1,8}",
            name in "(api_key|token|sig|x-sd-token|cur|id)",
            value in "[A-Za-z0-9]{1,8}",
        ) {
            let url = format!("https://{user}:Q{pw}@h.example/p?{name}=V{value}&n=1");
            let shown = redact_url(&url);
            let needle = format!("Q{pw}");
            prop_assert!(!shown.contains(&needle), "{}", shown);
            let v = format!("V{value}");
            prop_assert_eq!(shown.contains(&v), !is_credential_name(&name), "{}", shown);
        }

        #[test]
        fn parse_ulid_is_the_inverse_of_display(r in any::<u128>()) {
            let u = Ulid(r);
            prop_assert_eq!(parse_ulid(&u.to_string()), Some(u));
        }

        #[test]
        fn ulid_points_round_trip(ms in 0u64..=MAX_ULID_MS, r in any::<u128>()) {
            let u = Ulid::from_parts(ms, r & RANDOM_MASK);
            prop_assert_eq!(Point::parse(&u.to_string()), Ok(Point::Id(u)));
            prop_assert_eq!(EventId(u).to_string(), u.to_string());
        }

        #[test]
        fn time_points_round_trip(ms in 0u64..=253_402_300_799_999u64) {
            prop_assert_eq!(Point::parse(&ms.to_string()), Ok(Point::Time(ms)));
            prop_assert_eq!(Point::parse(&format_rfc3339_ms(ms)), Ok(Point::Time(ms)));
        }
    }
}
