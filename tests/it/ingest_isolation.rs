//! Issue 17, finding 3: one upstream must not starve the rest. A hostile
//! upstream serves, alternately, two versions of a 1 MB document nested 120
//! arrays deep around 500,000 elements that all change (the diff that cost
//! ~1.4 s a poll on the one ingest thread); a control resource beside it
//! changes every 100 ms and must keep its pace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::support::*;

/// `depth` arrays around one of `n` elements (0 or 1), all of which flip
/// between versions 0 and 1.
fn hostile(depth: usize, n: usize, version: usize) -> Value {
    let mut doc = Value::Array((0..n).map(|i| json!((i + version) % 2)).collect());
    for _ in 0..depth {
        doc = Value::Array(vec![doc]);
    }
    doc
}

struct Docs {
    /// The hostile document's two versions, as JSON text.
    hostile: [bytes::Bytes; 2],
    hostile_requests: AtomicU64,
    started: Instant,
}

/// `/hostile` alternates the two versions, one per request; `/control` is
/// `{"tick": n}` with n the 100 ms periods since start.
async fn start_upstreams(docs: Arc<Docs>) -> SocketAddr {
    async fn hostile_doc(State(d): State<Arc<Docs>>) -> impl IntoResponse {
        let i = d.hostile_requests.fetch_add(1, Ordering::Relaxed) as usize;
        (
            [(header::CONTENT_TYPE, "application/json")],
            d.hostile[i % 2].clone(),
        )
    }
    async fn control_doc(State(d): State<Arc<Docs>>) -> impl IntoResponse {
        let tick = d.started.elapsed().as_millis() / 100;
        (
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "tick": tick as u64 }).to_string(),
        )
    }
    let app = Router::new()
        .route("/hostile", get(hostile_doc))
        .route("/control", get(control_doc))
        .with_state(docs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Patches of `id` seen on its stream within `window` (after its snapshot).
async fn patches_within(s: &Server, id: &str, window: Duration) -> usize {
    let mut sse = Sse::open(&s.url(&format!("/v1/resources/{id}/events")), None).await;
    sse.until_event("snapshot").await;
    let deadline = tokio::time::Instant::now() + window;
    let mut patches = 0;
    // Bounded: one event per iteration, and the deadline.
    for _ in 0..100_000 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match sse.next(left).await {
            Some(f) if f.event == "patch" => patches += 1,
            Some(_) => {}
            None => break,
        }
    }
    patches
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_17_a_hostile_upstream_does_not_starve_the_others() {
    let docs = Arc::new(Docs {
        hostile: [0, 1].map(|v| {
            serde_json::to_vec(&hostile(120, 500_000, v))
                .unwrap()
                .into()
        }),
        hostile_requests: AtomicU64::new(0),
        started: Instant::now(),
    });
    assert!(docs.hostile[0].len() > 1_000_000);
    let addr = start_upstreams(docs.clone()).await;
    let s = Server::start(&config(
        &[
            ("hostile", &format!("http://{addr}/hostile")),
            ("control", &format!("http://{addr}/control")),
        ],
        "",
    ));
    // The hostile resource is past its first version: each poll now diffs.
    s.wait_resource("hostile", "the hostile document's first version", |v| {
        !v["last_event_id"].is_null()
    })
    .await;

    // Polled every 100 ms and changing as often: ~100 patches in 10 s.
    let window = Duration::from_secs(10);
    let patches = patches_within(&s, "control", window).await;
    eprintln!("control: {patches} patches in {window:?} beside the hostile resource");
    assert!(
        patches >= 50,
        "the control resource got {patches} patches in {window:?} beside the hostile one (expected ~100)"
    );

    // The hostile resource was really diffing meanwhile, over budget.
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    let exceeded = metric(&text, "patchfeed_diff_budget_exceeded_total");
    assert!(
        exceeded.is_some_and(|n| n >= 1),
        "budget fallbacks: {exceeded:?}"
    );
    // And its document is one of the two versions, exactly.
    let (status, doc) = s.get("/v1/resources/hostile/document").await;
    assert_eq!(status, 200);
    let want: [Value; 2] = [0, 1].map(|v| serde_json::from_slice(&docs.hostile[v]).unwrap());
    assert!(
        doc == want[0] || doc == want[1],
        "the hostile document is neither version"
    );
}
