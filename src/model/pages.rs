//! Paginated upstreams: how a resource's pages are found (`pages`), as a
//! user gives it ([`PagesInput`], the same for the config file and the
//! API) and as validated ([`Pages`]). Pure: fetching the pages is
//! `poll::pages`'s job.

use serde::Deserialize;

/// `pages` as a user gives it: `{next, items?, param?, max?}`. One type
/// for the config file (`pages = { … }`) and the API body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesInput {
    /// `"link"`: RFC 8288 `Link: rel="next"`; otherwise a JSON Pointer into
    /// each page's body: the next page's URL, or (with `param`) a cursor.
    pub next: String,
    /// JSON Pointer to each page's array; `None` (or `""`): the page is the
    /// array.
    pub items: Option<String>,
    /// With a pointer `next`: the query parameter the cursor is sent back
    /// in, on the first page's URL.
    pub param: Option<String>,
    /// Most pages fetched per poll; `None`: [`Pages::DEFAULT_MAX`].
    pub max: Option<u32>,
}

/// Where the next page's address comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageNext {
    /// RFC 8288: the `Link` header's target with relation type `next`.
    Link,
    /// A JSON Pointer to the next page's URL in the body (relative URLs
    /// resolve against the page's own URL); null, absent or `""`: the last
    /// page.
    Url(String),
    /// A JSON Pointer to a cursor in the body, sent back as `?{param}=` on
    /// the first page's URL; null, absent or `""`: the last page.
    Cursor {
        /// The JSON Pointer to the cursor.
        pointer: String,
        /// The query parameter it is sent in.
        param: String,
    },
}

/// A resource's pagination, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pages {
    /// How the next page is found.
    pub next: PageNext,
    /// JSON Pointer to each page's array (`""`: the page is the array).
    pub items: String,
    /// Most pages per poll, 1 ..= [`Pages::MAX_MAX`]; one more is
    /// `too_many_pages`.
    pub max: u32,
}

impl Pages {
    /// `max` when none is given: 100 pages.
    pub const DEFAULT_MAX: u32 = 100;
    /// Largest `max`: 10,000 pages (the byte bound,
    /// `limits.upstream_max_body_bytes`, applies to all of them together).
    pub const MAX_MAX: u32 = 10_000;
    /// Longest cursor parameter name.
    pub const MAX_PARAM_LEN: usize = 128;

    /// Checks `input`; the error names the key (`pages.next`, …) and the
    /// value.
    pub fn validate(input: PagesInput) -> Result<Pages, (&'static str, String)> {
        let items = input.items.unwrap_or_default();
        check_pointer(&items).map_err(|m| ("pages.items", m))?;
        let max = input.max.unwrap_or(Self::DEFAULT_MAX);
        if !(1..=Self::MAX_MAX).contains(&max) {
            return Err((
                "pages.max",
                format!("{max} is outside 1..={}", Self::MAX_MAX),
            ));
        }
        let next = match (input.next.as_str(), input.param) {
            ("link", None) => PageNext::Link,
            ("link", Some(p)) => {
                return Err((
                    "pages.param",
                    format!("{p:?}: a cursor parameter needs a pointer next, not \"link\""),
                ))
            }
            (pointer, param) => {
                check_pointer(pointer).map_err(|m| ("pages.next", m))?;
                if pointer.is_empty() {
                    return Err((
                        "pages.next",
                        "\"\" points at the whole page; give \"link\" or a pointer such as \"/next\""
                            .into(),
                    ));
                }
                match param {
                    None => PageNext::Url(pointer.to_owned()),
                    Some(p) => {
                        check_param(&p).map_err(|m| ("pages.param", m))?;
                        PageNext::Cursor {
                            pointer: pointer.to_owned(),
                            param: p,
                        }
                    }
                }
            }
        };
        Ok(Pages { next, items, max })
    }

    /// The settings as a user would give them back (for the view and the
    /// disk record).
    pub fn input(&self) -> PagesInput {
        let (next, param) = match &self.next {
            PageNext::Link => ("link".to_owned(), None),
            PageNext::Url(p) => (p.clone(), None),
            PageNext::Cursor { pointer, param } => (pointer.clone(), Some(param.clone())),
        };
        PagesInput {
            next,
            items: Some(self.items.clone()),
            param,
            max: Some(self.max),
        }
    }
}

/// An RFC 6901 JSON Pointer: `""`, or `/`-separated tokens in which `~`
/// is only ever `~0` or `~1`.
fn check_pointer(p: &str) -> Result<(), String> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not a JSON Pointer (it must be \"\" or start with \"/\")"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{p:?} is not a JSON Pointer (\"~\" must be followed by 0 or 1)"
            ));
        }
    }
    Ok(())
}

/// A query parameter name: 1 ..= [`Pages::MAX_PARAM_LEN`] characters, none
/// of which needs escaping in a query (`&`, `=`, `#`, space, control).
fn check_param(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > Pages::MAX_PARAM_LEN {
        return Err(format!(
            "{p:?} must be 1 to {} characters",
            Pages::MAX_PARAM_LEN
        ));
    }
    if p.chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-._~[]".contains(c)))
    {
        return Err(format!(
            "{p:?} may hold only ASCII letters, digits and - . _ ~ [ ]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(next: &str) -> PagesInput {
        PagesInput {
            next: next.into(),
            ..PagesInput::default()
        }
    }

    #[test]
    fn issue_18_the_three_modes_and_their_defaults() {
        let p = Pages::validate(input("link")).unwrap();
        assert_eq!(
            p,
            Pages {
                next: PageNext::Link,
                items: String::new(),
                max: 100
            }
        );
        let p = Pages::validate(PagesInput {
            items: Some("/results".into()),
            max: Some(7),
            ..input("/next")
        })
        .unwrap();
        assert_eq!(p.next, PageNext::Url("/next".into()));
        assert_eq!((p.items.as_str(), p.max), ("/results", 7));
        let p = Pages::validate(PagesInput {
            param: Some("cursor".into()),
            items: Some("/data".into()),
            ..input("/meta/cursor")
        })
        .unwrap();
        assert_eq!(
            p.next,
            PageNext::Cursor {
                pointer: "/meta/cursor".into(),
                param: "cursor".into()
            }
        );
        // The settings come back as given (defaults filled in).
        assert_eq!(Pages::validate(p.input()).unwrap(), p);
    }

    #[test]
    fn issue_18_bad_pages_name_their_key() {
        let bad = [
            (input("next"), "pages.next", "not a JSON Pointer"),
            (input(""), "pages.next", "points at the whole page"),
            (input("/a~2"), "pages.next", "~"),
            (
                PagesInput {
                    items: Some("data".into()),
                    ..input("link")
                },
                "pages.items",
                "not a JSON Pointer",
            ),
            (
                PagesInput {
                    max: Some(0),
                    ..input("link")
                },
                "pages.max",
                "0 is outside 1..=10000",
            ),
            (
                PagesInput {
                    max: Some(10_001),
                    ..input("link")
                },
                "pages.max",
                "10001 is outside",
            ),
            (
                PagesInput {
                    param: Some("c".into()),
                    ..input("link")
                },
                "pages.param",
                "needs a pointer next",
            ),
            (
                PagesInput {
                    param: Some(String::new()),
                    ..input("/c")
                },
                "pages.param",
                "1 to 128",
            ),
            (
                PagesInput {
                    param: Some("a&b".into()),
                    ..input("/c")
                },
                "pages.param",
                "ASCII letters",
            ),
        ];
        for (i, key, says) in bad {
            let (k, m) = Pages::validate(i.clone()).expect_err("refused");
            assert_eq!(k, key, "{i:?}: {m}");
            assert!(m.contains(says), "{i:?}: {m}");
        }
        for ok in ["/a~0b~1c", "/", "/0/next"] {
            assert!(Pages::validate(input(ok)).is_ok(), "{ok}");
        }
    }
}
