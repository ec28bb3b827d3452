//! streamdata.io compatibility: `GET /streamdata/{upstream-url}` (and, so
//! that moving an app is one host change, the same at the root:
//! `GET /{upstream-url}` when it starts with `http:` or `https:`).
//!
//! The upstream URL is the rest of the path verbatim plus the query minus
//! every `X-Sd-Header` parameter and every credential parameter
//! (`X-Sd-Token`, `access_token`: any case, percent-encoded or not), so a
//! token never reaches the upstream, the store or a view; others keep their
//! order and encoding. The stream is the main one with streamdata's event names and
//! ASCII-only JSON (`Flavor::Streamdata`); only the `Last-Event-ID` header
//! resumes, since the query belongs to the upstream. CORS is open: browser
//! apps were the SDK's main users. Unknown URLs get an ad-hoc resource in
//! proxy mode (`Registry::proxy_resource`), else 404.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use percent_encoding::percent_decode_str;

use super::events::{resume, sse_response, ResumeQuery};
use super::{auth, ApiError, AppState};
use crate::model::redact_url;
use crate::registry::ProxyError;
use crate::transport::sse::Flavor;

/// The route's prefix.
const PREFIX: &str = "/streamdata/";
/// `X-Sd-Header` parameters accepted per request.
const MAX_HEADERS: usize = 32;

pub fn router() -> Router<AppState> {
    Router::new().route("/streamdata/{*upstream}", any(handler))
}

async fn handler(State(state): State<AppState>, req: Request) -> Response {
    serve(state, req).await
}

/// A root path that is an upstream URL (`/https://...`), served like
/// `/streamdata/https://...`.
pub(crate) fn is_root_alias(path: &str) -> bool {
    let p = path.trim_start_matches('/').as_bytes();
    let starts = |s: &[u8]| p.len() >= s.len() && p[..s.len()].eq_ignore_ascii_case(s);
    starts(b"http:") || starts(b"https:") || starts(b"http%3a") || starts(b"https%3a")
}

pub(crate) async fn serve(state: AppState, req: Request) -> Response {
    // The body is not needed, and keeping it would make this future !Send.
    let (parts, _) = req.into_parts();
    let mut resp = match parts.method {
        Method::OPTIONS => preflight(),
        Method::GET | Method::HEAD => match stream(&state, &parts).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
        _ => ApiError::MethodNotAllowed.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Last-Event-ID, Authorization, Cache-Control, Accept"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

async fn stream(state: &AppState, req: &Parts) -> Result<Response, ApiError> {
    auth::check_read(&state.auth, &req.headers, &req.uri)?;
    let (url, headers) = upstream(&req.uri)?;
    let id = state
        .service
        .upstream_resource(&url, &headers)
        .await
        .map_err(|e| match e {
            ProxyError::Disabled => ApiError::ResourceNotFound(format!(
                "{} (no resource polls this URL with these headers, and proxy mode is off)",
                redact_url(&url)
            )),
            ProxyError::Refused(e) => ApiError::UpstreamRefused(e.to_string()),
            ProxyError::Full(_) => ApiError::ProxyFull(e.to_string()),
            ProxyError::Store(e) => e.into(),
        })?;
    // The query is the upstream's: only the header resumes here.
    let resume = resume(&req.headers, &ResumeQuery::default())?;
    Ok(sse_response(state, id, resume, Flavor::Streamdata))
}

/// The upstream URL and headers a request names.
pub(crate) fn upstream(uri: &Uri) -> Result<(String, BTreeMap<String, String>), ApiError> {
    let mut base = decoded_rest(uri.path())
        .ok_or_else(|| ApiError::BadRequest("the upstream URL is not valid UTF-8".into()))?;
    // Some proxies merge `//` in paths: put the authority's slashes back.
    for scheme in ["https:", "http:"] {
        // `get`: the path may be any UTF-8, and byte 5 or 6 inside a char.
        if base.len() > scheme.len()
            && base
                .get(..scheme.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(scheme))
            && !base[scheme.len()..].starts_with("//")
        {
            let tail = base[scheme.len()..].trim_start_matches('/').to_owned();
            base = format!("{scheme}//{tail}");
            break;
        }
    }

    // A URL encoded whole (`https%3A%2F%2Fh%2Fx%3Fa%3D1`) brings its query
    // in the path: its parameters are filtered like the request's.
    let (base, base_query) = match base.split_once('?') {
        Some((b, q)) => (b.to_owned(), Some(q.to_owned())),
        None => (base, None),
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut headers = BTreeMap::new();
    for part in base_query
        .as_deref()
        .into_iter()
        .chain(uri.query())
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = form_urlencoded::parse(part.as_bytes())
            .next()
            .unwrap_or_default();
        if auth::is_credential_param(&k) {
            continue;
        }
        if k.eq_ignore_ascii_case("x-sd-header") {
            if headers.len() >= MAX_HEADERS {
                return Err(ApiError::BadRequest(format!(
                    "more than {MAX_HEADERS} X-Sd-Header parameters"
                )));
            }
            let (name, value) = parse_header(&v)?;
            headers.insert(name, value);
            continue;
        }
        kept.push(part);
    }
    let url = if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok((url, headers)),
        Ok(u) => Err(ApiError::BadRequest(format!(
            "invalid upstream URL {:?}: scheme {:?} is not http or https",
            redact_url(&url),
            u.scheme()
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "invalid upstream URL {:?}: {e}",
            redact_url(&url)
        ))),
    }
}

/// The upstream URL part of a route path (after the prefix, or the root
/// alias's `/`); an encoded URL (`https%3A%2F%2F...`) is decoded once.
/// `None` if that decoding is not UTF-8.
fn decoded_rest(path: &str) -> Option<String> {
    let rest = match path.strip_prefix(PREFIX) {
        Some(r) if path.len() > PREFIX.len() => r,
        _ => path.trim_start_matches('/'),
    };
    let head = rest.as_bytes().get(..8).unwrap_or_default();
    if rest.len() > 8 && head.windows(3).any(|w| w.eq_ignore_ascii_case(b"%3a")) {
        percent_decode_str(rest)
            .decode_utf8()
            .ok()
            .map(|d| d.into_owned())
    } else {
        Some(rest.to_owned())
    }
}

/// A request path as request spans log it: an upstream URL on this route
/// (prefix or root alias) is shown decoded and redacted
/// (`model::redact_url`), since its userinfo or an encoded query may hold
/// credentials; any other path is logged as is.
pub(crate) fn path_for_log(path: &str) -> String {
    let prefix = if path.len() > PREFIX.len() && path.starts_with(PREFIX) {
        PREFIX
    } else if is_root_alias(path) {
        "/"
    } else {
        return path.to_owned();
    };
    match decoded_rest(path) {
        Some(url) => format!("{prefix}{}", redact_url(&url)),
        None => format!("{prefix}(an upstream URL that is not UTF-8)"),
    }
}

/// `X-Sd-Header=Name: value`.
fn parse_header(raw: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid X-Sd-Header {:?}: expected \"Name: value\"",
            raw.chars().take(80).collect::<String>()
        ))
    };
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let (name, value) = (name.trim(), value.trim());
    if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_str(value).is_err() {
        return Err(bad());
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> (String, BTreeMap<String, String>) {
        upstream(&s.parse::<Uri>().unwrap()).unwrap()
    }

    #[test]
    fn the_contract_example() {
        let (url, headers) = up("/streamdata/https://api.example.com/ticker?cur=EUR&X-Sd-Token=t");
        assert_eq!(url, "https://api.example.com/ticker?cur=EUR");
        assert!(headers.is_empty());
    }

    #[test]
    fn sd_parameters_are_removed_and_others_keep_order_and_encoding() {
        let (url, headers) = up(
            "/streamdata/http://h:8080/a/b?z=1&X-Sd-Header=Authorization%3A%20Bearer%20abc&a=%20x&x-sd-token=t&X-Sd-Header=X-Api-Key:%20k&m=2",
        );
        assert_eq!(url, "http://h:8080/a/b?z=1&a=%20x&m=2");
        assert_eq!(headers["Authorization"], "Bearer abc");
        assert_eq!(headers["X-Api-Key"], "k");
    }

    #[test]
    fn issue_17_credential_parameters_never_reach_the_upstream_url() {
        for s in [
            "/streamdata/http://h/x?a=1&access_token=T&b=2",
            "/streamdata/http://h/x?a=1&ACCESS_TOKEN=T&b=2",
            "/streamdata/http://h/x?access%5Ftoken=T&a=1&b=2",
            "/streamdata/http://h/x?a=1&b=2&X%2DSd%2DToken=T",
            "/streamdata/http://h/x?a=1&X-SD-TOKEN=T&b=2&x-sd-token=U",
            "/http://h/x?a=1&b=2&access_token=T",
            "/streamdata/http%3A%2F%2Fh%2Fx%3Fa%3D1%26access_token%3DT%26b%3D2",
            "/http%3A%2F%2Fh%2Fx%3Faccess_token%3DT%26a%3D1?b=2&X-Sd-Token=U",
        ] {
            let (url, _) = up(s);
            assert_eq!(url, "http://h/x?a=1&b=2", "{s}");
        }
        assert_eq!(up("/streamdata/http://h/x?access_token=T").0, "http://h/x");
    }

    #[test]
    fn issue_17_logged_paths_hide_credentials_in_upstream_urls() {
        for (path, logged) in [
            (
                "/streamdata/http://u:pw@h/x",
                "/streamdata/http://u:***@h/x",
            ),
            ("/http://u:pw@h/x", "/http://u:***@h/x"),
            (
                "/streamdata/http%3A%2F%2Fh%2Fx%3Fapi_key%3DK%26a%3D1",
                "/streamdata/http://h/x?api_key=***&a=1",
            ),
            ("/v1/resources/r/events", "/v1/resources/r/events"),
            ("/streamdata/", "/streamdata/"),
            (
                "/streamdata/http%3A%2F%2F%FF%FE",
                "/streamdata/(an upstream URL that is not UTF-8)",
            ),
        ] {
            assert_eq!(path_for_log(path), logged, "{path}");
        }
        // Non-ASCII across the bytes the checks look at: no slicing inside
        // a char; not a URL, a 400; `http://aéééx` (an IDN host) is one.
        assert_eq!(path_for_log("/v1/ééééé"), "/v1/ééééé");
        assert!(decoded_rest("/streamdata/aééééé").is_some());
        let uri = |p: &str| Uri::builder().path_and_query(p).build().unwrap();
        for p in ["/streamdata/aééééx", "/streamdata/aéééx"] {
            let e = upstream(&uri(p)).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{p}");
        }
        assert_eq!(upstream(&uri("/http:aéééx")).unwrap().0, "http://aéééx");
    }

    #[test]
    fn root_alias_encoded_and_merged_slashes() {
        assert!(is_root_alias("/https://x/"));
        assert!(is_root_alias("/HTTP:/x/"));
        assert!(is_root_alias("/https%3A%2F%2Fx"));
        assert!(!is_root_alias("/v1/resources"));
        assert_eq!(
            up("/https://api.example.com/x?X-Sd-Token=t").0,
            "https://api.example.com/x"
        );
        assert_eq!(
            up("/streamdata/https%3A%2F%2Fapi.example.com%2Fx").0,
            "https://api.example.com/x"
        );
        assert_eq!(
            up("/streamdata/https:/api.example.com/x").0,
            "https://api.example.com/x"
        );
    }

    #[test]
    fn bad_upstreams_are_400_naming_them() {
        for s in [
            "/streamdata/ftp://x/",
            "/streamdata/nonsense",
            "/streamdata/http://x/?X-Sd-Header=nocolon",
            "/streamdata/http://x/?X-Sd-Header=Bad%20Name:%20v",
        ] {
            let e = upstream(&s.parse::<Uri>().unwrap()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{s}");
        }
    }
}
