//! `/v1/webhooks`: create, list, get, delete, replay, enable, attempts.
//! Wire types are defined here. The secret is in the 201 of a create only;
//! header values and URL credentials are never shown back.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Q};
use crate::model::{format_rfc3339_ms, redact_url, ResourceId, Resources, Start};
use crate::webhook::spec::{self, FromValue, WebhookInput};
use crate::webhook::{Attempt, View, WebhookError, ATTEMPTS_KEPT};

/// Default `limit` of `attempts`.
const DEFAULT_ATTEMPTS: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/v1/webhooks/{webhook}",
            get(get_webhook).delete(delete_webhook),
        )
        .route("/v1/webhooks/{webhook}/replay", post(replay_webhook))
        .route("/v1/webhooks/{webhook}/enable", post(enable_webhook))
        .route("/v1/webhooks/{webhook}/attempts", get(list_attempts))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::NotFound(id) => ApiError::WebhookNotFound(id),
            WebhookError::Exists(id) => ApiError::WebhookExists(id),
            WebhookError::Invalid(m) => ApiError::InvalidWebhook(m),
            WebhookError::Store(e) => e.into(),
        }
    }
}

/// `{id}` of a webhook path: a bad id is 400 naming it (an unknown one is
/// 404 `webhook_not_found`, from the manager).
struct HookId(ResourceId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HookId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        ResourceId::new(&raw)
            .map(HookId)
            .map_err(|e| ApiError::BadRequest(format!("invalid webhook id {raw:?}: {e}")))
    }
}

/// A JSON body: 400 when it is not JSON, 422 when its shape is wrong.
fn body<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    T::deserialize(value).map_err(|e| ApiError::InvalidWebhook(format!("invalid {what}: {e}")))
}

async fn create_webhook(
    State(state): State<AppState>,
    raw: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let input: WebhookInput = body(&raw, "webhook")?;
    let (spec, _) = spec::validate(input)
        .map_err(|e| ApiError::InvalidWebhook(format!("{}: {}", e.field, e.message)))?;
    let secret = spec.secret.clone();
    let view = state.service.webhooks().create(spec).await?;
    let mut v = view_json(&view);
    v["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_webhooks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = state.service.webhooks().list().await?;
    Ok(Json(
        json!({ "webhooks": list.iter().map(view_json).collect::<Vec<_>>() }),
    ))
}

async fn get_webhook(
    State(state): State<AppState>,
    HookId(id): HookId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view_json(&state.service.webhooks().view(&id).await?)))
}

async fn delete_webhook(
    State(state): State<AppState>,
    HookId(id): HookId,
) -> Result<StatusCode, ApiError> {
    if state.service.webhooks().delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::WebhookNotFound(id.to_string()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replay {
    from: Option<FromValue>,
}

async fn replay_webhook(
    State(state): State<AppState>,
    HookId(id): HookId,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    // Unknown webhook first, whatever the body.
    state.service.webhooks().view(&id).await?;
    let r: Replay = body(&raw, "replay")?;
    let from = r.from.ok_or_else(|| {
        ApiError::InvalidWebhook("from: missing: the point to replay from".into())
    })?;
    let point = match spec::parse_from(&from, false) {
        Ok(Start::Since(p)) => p,
        Ok(_) => unreachable!("parse_from without now_ok gives a point"),
        Err(m) => return Err(ApiError::BadRequest(format!("from: {m}"))),
    };
    Ok(Json(view_json(
        &state.service.webhooks().replay(&id, point).await?,
    )))
}

async fn enable_webhook(
    State(state): State<AppState>,
    HookId(id): HookId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view_json(
        &state.service.webhooks().enable(&id).await?,
    )))
}

#[derive(Deserialize)]
struct AttemptsQuery {
    limit: Option<String>,
}

async fn list_attempts(
    State(state): State<AppState>,
    HookId(id): HookId,
    Q(q): Q<AttemptsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_ATTEMPTS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=ATTEMPTS_KEPT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit {raw:?}: expected an integer from 1 to {ATTEMPTS_KEPT}"
                )))
            }
        },
    };
    let attempts = state.service.webhooks().attempts(&id, limit)?;
    Ok(Json(json!({
        "attempts": attempts.iter().map(|a| attempt_json(&id, a)).collect::<Vec<_>>()
    })))
}

fn attempt_json(webhook: &ResourceId, a: &Attempt) -> Value {
    let mut v = json!({
        "webhook_id": webhook.as_str(),
        "resource": a.resource.as_str(),
        "event_id": a.event_id.to_string(),
        "attempt": a.attempt,
        "time": format_rfc3339_ms(a.time_ms),
        "duration_ms": a.duration_ms,
    });
    if let Some(s) = a.status {
        v["status"] = json!(s);
    }
    if let Some(e) = &a.error {
        v["error"] = json!(e);
    }
    v
}

/// A webhook as shown: never its secret, nor its header values.
fn view_json(v: &View) -> Value {
    let s = &v.record.spec;
    let resources: Vec<&str> = match &s.resources {
        Resources::All => vec!["*"],
        Resources::List(l) => l.iter().map(|r| r.as_str()).collect(),
    };
    let from = match s.from {
        Start::Fresh => Value::Null,
        Start::Now => json!("now"),
        Start::Since(crate::model::Point::Id(u)) => json!(u.to_string()),
        Start::Since(crate::model::Point::Time(ms)) => json!(format_rfc3339_ms(ms)),
    };
    let cursors: serde_json::Map<String, Value> = v
        .cursors
        .iter()
        .map(|(r, c)| {
            (
                r.as_str().to_owned(),
                json!({
                    "acked": c.acked.map(|e| e.to_string()),
                    "head": c.head.map(|e| e.to_string()),
                    "pending": c.pending,
                }),
            )
        })
        .collect();
    json!({
        "id": s.id.as_str(),
        "url": redact_url(&s.url),
        "resources": resources,
        "path": s.path,
        "from": from,
        "coalesce": s.coalesce,
        "headers": s.headers.keys().collect::<Vec<_>>(),
        "created": format_rfc3339_ms(v.record.created_ms),
        "state": v.state.as_str(),
        "disabled_reason": v.record.disabled,
        "cursors": cursors,
    })
}
