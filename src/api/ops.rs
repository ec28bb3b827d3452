//! Operations endpoints: `/healthz` and `/metrics`, open even when a
//! token is configured (load balancers and scrapers rarely carry one).
//!
//! Both only read: the health comes from the service, the figures from the
//! metrics; neither names a resource's URL or a token.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
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
    let health = state.service.health();
    if health.failing.is_none() && health.quarantined.is_empty() && health.unattributed.is_empty() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    let mut quarantined: Vec<Value> = health
        .quarantined
        .iter()
        .map(|(id, q)| json!({ "id": id.as_str(), "key": q.key, "reason": q.reason }))
        .collect();
    quarantined.extend(
        health
            .unattributed
            .iter()
            .map(|u| json!({ "id": null, "key": u.key, "reason": u.reason })),
    );
    let body = json!({
        "status": "degraded",
        "storage": health.failing.map(|(error, since)| json!({
            "error": error,
            "since": format_rfc3339_ms(since),
        })),
        "quarantined": quarantined,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = state.service.metrics().render(&state.service.sampled());
            text.push_str(&state.service.webhooks().render_metrics().await);
            text
        },
    )
}
