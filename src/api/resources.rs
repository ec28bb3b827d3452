//! `/v1/resources`: create, list, get, delete. Request and response bodies
//! are wire types defined here; upstream header values are never shown
//! back, nor credentials in the URL (`model::redact_url`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Known, PathId};
use crate::model::{
    format_rfc3339_ms, parse_retain, redact_url, PagesInput, ResourceInput, ResourceSpec,
    SettingsError,
};
use crate::registry::ResourceInfo;
use crate::store::Created;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/resources", get(list_resources).post(create_resource))
        .route(
            "/v1/resources/{id}",
            get(get_resource).delete(delete_resource),
        )
}

/// Body of `POST /v1/resources`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewResource {
    id: Option<String>,
    /// Absent exactly when `push` is true.
    url: Option<String>,
    #[serde(default)]
    push: bool,
    interval_ms: Option<u64>,
    headers: Option<BTreeMap<String, String>>,
    snapshot_every: Option<u32>,
    /// Humantime (`"7d"`), `"forever"`, or milliseconds.
    retain: Option<Retain>,
    /// A paginated upstream: `{"next", "items"?, "param"?, "max"?}`.
    pages: Option<PagesInput>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Retain {
    Millis(u64),
    Text(String),
}

async fn create_resource(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // Syntax first, then shape: parsing straight into `NewResource` would
    // report `{} trailing` as a missing field (422), not as broken JSON.
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let new = NewResource::deserialize(value)
        .map_err(|e| ApiError::InvalidResource(format!("invalid resource: {e}")))?;
    let spec = validate(&state, new)?;
    match state.service.create_resource(spec).await? {
        Created::New(r) => {
            let info = state
                .service
                .resource(&r.spec.id)
                .ok_or_else(|| ApiError::ResourceNotFound(r.spec.id.to_string()))?;
            Ok((StatusCode::CREATED, Json(view(&info))))
        }
        Created::Exists(r) => Err(ApiError::ResourceExists(r.spec.id.to_string())),
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidResource(msg.into())
}

/// A setting's name on the wire: the body's field for the validator's.
fn wire_field(field: &'static str) -> &'static str {
    match field {
        "interval" => "interval_ms",
        f => f,
    }
}

/// A validator error as the API's 422 `invalid_resource`: the message
/// starts with the body's field, then names the value.
fn settings_error(e: SettingsError) -> ApiError {
    invalid(format!("{}: {}", wire_field(e.field), e.message))
}

/// The body through the one settings validator, then the upstream guard
/// (which depends on `allow_private_upstreams`).
fn validate(state: &AppState, new: NewResource) -> Result<ResourceSpec, ApiError> {
    let retain = match new.retain {
        None => None,
        Some(Retain::Millis(ms)) => Some(Some(Duration::from_millis(ms))),
        Some(Retain::Text(t)) => Some(parse_retain(&t).map_err(|m| {
            settings_error(SettingsError {
                field: "retain",
                message: m,
            })
        })?),
    };
    let spec = ResourceSpec::validate(ResourceInput {
        id: new.id,
        url: new.url,
        interval: new.interval_ms.map(Duration::from_millis),
        headers: new.headers.unwrap_or_default(),
        snapshot_every: new.snapshot_every,
        retain,
        ad_hoc: false,
        push: new.push,
        pages: new.pages,
    })
    .map_err(settings_error)?;
    if !spec.push {
        state
            .service
            .check_url(&spec.url)
            .map_err(|e| invalid(format!("url: {e}")))?;
    }
    Ok(spec)
}

async fn list_resources(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state.service.resources().iter().map(view).collect();
    Json(json!({ "resources": list }))
}

async fn get_resource(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    let info = state
        .service
        .resource(&id)
        .ok_or_else(|| ApiError::ResourceNotFound(id.to_string()))?;
    Ok(Json(view(&info)))
}

async fn delete_resource(
    State(state): State<AppState>,
    Known(id): Known,
) -> Result<StatusCode, ApiError> {
    if state.service.delete_resource(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::ResourceNotFound(id.to_string()))
    }
}

/// The wire form of a resource.
fn view(info: &ResourceInfo) -> Value {
    let spec = &info.record.spec;
    let last_error = info.poll.last_error.as_ref().map(|e| {
        let mut v = json!({
            "code": e.code,
            "message": e.message,
            "time": format_rfc3339_ms(e.time_ms),
        });
        if let Some(s) = e.status {
            v["status"] = json!(s);
        }
        v
    });
    let last_poll = info.poll.last_poll.as_ref().map(|p| {
        json!({
            "outcome": p.outcome,
            "pages": p.pages,
            "not_modified": p.not_modified,
            "items": p.items,
            "bytes": p.bytes,
            "duration_ms": p.duration_ms,
        })
    });
    let polling = info.poll.polling.as_ref().map(|p| {
        json!({
            "page": p.progress.page,
            "items": p.progress.items,
            "bytes": p.progress.bytes,
            "not_modified": p.progress.not_modified,
            "url": p.progress.url,
            "started": format_rfc3339_ms(p.started_ms),
        })
    });
    let pages = spec.pages.as_ref().map(|p| {
        let given = p.input();
        let mut v = json!({ "next": given.next, "items": p.items, "max": p.max });
        if let Some(param) = given.param {
            v["param"] = json!(param);
        }
        v
    });
    json!({
        "id": spec.id.as_str(),
        // Credentials in the URL are for polling, not for showing.
        "url": (!spec.push).then(|| redact_url(&spec.url)),
        "push": spec.push,
        "interval_ms": u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX),
        "created": format_rfc3339_ms(info.record.created_ms),
        "last_event_id": info.log.last_event_id.map(|e| e.to_string()),
        "last_event_time": info.log.last_event_id.map(|e| e.time_rfc3339()),
        "retained_events": info.log.events,
        "last_polled": info.poll.last_polled_ms.map(format_rfc3339_ms),
        "last_error": last_error,
        "last_poll": last_poll,
        "polling": polling,
        "pages": pages,
        "horizon": info.log.horizon.map(|e| e.to_string()),
        "compacted": info.log.compacted,
        "snapshot_every": spec.snapshot_every,
        "retain": spec.retain.map(|d| humantime::format_duration(d).to_string()),
        "header_names": spec.headers.keys().collect::<Vec<_>>(),
        "subscribers": info.subscribers,
        "ad_hoc": info.ad_hoc,
        "quarantined": info.quarantine.as_ref().map(|q| json!({
            "reason": q.reason,
            "key": q.key,
        })),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use crate::config::Config;

    /// One setting as each path spells it: the config file's key and TOML
    /// value, the API's field and JSON value. `field` is the setting's name
    /// in the config file; the API names it `api_field`.
    struct Case {
        field: &'static str,
        toml: toml::Value,
        api_field: &'static str,
        json: serde_json::Value,
    }

    fn case(field: &'static str, toml: toml::Value, json: serde_json::Value) -> Case {
        let api_field = if field == "interval" {
            "interval_ms"
        } else {
            field
        };
        Case {
            field,
            toml,
            api_field,
            json,
        }
    }

    fn headers(k: &str, v: &str) -> (toml::Value, serde_json::Value) {
        let mut t = toml::Table::new();
        t.insert(k.into(), v.into());
        (toml::Value::Table(t), json!({ k: v }))
    }

    const URL: &str = "https://example.com/x";

    /// Bad settings, each at or just past a bound.
    fn bad() -> Vec<Case> {
        let s = |v: &str| toml::Value::String(v.into());
        let (bad_name, bad_name_json) = headers("bad name", "x");
        let (bad_value, bad_value_json) = headers("X-A", "a\nb");
        vec![
            case("id", s("a b"), json!("a b")),
            case("id", s(".."), json!("..")),
            case("id", s(""), json!("")),
            case("id", s(&"a".repeat(129)), json!("a".repeat(129))),
            case(
                "url",
                s("ftp://example.com/x"),
                json!("ftp://example.com/x"),
            ),
            case("url", s("not a url"), json!("not a url")),
            case("url", s("http://"), json!("http://")),
            case("interval", s("99ms"), json!(99)),
            case("interval", s("0s"), json!(0)),
            case("snapshot_every", toml::Value::Integer(0), json!(0)),
            case(
                "snapshot_every",
                toml::Value::Integer(100_001),
                json!(100_001),
            ),
            case("headers", bad_name, bad_name_json),
            case("headers", bad_value, bad_value_json),
            case("retain", s("a while"), json!("a while")),
            case("retain", s("-1"), json!("-1")),
        ]
    }

    /// Settings just inside each bound: both paths accept them.
    fn good() -> Vec<Case> {
        let s = |v: &str| toml::Value::String(v.into());
        let (h, hj) = headers("X-A", "a b");
        vec![
            case("id", s(&"a".repeat(128)), json!("a".repeat(128))),
            case("interval", s("100ms"), json!(100)),
            case("snapshot_every", toml::Value::Integer(1), json!(1)),
            case(
                "snapshot_every",
                toml::Value::Integer(100_000),
                json!(100_000),
            ),
            case("headers", h, hj),
            case("retain", s("forever"), json!("forever")),
            case("retain", s("1h"), json!("1h")),
        ]
    }

    fn config_text(c: &Case) -> String {
        let mut r = toml::Table::new();
        r.insert("id".into(), "ok".into());
        r.insert("url".into(), URL.into());
        r.insert(c.field.into(), c.toml.clone());
        let mut doc = toml::Table::new();
        doc.insert(
            "resource".into(),
            toml::Value::Array(vec![toml::Value::Table(r)]),
        );
        toml::to_string(&doc).expect("a TOML table serialises")
    }

    fn api_body(c: &Case) -> serde_json::Value {
        let mut b = json!({ "url": URL });
        b[c.api_field] = c.json.clone();
        b
    }

    /// Whether `msg` names `field` as a word of its own.
    fn names(msg: &str, field: &str) -> bool {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        msg.match_indices(field).any(|(i, _)| {
            let before = msg.as_bytes().get(i.wrapping_sub(1)).copied();
            let after = msg.as_bytes().get(i + field.len()).copied();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
    }

    #[tokio::test]
    async fn issue_11_config_file_and_api_judge_resource_settings_alike() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let shutdown = CancellationToken::new();
        let app = crate::app::start(config, false, listener, shutdown.clone())
            .await
            .expect("the server starts");
        let base = format!("http://{}/v1/resources", app.addr);
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let post = |body: serde_json::Value| {
            let req = http.post(&base).json(&body);
            async move {
                let r = req.send().await.expect("the server answers");
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.expect("a JSON body");
                (status, v)
            }
        };

        for c in bad() {
            let text = config_text(&c);
            let key = format!("resource[0].{}", c.field);
            match Config::parse(&text) {
                Err(crate::config::ConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{text:?}: {message}")
                }
                other => panic!("{text:?}: the config file gave {other:?}, expected {key}"),
            }
            let body = api_body(&c);
            let (status, v) = post(body.clone()).await;
            assert_eq!(status, 422, "{body}: {v}");
            assert_eq!(v["error"]["code"], "invalid_resource", "{body}: {v}");
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                names(msg, c.api_field),
                "{body}: the API's message {msg:?} does not name {}",
                c.api_field
            );
        }
        for (n, c) in good().into_iter().enumerate() {
            let text = config_text(&c);
            let parsed = Config::parse(&text);
            assert!(parsed.is_ok(), "{text:?}: {parsed:?}");
            let mut body = api_body(&c);
            if c.field != "id" {
                body["id"] = json!(format!("good-{n}"));
            }
            let (status, v) = post(body.clone()).await;
            assert_eq!(status, 201, "{body}: {v}");
        }
        shutdown.cancel();
        app.wait().await.expect("the server stops cleanly");
    }
}
