//! Operations endpoints: `/healthz` (always open) and `/metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::metrics::Sampled;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let sampled = Sampled {
        resources: state.registry.store().resources().len(),
        subscribers: state.hub.total_subscribers(),
        resources_failing: state.registry.failing(),
        proxy_resources: state.registry.ad_hoc_count(),
        log_flushes: state.registry.store().flushes(),
        diff_budget_exceeded: state.registry.store().diff_budget_exceeded(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&sampled),
    )
}
