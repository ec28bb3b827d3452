//! The one validator of webhook settings, for the API's body and the config
//! file's `[[webhook]]` tables alike, and the `[webhooks]` settings. What
//! needs the running server (the upstream guard on the URL, whether named
//! resources exist) is checked by the manager.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::schedule::Schedule;
use super::sign::{generate_secret, Key};
use crate::model::{
    parse_duration, redact_url, Point, ResourceId, Resources, SettingsError, Start, WebhookSpec,
};

/// Most resources one webhook may name.
pub const MAX_RESOURCES: usize = 10_000;
/// Most extra headers, and the longest value.
pub const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE: usize = 4096;

/// Headers a webhook may not set: hop-by-hop ones, those the request's
/// framing owns, and the signature's.
const REFUSED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
];

/// The fields of `POST /v1/webhooks` and of a `[[webhook]]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// `[A-Za-z0-9._-]{1,128}`; generated when absent.
    pub id: Option<String>,
    /// Where to POST.
    pub url: Option<String>,
    /// Resource ids, or `["*"]`.
    pub resources: Option<Vec<String>>,
    /// A JSON Pointer.
    pub path: Option<String>,
    /// A point, or `"now"`.
    pub from: Option<FromValue>,
    /// Send pending patches of a resource as one.
    pub coalesce: Option<bool>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// `whsec_` + base64; generated when absent.
    pub secret: Option<String>,
}

/// `from`: a point as text (ULID, RFC 3339, `"now"`) or Unix milliseconds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FromValue {
    /// Unix milliseconds.
    Millis(u64),
    /// Any other form.
    Text(String),
}

fn err(field: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        message: message.into(),
    }
}

/// A point for `from` and `replay`: a point in time, or (`now_ok`) `"now"`.
pub fn parse_from(v: &FromValue, now_ok: bool) -> Result<Start, String> {
    match v {
        FromValue::Millis(ms) => Ok(Start::Since(
            Point::parse(&ms.to_string()).map_err(|e| e.to_string())?,
        )),
        FromValue::Text(t) if now_ok && t.eq_ignore_ascii_case("now") => Ok(Start::Now),
        FromValue::Text(t) => Point::parse(t).map(Start::Since).map_err(|e| e.to_string()),
    }
}

/// Checks every field, in the order of the contract's body, and applies
/// the defaults (a generated id and secret). The boolean says whether the
/// secret was given.
pub fn validate(input: WebhookInput) -> Result<(WebhookSpec, bool), SettingsError> {
    let id = match input.id {
        Some(raw) => ResourceId::new(&raw).map_err(|e| err("id", format!("{raw:?}: {e}")))?,
        None => {
            let s = format!(
                "wh_{}",
                ulid::Ulid::generate().to_string().to_ascii_lowercase()
            );
            ResourceId::new(&s).expect("wh_ and a lower-case ULID is a valid id")
        }
    };
    let url = input.url.ok_or_else(|| err("url", "missing"))?;
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => {
            return Err(err(
                "url",
                format!("scheme {:?} is not http or https", u.scheme()),
            ))
        }
        Err(e) => return Err(err("url", format!("{:?}: {e}", redact_url(&url)))),
    }
    let list = input
        .resources
        .ok_or_else(|| err("resources", "missing: a list of resource ids, or [\"*\"]"))?;
    let resources = if list.iter().any(|r| r == "*") {
        if list.len() != 1 {
            return Err(err(
                "resources",
                "\"*\" (every resource) stands alone, without other ids",
            ));
        }
        Resources::All
    } else {
        if list.is_empty() {
            return Err(err(
                "resources",
                "empty: name resource ids, or [\"*\"] for every resource",
            ));
        }
        if list.len() > MAX_RESOURCES {
            return Err(err(
                "resources",
                format!("more than {MAX_RESOURCES} resources"),
            ));
        }
        let mut ids = list
            .iter()
            .map(|r| ResourceId::new(r).map_err(|e| err("resources", format!("{r:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        ids.dedup();
        Resources::List(ids)
    };
    if let Some(p) = &input.path {
        // The feed's own parser: a path accepted here is one the feed
        // follows.
        if let Err(e) = crate::feed::subtree::Pointer::parse(p) {
            return Err(err(
                "path",
                format!(
                    "{:?} is not a JSON Pointer (\"\" or \"/a/b\", with ~0 and ~1 the only escapes): {e}",
                    p.chars().take(80).collect::<String>()
                ),
            ));
        }
    }
    let from = match &input.from {
        None => Start::Fresh,
        Some(v) => parse_from(v, true).map_err(|m| err("from", m))?,
    };
    let headers = input.headers.unwrap_or_default();
    if headers.len() > MAX_HEADERS {
        return Err(err("headers", format!("more than {MAX_HEADERS} headers")));
    }
    for (k, v) in &headers {
        let Ok(name) = http::HeaderName::from_bytes(k.as_bytes()) else {
            return Err(err("headers", format!("invalid header name {k:?}")));
        };
        let lower = name.as_str();
        if REFUSED_HEADERS.contains(&lower) || lower.starts_with("webhook-") {
            return Err(err(
                "headers",
                format!("{k:?} is set by patchfeed itself (hop-by-hop, framing or signature)"),
            ));
        }
        // The value may be a secret: never shown.
        if v.len() > MAX_HEADER_VALUE || http::HeaderValue::from_str(v).is_err() {
            return Err(err("headers", format!("invalid value for header {k:?}")));
        }
    }
    let (secret, given) = match input.secret {
        Some(s) => {
            Key::from_secret(&s).map_err(|m| err("secret", m))?;
            (s, true)
        }
        None => (generate_secret(), false),
    };
    Ok((
        WebhookSpec {
            id,
            url,
            resources,
            path: input.path,
            from,
            coalesce: input.coalesce.unwrap_or(false),
            headers,
            secret,
        },
        given,
    ))
}

/// `[webhooks]`: how deliveries are made.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookSettings {
    /// One request's deadline, connection included. Default 10 s.
    pub timeout: Duration,
    /// The waits between attempts of a message. Default 5s, 30s, 2m, 10m,
    /// 30m, 1h, 3h, 6h, 12h, 24h.
    pub retry: Schedule,
    /// Requests in flight at once, over every webhook. Default 256.
    pub max_in_flight: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: Duration::from_secs(10),
            retry: Schedule::default(),
            max_in_flight: 256,
        }
    }
}

impl WebhookSettings {
    /// The most requests one webhook may have in flight: a quarter of
    /// `max_in_flight` (at least one), so that endpoints that hang cannot
    /// take every slot from the others.
    pub fn per_webhook(&self) -> usize {
        (self.max_in_flight / 4).max(1)
    }
}

/// `[webhooks]` as written in the file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    timeout: Option<String>,
    retry: Option<RawRetry>,
    max_in_flight: Option<usize>,
}

/// `retry`: a list of durations, or one string of comma-separated ones.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum RawRetry {
    List(Vec<String>),
    Text(String),
}

/// `[webhooks]`, checked; the error's field is the key under `webhooks.`.
pub fn settings(raw: RawSettings) -> Result<WebhookSettings, SettingsError> {
    let d = WebhookSettings::default();
    let timeout = match raw.timeout {
        None => d.timeout,
        Some(t) => {
            let t = parse_duration(&t).map_err(|m| err("timeout", m))?;
            if t.is_zero() {
                return Err(err("timeout", "must be more than 0"));
            }
            t
        }
    };
    let retry = match raw.retry {
        None => d.retry,
        Some(r) => {
            let parts: Vec<String> = match r {
                RawRetry::List(l) => l,
                RawRetry::Text(t) if t.trim().is_empty() => Vec::new(),
                RawRetry::Text(t) => t.split(',').map(|s| s.trim().to_owned()).collect(),
            };
            if parts.len() > 100 {
                return Err(err("retry", "at most 100 steps"));
            }
            let steps = parts
                .iter()
                .map(|p| parse_duration(p).map_err(|m| err("retry", m)))
                .collect::<Result<Vec<_>, _>>()?;
            Schedule::new(steps)
        }
    };
    let max_in_flight = match raw.max_in_flight {
        Some(0) => return Err(err("max_in_flight", "must be more than 0")),
        Some(n) => n,
        None => d.max_in_flight,
    };
    Ok(WebhookSettings {
        timeout,
        retry,
        max_in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> WebhookInput {
        WebhookInput {
            url: Some("http://127.0.0.1:9/hook".into()),
            resources: Some(vec!["b".into(), "a".into(), "b".into()]),
            ..WebhookInput::default()
        }
    }

    #[test]
    fn defaults_and_normal_form() {
        let (s, given) = validate(input()).unwrap();
        assert!(!given);
        assert!(s.id.as_str().starts_with("wh_"));
        assert!(s.secret.starts_with("whsec_"));
        assert_eq!(s.from, Start::Fresh);
        assert!(!s.coalesce);
        assert_eq!(
            s.resources,
            Resources::List(vec![
                ResourceId::new("a").unwrap(),
                ResourceId::new("b").unwrap()
            ])
        );
        let all = validate(WebhookInput {
            resources: Some(vec!["*".into()]),
            from: Some(FromValue::Text("now".into())),
            ..input()
        })
        .unwrap()
        .0;
        assert_eq!(all.resources, Resources::All);
        assert_eq!(all.from, Start::Now);
        let since = validate(WebhookInput {
            from: Some(FromValue::Millis(5)),
            ..input()
        })
        .unwrap()
        .0;
        assert_eq!(since.from, Start::Since(Point::Time(5)));
    }

    #[test]
    fn each_bad_field_is_named() {
        let h = |k: &str| Some(BTreeMap::from([(k.to_owned(), "v".to_owned())]));
        for (bad, field) in [
            (
                WebhookInput {
                    id: Some("a b".into()),
                    ..input()
                },
                "id",
            ),
            (
                WebhookInput {
                    url: None,
                    ..input()
                },
                "url",
            ),
            (
                WebhookInput {
                    url: Some("ftp://x/".into()),
                    ..input()
                },
                "url",
            ),
            (
                WebhookInput {
                    url: Some("not a url".into()),
                    ..input()
                },
                "url",
            ),
            (
                WebhookInput {
                    resources: None,
                    ..input()
                },
                "resources",
            ),
            (
                WebhookInput {
                    resources: Some(vec![]),
                    ..input()
                },
                "resources",
            ),
            (
                WebhookInput {
                    resources: Some(vec!["*".into(), "a".into()]),
                    ..input()
                },
                "resources",
            ),
            (
                WebhookInput {
                    resources: Some(vec!["a/b".into()]),
                    ..input()
                },
                "resources",
            ),
            (
                WebhookInput {
                    path: Some("a".into()),
                    ..input()
                },
                "path",
            ),
            (
                WebhookInput {
                    path: Some("/a~2".into()),
                    ..input()
                },
                "path",
            ),
            (
                WebhookInput {
                    path: Some("/a~".into()),
                    ..input()
                },
                "path",
            ),
            (
                WebhookInput {
                    from: Some(FromValue::Text("yesterday".into())),
                    ..input()
                },
                "from",
            ),
            (
                WebhookInput {
                    headers: h("Connection"),
                    ..input()
                },
                "headers",
            ),
            (
                WebhookInput {
                    headers: h("webhook-id"),
                    ..input()
                },
                "headers",
            ),
            (
                WebhookInput {
                    headers: h("Content-Type"),
                    ..input()
                },
                "headers",
            ),
            (
                WebhookInput {
                    headers: h("bad name"),
                    ..input()
                },
                "headers",
            ),
            (
                WebhookInput {
                    secret: Some("hunter2".into()),
                    ..input()
                },
                "secret",
            ),
        ] {
            let e = validate(bad.clone()).unwrap_err();
            assert_eq!(e.field, field, "{bad:?}: {e}");
        }
        assert!(validate(WebhookInput {
            path: Some("/a~0b/~1/".into()),
            ..input()
        })
        .is_ok());
        assert!(validate(WebhookInput {
            path: Some(String::new()),
            ..input()
        })
        .is_ok());
        assert!(validate(WebhookInput {
            headers: h("X-Custom"),
            ..input()
        })
        .is_ok());
    }

    #[test]
    fn settings_parse_and_name_their_key() {
        let raw: RawSettings =
            toml::from_str("timeout = \"2s\"\nretry = [\"100ms\", \"1s\"]\nmax_in_flight = 9")
                .unwrap();
        let s = settings(raw).unwrap();
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(
            s.retry.steps(),
            &[Duration::from_millis(100), Duration::from_secs(1)]
        );
        assert_eq!(s.per_webhook(), 2);
        let raw: RawSettings = toml::from_str("retry = \"1s, 2s\"").unwrap();
        assert_eq!(settings(raw).unwrap().retry.steps().len(), 2);
        for (text, field) in [
            ("timeout = \"0s\"", "timeout"),
            ("retry = [\"x\"]", "retry"),
            ("max_in_flight = 0", "max_in_flight"),
        ] {
            let raw: RawSettings = toml::from_str(text).unwrap();
            assert_eq!(settings(raw).unwrap_err().field, field);
        }
    }
}
