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
use crate::model::{format_rfc3339_ms, redact_url, ResourceId, ResourceSpec};
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
    url: String,
    interval_ms: Option<u64>,
    headers: Option<BTreeMap<String, String>>,
    snapshot_every: Option<u32>,
    /// Humantime (`"7d"`), `"forever"`, or milliseconds.
    retain: Option<Retain>,
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

fn validate(state: &AppState, new: NewResource) -> Result<ResourceSpec, ApiError> {
    let id = match new.id {
        Some(raw) => {
            ResourceId::new(&raw).map_err(|e| invalid(format!("invalid id {raw:?}: {e}")))?
        }
        None => ResourceId::new(&ulid::Ulid::generate().to_string().to_ascii_lowercase())
            .map_err(|e| ApiError::Internal(e.into()))?,
    };
    state
        .service
        .check_url(&new.url)
        .map_err(|e| invalid(format!("invalid url: {e}")))?;
    let interval = match new.interval_ms {
        None => ResourceSpec::DEFAULT_INTERVAL,
        Some(ms) => Duration::from_millis(ms),
    };
    if interval < ResourceSpec::MIN_INTERVAL {
        return Err(invalid(format!(
            "interval_ms {} is below the minimum of 100",
            interval.as_millis()
        )));
    }
    let snapshot_every = new
        .snapshot_every
        .unwrap_or(ResourceSpec::DEFAULT_SNAPSHOT_EVERY);
    if !(1..=ResourceSpec::MAX_SNAPSHOT_EVERY).contains(&snapshot_every) {
        return Err(invalid(format!(
            "snapshot_every {snapshot_every} is outside 1..={}",
            ResourceSpec::MAX_SNAPSHOT_EVERY
        )));
    }
    let headers = new.headers.unwrap_or_default();
    for (k, v) in &headers {
        if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(invalid(format!("invalid header name {k:?}")));
        }
        if axum::http::HeaderValue::from_str(v).is_err() {
            return Err(invalid(format!("invalid value for header {k:?}")));
        }
    }
    let retain = match new.retain {
        None => Some(ResourceSpec::DEFAULT_RETAIN),
        Some(Retain::Millis(ms)) => Some(Duration::from_millis(ms)),
        Some(Retain::Text(t)) => crate::config::parse_retain(&t)
            .map_err(|e| invalid(format!("invalid retain {t:?}: {e}")))?,
    };
    Ok(ResourceSpec {
        id,
        url: new.url,
        interval,
        headers,
        snapshot_every,
        retain,
        ad_hoc: false,
    })
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
    json!({
        "id": spec.id.as_str(),
        // Credentials in the URL are for polling, not for showing.
        "url": redact_url(&spec.url),
        "interval_ms": u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX),
        "created": format_rfc3339_ms(info.record.created_ms),
        "last_event_id": info.log.last_event_id.map(|e| e.to_string()),
        "last_polled": info.poll.last_polled_ms.map(format_rfc3339_ms),
        "last_error": last_error,
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
