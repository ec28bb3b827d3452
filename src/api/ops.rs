//! Operations endpoints: `/healthz` (always open) and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::metrics::Sampled;
use crate::model::format_rfc3339_ms;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// 200 `{"status":"ok"}`, or 503 `{"status":"degraded", ...}` naming what
/// is wrong: `storage` while writes to the data dir are failing, and
/// `quarantined` resources whose stored data could not be read at start-up.
async fn healthz(State(state): State<AppState>) -> Response {
    let store = state.registry.store();
    let storage = store.health().failing();
    let (named, unattributed) = store.quarantined();
    if storage.is_none() && named.is_empty() && unattributed.is_empty() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    let mut quarantined: Vec<Value> = named
        .iter()
        .map(|(id, q)| json!({ "id": id.as_str(), "key": q.key, "reason": q.reason }))
        .collect();
    quarantined.extend(
        unattributed
            .iter()
            .map(|u| json!({ "id": null, "key": u.key, "reason": u.reason })),
    );
    let body = json!({
        "status": "degraded",
        "storage": storage.map(|(error, since)| json!({
            "error": error,
            "since": format_rfc3339_ms(since),
        })),
        "quarantined": quarantined,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let sampled = Sampled {
        resources: state.registry.store().resources().len(),
        subscribers: state.hub.total_subscribers(),
        resources_failing: state.registry.failing(),
        proxy_resources: state.registry.ad_hoc_count(),
        log_flushes: state.registry.store().flushes(),
        storage_failing: state.registry.store().health().failing().is_some(),
        storage_errors: state.registry.store().health().errors(),
        resources_quarantined: {
            let (named, unattributed) = state.registry.store().quarantined();
            named.len() + unattributed.len()
        },
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&sampled),
    )
}
