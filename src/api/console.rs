//! `GET /ui`: the web console, a page of plain HTML, CSS and JavaScript
//! compiled into the binary (`src/api/console/`), so it works offline and
//! always matches the server it comes from.
//!
//! The page and its assets hold no data and are open like `/healthz`;
//! every data request the page makes goes to `/v1` with the tab's token,
//! under `/v1`'s rules (see `docs/CONSOLE.md`). The HTML is `no-cache`
//! (revalidated by its ETag); an asset named with its content hash
//! (`?v=<hash>`, as the page names it) is cached for a year, any other
//! request for it is revalidated. Neither is ever logged with its query.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

use super::{ApiError, AppState, PathId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/resources/{id}", get(resource_page))
        .route("/ui/assets/{name}", get(asset))
}

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    hash: u64,
}

/// FNV-1a over the bytes, at compile time: a content hash for cache
/// busting and ETags, not for security.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($name:literal, $type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("console/", $name));
        Asset {
            name: $name,
            content_type: $type,
            body: BODY,
            hash: fnv1a(BODY),
        }
    }};
}

const ASSETS: &[Asset] = &[
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The page's source: `{{asset:NAME}}` stands for the asset's hashed URL.
const PAGE: &str = include_str!("console/index.html");

/// What scripts on the page may do: only this origin's code and data; no
/// inline script, no framing, no referrer (which could carry a URL).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The page with every asset's hashed URL in place, and its ETag.
fn rendered() -> &'static (String, String) {
    static PAGE_HTML: OnceLock<(String, String)> = OnceLock::new();
    PAGE_HTML.get_or_init(|| {
        let mut html = PAGE.to_owned();
        for a in ASSETS {
            html = html.replace(
                &format!("{{{{asset:{}}}}}", a.name),
                &format!("/ui/assets/{}?v={:016x}", a.name, a.hash),
            );
        }
        let etag = format!("\"{:016x}\"", fnv1a(html.as_bytes()));
        (html, etag)
    })
}

/// `GET /ui`: the resources view (the page routes by its own path).
async fn page(headers: HeaderMap) -> Response {
    serve_page(&headers)
}

/// `GET /ui/resources/{id}`: the same page, on one resource. Any valid id
/// is served, known or not: the page is public, and whether a resource
/// exists is for `/v1` (with a token) to say.
async fn resource_page(headers: HeaderMap, PathId(_): PathId) -> Response {
    serve_page(&headers)
}

fn serve_page(headers: &HeaderMap) -> Response {
    let (html, etag) = rendered();
    let mut resp = if matches_etag(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html.as_str(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// `GET /ui/assets/{name}`: one embedded asset; an unknown name is 404.
async fn asset(
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let a = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or(ApiError::NotFound)?;
    let etag = format!("\"{:016x}\"", a.hash);
    let hashed = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "v" && v == etag.trim_matches('"'))
    });
    let mut resp = if matches_etag(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if hashed {
            // The URL changes with the content: a cached copy is never stale.
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Whether `If-None-Match` names `etag` (alone, in a list, weakly, or `*`).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded_and_hashed() {
        let (html, _) = rendered();
        assert!(!html.contains("{{"), "a placeholder is left: {html}");
        for a in ASSETS {
            assert!(
                html.contains(&format!("/ui/assets/{}?v={:016x}", a.name, a.hash)),
                "{} is not named by the page",
                a.name
            );
        }
        // Nothing from elsewhere: every link of the page is on this server,
        // the stylesheet loads nothing, the script names no other origin.
        for attr in ["src=\"", "href=\""] {
            for value in html.split(attr).skip(1) {
                assert!(
                    value.starts_with('/') && !value.starts_with("//"),
                    "{attr}{} is not on this server",
                    &value[..value.find('"').unwrap_or(value.len())]
                );
            }
        }
        let text = |name: &str| {
            let a = ASSETS.iter().find(|a| a.name == name).expect("an asset");
            std::str::from_utf8(a.body).expect("UTF-8")
        };
        assert!(
            !text("console.css").contains("url("),
            "the stylesheet loads a URL"
        );
        for scheme in ["http:", "https:", "ws:", "wss:", "//"] {
            let js = text("console.js");
            let code_mentions = js
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(&format!("'{scheme}")) || l.contains(&format!("\"{scheme}")));
            assert!(!code_mentions, "the script names a {scheme} URL");
        }
    }

    #[test]
    fn hashes_differ_with_content() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn etag_matching() {
        let mut h = HeaderMap::new();
        assert!(!matches_etag(&h, "\"x\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"y\", W/\"x\""),
        );
        assert!(matches_etag(&h, "\"x\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_etag(&h, "\"x\""));
    }
}
