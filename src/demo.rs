//! `--demo`: a built-in upstream on loopback whose JSON document changes
//! every second, registered as resource `demo`, so that a fresh checkout
//! shows a live feed with no network and no set-up.
//!
//! The document looks like a small market API: nested objects whose numbers
//! move, an order book array that gains items at the front and loses them
//! at the back, a key with `/` and `~`, and non-ASCII text. It answers
//! `If-None-Match` with 304, like a well-behaved upstream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::model::{format_rfc3339_ms, now_ms, ResourceInput, ResourceSpec};

/// Path of the document on the demo upstream.
pub const PATH: &str = "/demo.json";
/// How often the document changes.
pub const CHANGE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Current {
    etag: HeaderValue,
    body: Bytes,
}

type Shared = Arc<RwLock<Current>>;

/// The demo document after `tick` changes. Pure: the same tick gives the
/// same document.
pub fn document(tick: u64, at_ms: u64) -> Value {
    let r = |salt: u64| mix(tick, salt);
    let price = |base: f64, noise: u64| -> f64 {
        let step = (noise % 2001) as f64 / 1000.0 - 1.0;
        ((base + step * base / 200.0) * 100.0).round() / 100.0
    };
    // One new order per tick at the front; keep the 6 newest, so one
    // falls off the back each tick.
    let orders: Vec<Value> = (0..6u64)
        .filter(|k| *k <= tick)
        .map(|k| {
            let n = tick - k;
            json!({
                "id": format!("o-{n}"),
                "side": if n.is_multiple_of(3) { "sell" } else { "buy" },
                "price": price(61_000.0, mix(n, 7)),
                "qty": ((n * 37) % 90 + 10) as f64 / 100.0,
            })
        })
        .collect();
    json!({
        "service": "patchfeed demo market",
        "tick": tick,
        "updated": format_rfc3339_ms(at_ms),
        "market": {
            "status": if tick % 30 < 25 { "open" } else { "auction" },
            "pairs": {
                "BTC-EUR": { "bid": price(61_000.0, r(1)), "ask": price(61_050.0, r(2)), "volume": r(3) % 5000 },
                "ETH-EUR": { "bid": price(2_400.0, r(4)), "ask": price(2_402.0, r(5)), "volume": r(6) % 9000 },
            },
        },
        "orders": orders,
        "notes": {
            "currency/unit": "EUR~cents",
            "message": "Prix indicatifs — données de démonstration ✓",
        },
    })
}

/// A small deterministic mixer (splitmix64), so numbers wander plausibly
/// and the same tick always gives the same document.
fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

fn render(tick: u64) -> Current {
    let doc = document(tick, now_ms());
    // Serializing a Value cannot fail.
    let body = Bytes::from(serde_json::to_vec(&doc).expect("demo document serializes"));
    let etag = HeaderValue::from_str(&format!("\"demo-{tick}\"")).expect("ASCII etag");
    Current { etag, body }
}

async fn serve_document(State(current): State<Shared>, headers: HeaderMap) -> Response {
    let c = current.read().unwrap_or_else(|e| e.into_inner()).clone();
    if headers.get(header::IF_NONE_MATCH) == Some(&c.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, c.etag)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, c.etag),
        ],
        c.body,
    )
        .into_response()
}

/// Starts the demo upstream on `127.0.0.1:0`; it stops when `shutdown`
/// completes. Returns its address.
pub async fn start(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let current: Shared = Arc::new(RwLock::new(render(0)));
    let app = Router::new()
        .route(PATH, get(serve_document))
        .with_state(current.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let ticker_stop = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHANGE_EVERY);
        every.tick().await;
        let mut tick = 0u64;
        loop {
            tokio::select! {
                _ = ticker_stop.cancelled() => return,
                _ = every.tick() => {}
            }
            tick += 1;
            *current.write().unwrap_or_else(|e| e.into_inner()) = render(tick);
        }
    });
    tokio::spawn(async move {
        let _stop_ticker = stop.drop_guard();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the demo upstream stopped");
        }
    });
    Ok(addr)
}

/// The `demo` resource, polled twice per change (so half the polls are 304).
/// Through the settings validator, like every resource; its own values are
/// the interval and a day of history.
pub fn demo_spec(addr: SocketAddr) -> ResourceSpec {
    ResourceSpec::validate(ResourceInput {
        id: Some("demo".into()),
        url: Some(format!("http://{addr}{PATH}")),
        interval: Some(DEMO_INTERVAL),
        retain: Some(Some(DEMO_RETAIN)),
        ..ResourceInput::default()
    })
    .expect("the demo's settings are within every bound")
}

/// Twice per [`CHANGE_EVERY`], so half the polls are 304.
const DEMO_INTERVAL: Duration = Duration::from_millis(500);
const DEMO_RETAIN: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_changes_every_tick_and_the_list_moves() {
        let a = document(10, 0);
        let b = document(11, 0);
        assert_ne!(a, b);
        assert_eq!(b["orders"][0]["id"], "o-11");
        assert_eq!(b["orders"][1], a["orders"][0]);
        assert_eq!(b["orders"].as_array().unwrap().len(), 6);
        assert_eq!(document(0, 0)["orders"].as_array().unwrap().len(), 1);
        assert_eq!(document(10, 5), document(10, 5));
    }
}
