//! Bearer-token access to every `/v1` path (and the streamdata route),
//! whether a route matches it or not: a full token, and an optional
//! read-only one. Tokens come from `Authorization: Bearer`, `?access_token=`
//! or `?X-Sd-Token=` (browsers' EventSource cannot set headers). Compared in
//! constant time; never logged.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub read_token: Option<String>,
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Full,
    Read,
}

impl Auth {
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.read_token.is_some()
    }

    fn check(&self, presented: Option<&str>) -> Option<Access> {
        let presented = presented?;
        if self.token.as_deref().is_some_and(|t| ct_eq(t, presented)) {
            return Some(Access::Full);
        }
        if self
            .read_token
            .as_deref()
            .is_some_and(|t| ct_eq(t, presented))
        {
            return Some(Access::Read);
        }
        None
    }
}

/// Constant-time equality: the time taken depends only on the lengths.
fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Query parameters that carry patchfeed's own credential. Their names are
/// compared case-insensitively after percent-decoding, here and wherever
/// they must be removed (the streamdata route's upstream URL).
pub const CREDENTIAL_PARAMS: &[&str] = &["access_token", "x-sd-token"];

/// Whether a decoded query parameter name is one of [`CREDENTIAL_PARAMS`].
pub fn is_credential_param(name: &str) -> bool {
    CREDENTIAL_PARAMS
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// The credential a request presents, if any.
pub fn presented(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| is_credential_param(k))
        .map(|(_, v)| v.into_owned())
}

/// For routes outside `/v1` that read (the streamdata stream): any valid
/// token, full or read-only.
pub fn check_read(auth: &Auth, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    if !auth.enabled() {
        return Ok(());
    }
    match auth.check(presented(headers, uri).as_deref()) {
        Some(_) => Ok(()),
        None => Err(ApiError::Unauthorized),
    }
}

/// Whether a path needs a token (when one is configured): everything under
/// `/v1`, matched or not. The streamdata route checks its own credential
/// (`check_read`), so that its 401 carries CORS headers and its preflight
/// needs none.
fn protected(path: &str) -> bool {
    ["/v1"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let auth = &state.auth;
    if !auth.enabled() || !protected(req.uri().path()) {
        return next.run(req).await;
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    match auth.check(presented(req.headers(), req.uri()).as_deref()) {
        Some(Access::Full) => next.run(req).await,
        Some(Access::Read) if read_only => next.run(req).await,
        Some(Access::Read) => ApiError::Forbidden.into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(ct_eq("", ""));
    }

    #[test]
    fn protected_paths() {
        for p in ["/v1", "/v1/", "/v1/resources", "/v1/nope"] {
            assert!(protected(p), "{p}");
        }
        for p in [
            "/",
            "/healthz",
            "/metrics",
            "/v10",
            "/v1x/resources",
            "/streamdatax",
        ] {
            assert!(!protected(p), "{p}");
        }
    }

    #[test]
    fn credential_params_any_case_and_encoding() {
        let uri = |q: &str| format!("/v1/resources?{q}").parse::<Uri>().unwrap();
        let none = HeaderMap::new();
        for q in [
            "access_token=t",
            "ACCESS_TOKEN=t",
            "Access_Token=t",
            "access%5Ftoken=t",
            "X-Sd-Token=t",
            "x-sd-token=t",
            "X%2DSd%2DToken=t",
        ] {
            assert_eq!(presented(&none, &uri(q)).as_deref(), Some("t"), "{q}");
        }
        assert_eq!(presented(&none, &uri("token=t")), None);
    }

    #[test]
    fn levels() {
        let a = Auth {
            token: Some("w".into()),
            read_token: Some("r".into()),
        };
        assert_eq!(a.check(Some("w")), Some(Access::Full));
        assert_eq!(a.check(Some("r")), Some(Access::Read));
        assert_eq!(a.check(Some("x")), None);
        assert_eq!(a.check(None), None);
    }
}
