//! One conditional GET of an upstream JSON document, bounded in every way.
//!
//! Sends the configured headers plus `If-None-Match` / `If-Modified-Since`
//! when the last response gave validators; a 304 is `NotModified`. The whole
//! exchange has a deadline (a server that hangs, or trickles its body, times
//! out), the body has a size cap (checked on `Content-Length` and while
//! reading), and must be JSON. Redirects are followed here, not by the
//! client, so that every hop passes the upstream guard (see `guard`).
//! Every failure is a `FetchError` with a stable `code()`; its message
//! shows URLs redacted (`model::redact_url`), since it reaches clients and
//! logs.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

use super::guard::{self, GuardedResolver, ResolveError};
use crate::model::redact_url;

/// What a [`Fetcher`] allows; the default is the `[limits]` defaults and
/// the guard on.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Deadline for the whole exchange, redirects and body included.
    /// Default 10 s.
    pub timeout: Duration,
    /// Largest body accepted, in bytes. Default 16 MiB.
    pub max_body: usize,
    /// Lift the guard: loopback and private upstreams allowed. Default
    /// `false`.
    pub allow_private: bool,
    /// Redirects followed per fetch; one more is
    /// [`FetchError::Redirect`]. Default 5.
    pub max_redirects: usize,
    /// If set, only these hosts (exact, or `*.suffix`) may be fetched.
    /// Default `None`.
    pub allowed_hosts: Option<Vec<String>>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(10),
            max_body: 16 << 20,
            allow_private: false,
            max_redirects: 5,
            allowed_hosts: None,
        }
    }
}

/// Cache validators of the last successful response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// Its `ETag`, sent back as `If-None-Match`; at most 1024 bytes.
    pub etag: Option<String>,
    /// Its `Last-Modified`, sent back as `If-Modified-Since`; at most 1024
    /// bytes.
    pub last_modified: Option<String>,
}

impl Validators {
    fn from_headers(h: &HeaderMap) -> Validators {
        let get = |name| {
            h.get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 1024)
                .map(str::to_owned)
        };
        Validators {
            etag: get(header::ETAG),
            last_modified: get(header::LAST_MODIFIED),
        }
    }

    /// No validator: a request with these is unconditional.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What one successful fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the document did not change.
    NotModified,
    /// A 2xx answer with a JSON body.
    Document {
        /// The parsed body, within the size and depth bounds.
        doc: serde_json::Value,
        /// This answer's validators, for the next fetch.
        validators: Validators,
    },
}

/// One fetch as [`Fetcher::fetch_page`] saw it: what it found, plus what a
/// paginated poll needs to find the next page.
#[derive(Debug)]
pub struct Answer {
    /// What was found.
    pub fetched: Fetched,
    /// Bytes of the body read (0 for a 304).
    pub bytes: usize,
    /// The URL that answered (after redirects): relative next URLs resolve
    /// against it.
    pub url: Url,
    /// The answer's `Link` header values, at most [`MAX_LINK_HEADERS`] of
    /// at most [`MAX_LINK_BYTES`] each (longer ones are dropped).
    pub links: Vec<String>,
}

/// `Link` header values kept per answer.
pub const MAX_LINK_HEADERS: usize = 16;
/// Longest `Link` header value kept, in bytes.
pub const MAX_LINK_BYTES: usize = 8192;

/// Why a fetch failed. Each variant has a stable [`FetchError::code`];
/// messages show URLs redacted.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `invalid_url`: the URL does not parse, is not http(s) or has no
    /// host, a configured header cannot be sent, or the client cannot be
    /// built.
    #[error("invalid upstream URL: {0}")]
    InvalidUrl(String),
    /// `blocked`: the guard refused an address, or `allowed_hosts` the host.
    #[error("upstream refused by the guard: {0}")]
    Blocked(String),
    /// `dns`: the host name did not resolve.
    #[error("{0}")]
    Dns(String),
    /// `connect`: the connection failed (the innermost cause).
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    /// `timeout`: no complete answer within [`FetchConfig::timeout`],
    /// which it holds.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// `upstream_status`: a non-2xx status, a 3xx without `Location`, or a
    /// 304 to a request without validators.
    #[error("the upstream answered {status}")]
    Status {
        /// The status the upstream sent.
        status: StatusCode,
    },
    /// `redirect`: more than [`FetchConfig::max_redirects`] hops, a bad
    /// `Location`, or a hop the guard refuses.
    #[error("redirect not followed: {0}")]
    Redirect(String),
    /// `too_large`: the body is over [`FetchConfig::max_body`], by
    /// `Content-Length` or while reading.
    #[error("the upstream body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// `not_json`: the body is empty, is not JSON, or is `text/html` /
    /// `application/xhtml+xml`.
    #[error("the upstream did not send JSON: {0}")]
    NotJson(String),
    /// `body`: the connection broke while the body was read, or shutdown
    /// cut its parse short.
    #[error("reading the upstream response failed: {0}")]
    Body(String),
    /// `too_deep`: nested deeper than the log can store and read back
    /// ([`crate::log::MAX_DOC_DEPTH`]).
    #[error("the upstream document is nested deeper than {limit} levels")]
    TooDeep {
        /// The bound, in levels of arrays and objects.
        limit: usize,
    },
    /// A page of a paginated poll failed: the code and status are the
    /// page's own error's; the message names the page.
    #[error("page {page} ({url}): {error}")]
    OnPage {
        /// Which page, from 1.
        page: u32,
        /// Its URL, redacted.
        url: String,
        /// What went wrong with it.
        error: Box<FetchError>,
    },
    /// `page_loop`: a next page URL (or cursor) seen before in this poll.
    #[error("page loop: {0}")]
    PageLoop(String),
    /// `too_many_pages`: there is a next page after `max` pages.
    #[error("more than {max} pages (pages.max)")]
    TooManyPages {
        /// The bound (`pages.max`).
        max: u32,
    },
    /// `page_origin`: a next page URL on another origin than the first
    /// page's.
    #[error("next page on another origin: {0}")]
    PageOrigin(String),
    /// `page_items`: a page's `items` are missing or not an array.
    #[error("{0}")]
    PageItems(String),
    /// `page_next`: a page's next URL or cursor is of the wrong type or
    /// does not parse, or its `Link` header does not parse.
    #[error("{0}")]
    PageNext(String),
    /// `too_large`: the pages of one poll hold more than
    /// `limits.upstream_max_body_bytes` in all.
    #[error("the pages exceed the limit of {limit} bytes in all")]
    PagesTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
}

impl FetchError {
    /// Stable, documented code for `event: error` and `last_error`.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::InvalidUrl(_) => "invalid_url",
            FetchError::Blocked(_) => "blocked",
            FetchError::Dns(_) => "dns",
            FetchError::Connect(_) => "connect",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status { .. } => "upstream_status",
            FetchError::Redirect(_) => "redirect",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::NotJson(_) => "not_json",
            FetchError::Body(_) => "body",
            FetchError::TooDeep { .. } => "too_deep",
            FetchError::OnPage { error, .. } => error.code(),
            FetchError::PageLoop(_) => "page_loop",
            FetchError::TooManyPages { .. } => "too_many_pages",
            FetchError::PageOrigin(_) => "page_origin",
            FetchError::PageItems(_) => "page_items",
            FetchError::PageNext(_) => "page_next",
            FetchError::PagesTooLarge { .. } => "too_large",
        }
    }

    /// The upstream's HTTP status, when it sent one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status } => Some(status.as_u16()),
            FetchError::OnPage { error, .. } => error.status(),
            _ => None,
        }
    }
}

/// An HTTP client for upstreams whose resolver applies the guard; cheap
/// to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: FetchConfig,
}

impl Fetcher {
    /// A client for `config`: no environment proxy, redirects followed by
    /// [`Fetcher::fetch`] itself, idle connections kept 30 s (8 per host).
    pub fn new(config: FetchConfig) -> Result<Fetcher, FetchError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("patchfeed/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect for us to addresses the guard never saw.
            .no_proxy()
            .dns_resolver(GuardedResolver::shared(config.allow_private))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| FetchError::InvalidUrl(format!("cannot build the HTTP client: {e}")))?;
        Ok(Fetcher { client, config })
    }

    /// The largest body fetched (`FetchConfig::max_body`).
    pub fn max_body(&self) -> usize {
        self.config.max_body
    }

    /// Checks a URL against everything known before connecting: syntax,
    /// scheme (http/https only), credentials, `allowed_hosts`, IP literals.
    pub fn check_url(&self, url: &str) -> Result<(), FetchError> {
        self.parse_checked(url).map(|_| ())
    }

    fn parse_checked(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url)
            .map_err(|e| FetchError::InvalidUrl(format!("{:?}: {e}", redact_url(url))))?;
        self.check(&parsed)?;
        Ok(parsed)
    }

    fn check(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::InvalidUrl(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let Some(host) = url.host() else {
            return Err(FetchError::InvalidUrl(format!(
                "{} has no host",
                redact_url(url.as_str())
            )));
        };
        if let Some(allowed) = &self.config.allowed_hosts {
            let name = match host {
                url::Host::Domain(d) => d.to_owned(),
                url::Host::Ipv4(ip) => ip.to_string(),
                url::Host::Ipv6(ip) => ip.to_string(),
            };
            if !guard::host_allowed(&name, allowed) {
                return Err(FetchError::Blocked(format!(
                    "host {name} is not in allowed_hosts"
                )));
            }
        }
        // The resolver is not asked about IP literals: check them here.
        let literal = match host {
            url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let (Some(ip), false) = (literal, self.config.allow_private) {
            if let Some(why) = guard::refusal(ip) {
                return Err(FetchError::Blocked(format!(
                    "{ip} is a {why} address; set allow_private_upstreams = true to allow"
                )));
            }
        }
        Ok(())
    }

    /// Fetches `url` once (following up to `max_redirects` redirects).
    pub async fn fetch(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        validators: &Validators,
    ) -> Result<Fetched, FetchError> {
        self.fetch_page(url, headers, validators, self.config.max_body)
            .await
            .map(|a| a.fetched)
    }

    /// [`Fetcher::fetch`] with a body cap of `limit` bytes (at most the
    /// configured one), answering with the body's size, the URL that
    /// answered and its `Link` headers: one page of a paginated poll.
    pub async fn fetch_page(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        validators: &Validators,
        limit: usize,
    ) -> Result<Answer, FetchError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let limit = limit.min(self.config.max_body);
        match tokio::time::timeout_at(deadline, self.fetch_inner(url, headers, validators, limit))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(self.config.timeout)),
        }
    }

    async fn fetch_inner(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        validators: &Validators,
        limit: usize,
    ) -> Result<Answer, FetchError> {
        let mut target = self.parse_checked(url)?;
        let mut request_headers = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| FetchError::InvalidUrl(format!("invalid header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| FetchError::InvalidUrl(format!("invalid value for header {k:?}")))?;
            request_headers.append(name, value);
        }
        if !request_headers.contains_key(header::ACCEPT) {
            request_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        if let Some(etag) = validators
            .etag
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            request_headers.insert(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = validators
            .last_modified
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            request_headers.insert(header::IF_MODIFIED_SINCE, lm);
        }

        let mut hops = 0usize;
        let response = loop {
            let response = self
                .client
                .get(target.clone())
                .headers(request_headers.clone())
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED
            {
                break response;
            }
            hops += 1;
            if hops > self.config.max_redirects {
                return Err(FetchError::Redirect(format!(
                    "more than {} redirects (last to {})",
                    self.config.max_redirects,
                    redact_url(target.as_str())
                )));
            }
            let Some(location) = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Err(FetchError::Status {
                    status: response.status(),
                });
            };
            let next = target.join(location).map_err(|e| {
                FetchError::Redirect(format!("bad Location {:?}: {e}", redact_url(location)))
            })?;
            // Each hop passes the guard again (the resolver sees its name).
            self.check(&next).map_err(|e| {
                FetchError::Redirect(format!("to {}: {e}", redact_url(next.as_str())))
            })?;
            // Credentials configured for the first host stay with it.
            if next.host_str() != target.host_str()
                || next.port_or_known_default() != target.port_or_known_default()
            {
                request_headers.remove(header::AUTHORIZATION);
                request_headers.remove(header::COOKIE);
                for k in headers.keys() {
                    request_headers.remove(k.as_str());
                }
            }
            target = next;
        };

        let status = response.status();
        let links: Vec<String> = response
            .headers()
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|v| v.len() <= MAX_LINK_BYTES)
            .take(MAX_LINK_HEADERS)
            .map(str::to_owned)
            .collect();
        if status == StatusCode::NOT_MODIFIED {
            if validators.is_empty() {
                // We never asked for it: a broken upstream.
                return Err(FetchError::Status { status });
            }
            return Ok(Answer {
                fetched: Fetched::NotModified,
                bytes: 0,
                url: target,
                links,
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status { status });
        }
        let got = Validators::from_headers(response.headers());
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_ascii_lowercase());
        if let Some(ct) = &content_type {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence == "text/html" || essence == "application/xhtml+xml" {
                return Err(FetchError::NotJson(format!("Content-Type is {essence}")));
            }
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body = Vec::with_capacity(response.content_length().map_or(8192, |n| n as usize));
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.classify(e))?;
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.len();
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(FetchError::NotJson("the body is empty".into()));
        }
        // A large body is parsed (and its depth checked) off the ingest
        // thread (`cpu`).
        let heavy = body.len() > crate::cpu::INLINE_BYTES;
        let doc = crate::cpu::run(heavy, move || {
            let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                // serde_json has no error category for its recursion limit.
                if e.to_string().starts_with("recursion limit exceeded") {
                    FetchError::TooDeep {
                        limit: crate::log::MAX_DOC_DEPTH,
                    }
                } else {
                    FetchError::NotJson(e.to_string())
                }
            })?;
            // The store's own bound, checked at the door: what is accepted
            // here is what the log can store and read back.
            crate::log::check_depth(&doc).map_err(|e| FetchError::TooDeep { limit: e.limit })?;
            Ok::<_, FetchError>(doc)
        })
        .await
        .map_err(|e| FetchError::Body(e.to_string()))??;
        Ok(Answer {
            fetched: Fetched::Document {
                doc,
                validators: got,
            },
            bytes,
            url: target,
            links,
        })
    }

    fn classify(&self, e: reqwest::Error) -> FetchError {
        // The client's errors print the URL, credentials included.
        let e = e.without_url();
        // Our resolver's verdicts travel inside the client's error chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<ResolveError>() {
                return match r {
                    ResolveError::Blocked { .. } => FetchError::Blocked(r.to_string()),
                    ResolveError::Dns { .. } => FetchError::Dns(r.to_string()),
                };
            }
            source = s.source();
        }
        if e.is_timeout() {
            FetchError::Timeout(self.config.timeout)
        } else if e.is_connect() {
            FetchError::Connect(root_cause(&e))
        } else if e.is_body() || e.is_decode() {
            FetchError::Body(root_cause(&e))
        } else if e.is_builder() {
            FetchError::InvalidUrl(root_cause(&e))
        } else {
            FetchError::Connect(root_cause(&e))
        }
    }
}

/// The innermost message of an error chain (the useful one).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}
