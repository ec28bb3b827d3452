//! One poll of a paginated upstream: every page in order, all or nothing.
//!
//! Pages are fetched one after another (the next address is only known
//! from the page before), each with the fetcher's own bounds (timeout,
//! guard, redirects). The document is one JSON array, every page's `items`
//! in order. Any failing page, a next address seen before (`page_loop`),
//! a next page after `max` (`too_many_pages`), more than the body limit in
//! all (`too_large`), a next URL on another origin than the first page's
//! (`page_origin`) or failing the guard fails the whole poll: no partial
//! collection ever reaches the log.
//!
//! Conditional requests per page: a page whose last 200 carried an `ETag`
//! or `Last-Modified` is kept ([`PageCache`], bounded by the same byte
//! limit) and asked for with its validators. Every page 304 is "not
//! modified"; otherwise a 304 page contributes its kept items and next
//! address. The cache is replaced only once a poll's document is stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use url::Url;

use super::fetch::{Answer, FetchError, Fetched, Fetcher, Validators};
use crate::metrics::Metrics;
use crate::model::{redact_url, PageNext, Pages, ResourceSpec};

/// Longest cursor taken from a page, in bytes.
pub const MAX_CURSOR_BYTES: usize = 4096;

/// A page kept from its last 200 for conditional requests.
#[derive(Clone, Debug)]
struct Kept {
    validators: Validators,
    /// Shared with the poll that reuses it: a 304 page costs no copy until
    /// the document is assembled (and none at all when every page is 304).
    items: Arc<Vec<Value>>,
    next: Option<Url>,
    bytes: usize,
}

/// The pages of the last stored poll that gave validators, by URL; at most
/// `max` pages and the body limit in bytes (they are one poll's pages).
#[derive(Clone, Debug, Default)]
pub struct PageCache {
    pages: HashMap<String, Kept>,
}

/// What is being fetched now, reported before each page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The page being fetched, from 1.
    pub page: u32,
    /// Items collected from the pages before it.
    pub items: u64,
    /// Body bytes received so far in this poll.
    pub bytes: u64,
    /// Pages that answered 304 so far.
    pub not_modified: u32,
    /// The page's URL, redacted.
    pub url: String,
}

/// A poll's pages, all fetched.
#[derive(Debug)]
pub struct Collected {
    /// `NotModified` when every page answered 304; otherwise the document
    /// (validators empty: they are per page, in `cache`).
    pub fetched: Fetched,
    /// The cache to keep once the document is stored.
    pub cache: PageCache,
    /// Pages in the collection.
    pub pages: u32,
    /// Pages that answered 304.
    pub not_modified: u32,
    /// Items in the collection.
    pub items: u64,
    /// Body bytes received (304 pages: none).
    pub bytes: u64,
}

/// Fetches every page of `spec` (whose `pages` is `pages`) in order; see
/// the module docs. `progress` is told before each page.
pub async fn collect(
    fetcher: &Fetcher,
    spec: &ResourceSpec,
    pages: &Pages,
    cache: &PageCache,
    metrics: &Metrics,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Collected, FetchError> {
    let first = Url::parse(&spec.url)
        .map_err(|e| FetchError::InvalidUrl(format!("{:?}: {e}", redact_url(&spec.url))))?;
    let limit = fetcher.max_body();
    let mut url = first.clone();
    let mut seen: HashSet<String> = HashSet::from([url.as_str().to_owned()]);
    let mut origin = None;
    // Every page's items in order, assembled into one array at the end.
    let mut parts: Vec<Arc<Vec<Value>>> = Vec::new();
    let mut count = 0usize;
    let mut kept = PageCache::default();
    // Bytes the document is made of (fresh and kept pages), and received.
    let mut held = 0usize;
    let mut received = 0u64;
    let mut not_modified = 0u32;
    let mut page = 1u32;
    loop {
        progress(&Progress {
            page,
            items: count as u64,
            bytes: received,
            not_modified,
            url: redact_url(url.as_str()),
        });
        let on_page = |error: FetchError| FetchError::OnPage {
            page,
            url: redact_url(url.as_str()),
            error: Box::new(error),
        };
        let cached = cache.pages.get(url.as_str());
        let validators = cached.map(|c| c.validators.clone()).unwrap_or_default();
        let answer: Answer = fetcher
            .fetch_page(url.as_str(), &spec.headers, &validators, limit - held)
            .await
            .map_err(|e| match e {
                // The cap was what is left of the limit for all pages.
                FetchError::TooLarge { .. } if held > 0 => {
                    on_page(FetchError::PagesTooLarge { limit })
                }
                e => on_page(e),
            })?;
        // The first page's origin is where it answered from (after its
        // redirects): its next URLs are made by that server.
        let here = answer.url.origin();
        match &origin {
            None => origin = Some(here),
            Some(o) if *o != here => {
                return Err(on_page(FetchError::PageOrigin(format!(
                    "redirected to {}",
                    redact_url(answer.url.as_str())
                ))))
            }
            Some(_) => {}
        }
        Metrics::inc(match answer.fetched {
            Fetched::NotModified => &metrics.pages_not_modified,
            Fetched::Document { .. } => &metrics.pages_fetched,
        });
        let (page_items, next, bytes) = match answer.fetched {
            Fetched::NotModified => {
                // A 304 answers only a request with validators, which only
                // a kept page has (`fetch_page` refuses any other 304).
                let Some(c) = cached else {
                    return Err(on_page(FetchError::PageNext(
                        "a 304 for a page that was not kept".into(),
                    )));
                };
                not_modified += 1;
                kept.pages.insert(url.as_str().to_owned(), c.clone());
                (Arc::clone(&c.items), c.next.clone(), c.bytes)
            }
            Fetched::Document { doc, validators } => {
                received += answer.bytes as u64;
                let next = next_of(&pages.next, &doc, &answer.links, &answer.url, &first)
                    .map_err(on_page)?;
                let page_items = Arc::new(items_of(doc, &pages.items).map_err(on_page)?);
                if !validators.is_empty() {
                    kept.pages.insert(
                        url.as_str().to_owned(),
                        Kept {
                            validators,
                            items: Arc::clone(&page_items),
                            next: next.clone(),
                            bytes: answer.bytes,
                        },
                    );
                }
                (page_items, next, answer.bytes)
            }
        };
        held += bytes;
        if held > limit {
            return Err(on_page(FetchError::PagesTooLarge { limit }));
        }
        count += page_items.len();
        parts.push(page_items);
        let Some(next) = next else { break };
        // Whatever is wrong with the next address is the next page's
        // error. The guard first (what can be checked before connecting;
        // the resolver checks the rest), then the origin, then the loop.
        let on_next = |error: FetchError| FetchError::OnPage {
            page: page + 1,
            url: redact_url(next.as_str()),
            error: Box::new(error),
        };
        fetcher.check_url(next.as_str()).map_err(on_next)?;
        if Some(next.origin()) != origin {
            return Err(on_next(FetchError::PageOrigin(format!(
                "not the first page's origin, {}",
                origin
                    .as_ref()
                    .map_or_else(String::new, |o| o.ascii_serialization())
            ))));
        }
        if !seen.insert(next.as_str().to_owned()) {
            return Err(on_next(FetchError::PageLoop(
                "this URL was fetched before in this poll".into(),
            )));
        }
        if page >= pages.max {
            return Err(FetchError::TooManyPages { max: pages.max });
        }
        page += 1;
        url = next;
    }
    let fetched = if not_modified == page {
        Fetched::NotModified
    } else {
        // A page no cache holds (it gave no validators) moves; a kept one
        // is copied, the cache keeping its own.
        let mut items = Vec::with_capacity(count);
        for part in parts {
            match Arc::try_unwrap(part) {
                Ok(own) => items.extend(own),
                Err(shared) => items.extend(shared.iter().cloned()),
            }
        }
        Fetched::Document {
            doc: Value::Array(items),
            validators: Validators::default(),
        }
    };
    let n = count as u64;
    Ok(Collected {
        fetched,
        cache: kept,
        pages: page,
        not_modified,
        items: n,
        bytes: received,
    })
}

/// The page's array at the `items` pointer, taken out of the page.
fn items_of(mut doc: Value, pointer: &str) -> Result<Vec<Value>, FetchError> {
    match doc.pointer_mut(pointer).map(Value::take) {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(FetchError::PageItems(format!(
            "items at {pointer:?} are {}, not an array",
            kind(&other)
        ))),
        None => Err(FetchError::PageItems(format!(
            "no items at {pointer:?} in the page"
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The next page's URL, or `None` on the last page.
fn next_of(
    next: &PageNext,
    doc: &Value,
    links: &[String],
    here: &Url,
    first: &Url,
) -> Result<Option<Url>, FetchError> {
    let target = match next {
        PageNext::Link => match next_link(links)? {
            None => return Ok(None),
            Some(t) => t,
        },
        PageNext::Url(pointer) => match doc.pointer(pointer) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) if s.is_empty() => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(FetchError::PageNext(format!(
                    "the next page at {pointer:?} is {}, not a URL",
                    kind(other)
                )))
            }
        },
        PageNext::Cursor { pointer, param } => {
            let cursor = match doc.pointer(pointer) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) if s.is_empty() => return Ok(None),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(other) => {
                    return Err(FetchError::PageNext(format!(
                        "the cursor at {pointer:?} is {}, not a string or a number",
                        kind(other)
                    )))
                }
            };
            if cursor.len() > MAX_CURSOR_BYTES {
                return Err(FetchError::PageNext(format!(
                    "the cursor at {pointer:?} is over {MAX_CURSOR_BYTES} bytes"
                )));
            }
            return Ok(Some(with_param(first, param, &cursor)));
        }
    };
    here.join(&target).map(Some).map_err(|e| {
        FetchError::PageNext(format!(
            "the next page {:?} is not a URL: {e}",
            redact_url(&target)
        ))
    })
}

/// The target of the first `rel="next"` link (RFC 8288: relation types
/// are case-insensitive, `rel` may hold several), parsed by
/// `nom-rfc8288`. A `Link` header that does not parse fails the page:
/// whether it named a next page cannot be known.
fn next_link(links: &[String]) -> Result<Option<String>, FetchError> {
    for raw in links {
        let parsed = nom_rfc8288::complete::link_lenient(raw)
            .map_err(|e| FetchError::PageNext(format!("the Link header does not parse: {e}")))?;
        for link in parsed.into_iter().flatten() {
            let is_next = link.params.iter().any(|p| {
                p.key.eq_ignore_ascii_case("rel")
                    && p.val.as_deref().is_some_and(|v| {
                        v.split_ascii_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                    })
            });
            if is_next {
                return Ok(Some(link.url.to_owned()));
            }
        }
    }
    Ok(None)
}

/// `base` with its query parameter `param` set to `value` (any earlier
/// `param` removed; every other parameter kept as it was written).
fn with_param(base: &Url, param: &str, value: &str) -> Url {
    let mut out = base.clone();
    let kept: Vec<&str> = base
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !pair.is_empty()
                && form_urlencoded::parse(format!("{name}=").as_bytes())
                    .next()
                    .is_none_or(|(n, _)| n != param)
        })
        .collect();
    let mut query = kept.join("&");
    if !query.is_empty() {
        query.push('&');
    }
    query.extend(form_urlencoded::byte_serialize(param.as_bytes()));
    query.push('=');
    query.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    out.set_query(Some(&query));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_18_link_headers_follow_rfc_8288() {
        let l = |v: &[&str]| next_link(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            l(&[r#"<https://h/x?page=2>; rel="next", <https://h/x?page=9>; rel="last""#]).unwrap(),
            Some("https://h/x?page=2".into())
        );
        // Several relation types, any case; a comma inside a quoted value.
        assert_eq!(
            l(&[r#"</a>; rel="prev"; title="a, b", </b?c=1,2>; rel="NEXT last""#]).unwrap(),
            Some("/b?c=1,2".into())
        );
        // A second Link header.
        assert_eq!(
            l(&[r#"</first>; rel=first"#, r#"</n>; rel=next"#]).unwrap(),
            Some("/n".into())
        );
        assert_eq!(l(&[r#"</a>; rel="last""#]).unwrap(), None);
        assert_eq!(l(&[]).unwrap(), None);
        // "nextish" is not "next".
        assert_eq!(l(&[r#"</a>; rel="nextish""#]).unwrap(), None);
        let e = l(&["no angle brackets; rel=next"]).unwrap_err();
        assert_eq!(e.code(), "page_next");
    }

    #[test]
    fn issue_18_next_urls_and_cursors_from_the_body() {
        let here = Url::parse("http://h:1/list?page=2").unwrap();
        let first = Url::parse("http://h:1/list?x=a%20b&cursor=old&y=1").unwrap();
        let url = |p: &str| PageNext::Url(p.into());
        let doc = serde_json::json!({"next": "?page=3", "abs": "http://h:1/other", "none": null,
            "empty": "", "n": 5, "obj": {}, "c": "a b&c"});
        let got =
            |n: &PageNext| next_of(n, &doc, &[], &here, &first).map(|u| u.map(|u| u.to_string()));
        assert_eq!(
            got(&url("/next")).unwrap().as_deref(),
            Some("http://h:1/list?page=3")
        );
        assert_eq!(
            got(&url("/abs")).unwrap().as_deref(),
            Some("http://h:1/other")
        );
        for last in ["/none", "/empty", "/missing"] {
            assert_eq!(got(&url(last)).unwrap(), None, "{last}");
        }
        assert_eq!(got(&url("/n")).unwrap_err().code(), "page_next");
        let cursor = |p: &str| PageNext::Cursor {
            pointer: p.into(),
            param: "cursor".into(),
        };
        assert_eq!(
            got(&cursor("/c")).unwrap().as_deref(),
            Some("http://h:1/list?x=a%20b&y=1&cursor=a+b%26c")
        );
        assert_eq!(
            got(&cursor("/n")).unwrap().as_deref(),
            Some("http://h:1/list?x=a%20b&y=1&cursor=5")
        );
        for last in ["/none", "/empty", "/missing"] {
            assert_eq!(got(&cursor(last)).unwrap(), None, "{last}");
        }
        assert_eq!(got(&cursor("/obj")).unwrap_err().code(), "page_next");
    }

    #[test]
    fn issue_18_items_must_be_an_array() {
        let doc = serde_json::json!({"data": [1, 2], "n": 1});
        assert_eq!(
            items_of(doc.clone(), "/data").unwrap(),
            vec![Value::from(1), Value::from(2)]
        );
        assert_eq!(
            items_of(serde_json::json!([3]), "").unwrap(),
            vec![Value::from(3)]
        );
        for p in ["/n", "/missing", ""] {
            assert_eq!(
                items_of(doc.clone(), p).unwrap_err().code(),
                "page_items",
                "{p}"
            );
        }
    }
}
