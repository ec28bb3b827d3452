//! Resource settings as users give them, and the one validator that turns
//! them into a [`ResourceSpec`]. The config file, the API, the streamdata
//! proxy and the demo all go through [`ResourceSpec::validate`]; each
//! default and bound is a constant on [`ResourceSpec`], written once.
//!
//! Pure: text is parsed into durations at the edge with [`parse_duration`]
//! and [`parse_retain`]; the upstream guard (which depends on
//! `allow_private_upstreams` and `allowed_hosts`) runs outside, in the API
//! and the registry.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{redact_url, Pages, PagesInput, ResourceId, ResourceSpec};

/// Resource settings as a user gives them: everything but the URL may be
/// left out and then takes its default; a push resource has no URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceInput {
    /// `None`: a fresh ULID in lower case.
    pub id: Option<String>,
    /// The upstream URL: it must parse and be `http` or `https`; `None`
    /// exactly when `push`.
    pub url: Option<String>,
    /// `None`: [`ResourceSpec::DEFAULT_INTERVAL`].
    pub interval: Option<Duration>,
    /// Headers sent to the upstream: valid HTTP names and values. Default
    /// none.
    pub headers: BTreeMap<String, String>,
    /// `None`: [`ResourceSpec::DEFAULT_SNAPSHOT_EVERY`].
    pub snapshot_every: Option<u32>,
    /// `None`: [`ResourceSpec::DEFAULT_RETAIN`]; `Some(None)`: forever.
    pub retain: Option<Option<Duration>>,
    /// Created by the streamdata proxy; see [`ResourceSpec::ad_hoc`].
    pub ad_hoc: bool,
    /// Fed by its owner, never polled.
    pub push: bool,
    /// A paginated upstream: how its pages are found. Default none.
    pub pages: Option<PagesInput>,
}

/// Why settings are not acceptable: the setting (as the config file names
/// it) and a message that shows the offending value, with credentials in a
/// URL redacted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// `id`, `url`, `push`, `interval`, `headers`, `snapshot_every`,
    /// `retain`, `pages` or one of its keys (`pages.next`, `pages.items`,
    /// `pages.param`, `pages.max`).
    pub field: &'static str,
    /// What is wrong, naming the value (a header value never: it may be a
    /// secret).
    pub message: String,
}

fn err(field: &'static str, message: String) -> SettingsError {
    SettingsError { field, message }
}

/// A humantime duration ("5s", "1h 30m", "250ms").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// Parses `retain`: a humantime duration, or `forever` (`None`: keep
/// everything).
pub fn parse_retain(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "forever" {
        return Ok(None);
    }
    parse_duration(s).map(Some)
}

/// `d` as humantime text, for messages.
fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Checks an interval against [`ResourceSpec::MIN_INTERVAL`]; the message
/// names the value. Also for `proxy.interval`, which has the same bound.
pub fn check_interval(d: Duration) -> Result<Duration, String> {
    if d < ResourceSpec::MIN_INTERVAL {
        return Err(format!(
            "{} is below the minimum of {}",
            shown(d),
            shown(ResourceSpec::MIN_INTERVAL)
        ));
    }
    Ok(d)
}

impl ResourceSpec {
    /// The one validator of resource settings: checks, in this order, id,
    /// url (given exactly when not `push`; it parses, and is http or
    /// https), interval, snapshot_every,
    /// headers (names and values valid in HTTP), retain and pages (not on
    /// a push resource; see [`Pages::validate`]), and applies the
    /// defaults. The first bad setting is the error.
    pub fn validate(input: ResourceInput) -> Result<ResourceSpec, SettingsError> {
        let id = match input.id {
            Some(raw) => ResourceId::new(&raw).map_err(|e| err("id", format!("{raw:?}: {e}")))?,
            None => fresh_id(),
        };
        let url = match (input.url, input.push) {
            (Some(u), false) => check_url(u)?,
            (None, true) => String::new(),
            (Some(u), true) => {
                return Err(err(
                    "push",
                    format!(
                        "a push resource has no url, but {:?} was given",
                        redact_url(&u)
                    ),
                ))
            }
            (None, false) => {
                return Err(err(
                    "url",
                    "missing: a resource needs a url unless push is true".into(),
                ))
            }
        };
        let interval = check_interval(input.interval.unwrap_or(Self::DEFAULT_INTERVAL))
            .map_err(|m| err("interval", m))?;
        let snapshot_every = input.snapshot_every.unwrap_or(Self::DEFAULT_SNAPSHOT_EVERY);
        if !(1..=Self::MAX_SNAPSHOT_EVERY).contains(&snapshot_every) {
            return Err(err(
                "snapshot_every",
                format!(
                    "{snapshot_every} is outside 1..={}",
                    Self::MAX_SNAPSHOT_EVERY
                ),
            ));
        }
        for (k, v) in &input.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(err("headers", format!("invalid header name {k:?}")));
            }
            // The value may be a secret: never shown.
            if http::HeaderValue::from_str(v).is_err() {
                return Err(err("headers", format!("invalid value for header {k:?}")));
            }
        }
        let pages = match (input.pages, input.push) {
            (None, _) => None,
            (Some(_), true) => {
                return Err(err(
                    "pages",
                    "a push resource is not polled, so it has no pages".into(),
                ))
            }
            (Some(p), false) => Some(Pages::validate(p).map_err(|(k, m)| err(k, m))?),
        };
        Ok(ResourceSpec {
            id,
            url,
            interval,
            headers: input.headers,
            snapshot_every,
            retain: input.retain.unwrap_or(Some(Self::DEFAULT_RETAIN)),
            ad_hoc: input.ad_hoc,
            push: input.push,
            pages,
        })
    }
}

/// An upstream URL that parses and is http or https.
fn check_url(raw: String) -> Result<String, SettingsError> {
    let url =
        url::Url::parse(&raw).map_err(|e| err("url", format!("{:?}: {e}", redact_url(&raw))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(
            "url",
            format!(
                "{:?}: scheme {:?} is not http or https",
                redact_url(&raw),
                url.scheme()
            ),
        ));
    }
    Ok(raw)
}

fn fresh_id() -> ResourceId {
    let s = ulid::Ulid::generate().to_string().to_ascii_lowercase();
    ResourceId::new(&s).expect("a lower-case ULID is 26 characters of [0-9a-z]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ResourceInput {
        ResourceInput {
            id: Some("r".into()),
            url: Some("https://example.com/x".into()),
            ..ResourceInput::default()
        }
    }

    fn error(i: ResourceInput) -> SettingsError {
        ResourceSpec::validate(i).expect_err("rejected")
    }

    #[test]
    fn issue_11_defaults_are_applied() {
        let s = ResourceSpec::validate(input()).unwrap();
        assert_eq!(s.interval, ResourceSpec::DEFAULT_INTERVAL);
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.snapshot_every, ResourceSpec::DEFAULT_SNAPSHOT_EVERY);
        assert_eq!(s.snapshot_every, 100);
        assert_eq!(s.retain, Some(ResourceSpec::DEFAULT_RETAIN));
        assert_eq!(s.retain, Some(Duration::from_secs(7 * 24 * 3600)));
        assert!(s.headers.is_empty());
        assert!(!s.ad_hoc);
        // Given values win over the defaults.
        let s = ResourceSpec::validate(ResourceInput {
            interval: Some(Duration::from_secs(1)),
            snapshot_every: Some(7),
            retain: Some(None),
            ad_hoc: true,
            ..input()
        })
        .unwrap();
        assert_eq!(
            (s.interval, s.snapshot_every, s.retain, s.ad_hoc),
            (Duration::from_secs(1), 7, None, true)
        );
    }

    #[test]
    fn issue_11_a_missing_id_is_a_fresh_lower_case_ulid() {
        let a = ResourceSpec::validate(ResourceInput {
            id: None,
            ..input()
        })
        .unwrap();
        let b = ResourceSpec::validate(ResourceInput {
            id: None,
            ..input()
        })
        .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.as_str().len(), ulid::ULID_LEN);
        assert_eq!(a.id.as_str(), a.id.as_str().to_ascii_lowercase());
    }

    #[test]
    fn issue_11_interval_bound() {
        let at = |ms| ResourceInput {
            interval: Some(Duration::from_millis(ms)),
            ..input()
        };
        assert_eq!(ResourceSpec::MIN_INTERVAL, Duration::from_millis(100));
        for ms in [100, 101, u64::MAX] {
            assert!(ResourceSpec::validate(at(ms)).is_ok(), "{ms}");
        }
        for (ms, shown) in [(99, "99ms"), (0, "0s")] {
            let e = error(at(ms));
            assert_eq!(e.field, "interval");
            assert_eq!(e.message, format!("{shown} is below the minimum of 100ms"));
        }
        assert_eq!(
            check_interval(Duration::from_millis(99)),
            Err(error(at(99)).message)
        );
    }

    #[test]
    fn issue_11_snapshot_every_bounds() {
        let at = |n| ResourceInput {
            snapshot_every: Some(n),
            ..input()
        };
        for n in [1, 2, 99_999, ResourceSpec::MAX_SNAPSHOT_EVERY] {
            assert!(ResourceSpec::validate(at(n)).is_ok(), "{n}");
        }
        for n in [0, 100_001, u32::MAX] {
            let e = error(at(n));
            assert_eq!(e.field, "snapshot_every");
            assert_eq!(e.message, format!("{n} is outside 1..=100000"));
        }
    }

    #[test]
    fn issue_11_ids_and_urls_name_their_field() {
        for id in ["", ".", "..", "a b", "a/b"] {
            let e = error(ResourceInput {
                id: Some(id.into()),
                ..input()
            });
            assert_eq!(e.field, "id", "{id:?}");
            assert!(e.message.starts_with(&format!("{id:?}: ")), "{e}");
        }
        assert!(ResourceSpec::validate(ResourceInput {
            id: Some("a".repeat(ResourceId::MAX_LEN)),
            ..input()
        })
        .is_ok());
        assert_eq!(
            error(ResourceInput {
                id: Some("a".repeat(ResourceId::MAX_LEN + 1)),
                ..input()
            })
            .field,
            "id"
        );
        for (url, says) in [
            ("not a url", "relative URL without a base"),
            ("http://", "empty host"),
            ("ftp://example.com/", "scheme \"ftp\" is not http or https"),
            ("file:///etc/passwd", "scheme \"file\""),
            ("ws://h/", "scheme \"ws\""),
        ] {
            let e = error(ResourceInput {
                url: Some(url.into()),
                ..input()
            });
            assert_eq!(e.field, "url", "{url}");
            assert!(e.message.contains(says), "{url}: {e}");
        }
        for url in ["http://h/", "https://h:8443/x?y=1", "HTTP://H/"] {
            let ok = ResourceInput {
                url: Some(url.into()),
                ..input()
            };
            assert!(ResourceSpec::validate(ok).is_ok(), "{url}");
        }
    }

    #[test]
    fn issue_11_url_credentials_stay_out_of_messages() {
        for url in [
            "ftp://user:hunter2@example.com/?token=hunter2",
            "http://user:hunter2@exa mple.com/",
        ] {
            let e = error(ResourceInput {
                url: Some(url.into()),
                ..input()
            });
            assert_eq!(e.field, "url");
            assert!(!e.message.contains("hunter2"), "{e}");
            assert!(e.message.contains("***"), "{e}");
        }
    }

    #[test]
    fn issue_11_headers_are_valid_http_and_values_stay_secret() {
        let with = |k: &str, v: &str| ResourceInput {
            headers: [(k.to_owned(), v.to_owned())].into(),
            ..input()
        };
        assert!(ResourceSpec::validate(with("Authorization", "Bearer x")).is_ok());
        assert!(ResourceSpec::validate(with("X-A", "")).is_ok());
        for (k, v) in [("bad name", "x"), ("", "x"), ("X:Y", "x")] {
            let e = error(with(k, v));
            assert_eq!(e.field, "headers");
            assert_eq!(e.message, format!("invalid header name {k:?}"));
        }
        let e = error(with("X-A", "secret\nvalue"));
        assert_eq!(e.field, "headers");
        assert!(!e.message.contains("secret"), "{e}");
    }

    #[test]
    fn issue_11_the_first_bad_setting_is_named() {
        let e = error(ResourceInput {
            id: Some("a b".into()),
            url: Some("ftp://h/".into()),
            interval: Some(Duration::ZERO),
            ..ResourceInput::default()
        });
        assert_eq!(e.field, "id");
        let e = error(ResourceInput {
            interval: Some(Duration::ZERO),
            snapshot_every: Some(0),
            ..input()
        });
        assert_eq!(e.field, "interval");
        assert_eq!(e.to_string(), "interval: 0s is below the minimum of 100ms");
    }

    #[test]
    fn issue_18_url_exactly_unless_push() {
        let s = ResourceSpec::validate(ResourceInput {
            url: None,
            push: true,
            ..input()
        })
        .expect("a push resource without a url");
        assert!(s.push && s.url.is_empty());
        assert!(!ResourceSpec::validate(input()).unwrap().push);
        let e = error(ResourceInput {
            push: true,
            url: Some("http://u:hunter2@h/".into()),
            ..input()
        });
        assert_eq!(e.field, "push");
        assert!(
            e.message.contains("has no url") && !e.message.contains("hunter2"),
            "{e}"
        );
        let e = error(ResourceInput {
            url: None,
            ..input()
        });
        assert_eq!(e.field, "url");
        assert!(e.message.contains("unless push is true"), "{e}");
    }

    #[test]
    fn issue_18_pages_are_checked_and_not_for_push_resources() {
        let pages = |max| {
            Some(PagesInput {
                next: "link".into(),
                max: Some(max),
                ..PagesInput::default()
            })
        };
        let s = ResourceSpec::validate(ResourceInput {
            pages: pages(3),
            ..input()
        })
        .unwrap();
        assert_eq!(s.pages.map(|p| p.max), Some(3));
        assert_eq!(ResourceSpec::validate(input()).unwrap().pages, None);
        let e = error(ResourceInput {
            pages: pages(0),
            ..input()
        });
        assert_eq!(e.to_string(), "pages.max: 0 is outside 1..=10000");
        let e = error(ResourceInput {
            url: None,
            push: true,
            pages: pages(3),
            ..input()
        });
        assert_eq!(e.field, "pages");
        assert!(e.message.contains("push resource"), "{e}");
    }

    #[test]
    fn retain_forms() {
        assert_eq!(parse_retain("forever").unwrap(), None);
        assert_eq!(parse_retain(" forever ").unwrap(), None);
        assert_eq!(parse_retain("1h").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retain("0s").unwrap(), Some(Duration::ZERO));
        for bad in ["a while", "-1", "", "Forever"] {
            let m = parse_retain(bad).unwrap_err();
            assert!(
                m.contains("not a duration") && m.contains(&format!("{bad:?}")),
                "{m}"
            );
        }
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }
}
