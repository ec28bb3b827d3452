//! Time-dependent behaviour on tokio's paused clock, in-process (`App`:
//! the router, pollers and proxy reaper on the test's current-thread
//! runtime) against a real loopback upstream on the same runtime: poller
//! back-off, SSE keep-alive, the proxy reaper. No test sleeps in real time:
//! timers fire as soon as the runtime is idle, so the times the upstream
//! records and the stream's chunks arrive at are exact.
//!
//! The one thing the paused clock cannot see is work on other threads (the
//! store's flush thread answering an append or a create): while the runtime
//! waits for it, the clock would jump to the next timer. Phases that wait
//! for it run under `hold_clock`, which stops the clock meanwhile; the
//! measured phases do no store writes (the upstream answers 304 or fails).

use std::time::Duration;

use patchfeed::model::ResourceId;
use serde_json::json;
use tokio::time::Instant;

use crate::support::*;

/// The resource's poll interval.
const INTERVAL: Duration = Duration::from_secs(1);
/// The poller's longest back-off (`MAX_BACKOFF`, `src/poll/poller.rs`).
const CAP: Duration = Duration::from_secs(300);

/// Creates resource `id` polling `url` every `INTERVAL` and waits, clock
/// held, for its first version.
async fn create_and_wait_first_version(app: &App, id: &str, url: &str) {
    let rid: ResourceId = id.parse().expect("id");
    hold_clock(async {
        let body = json!({"id": id, "url": url, "interval_ms": INTERVAL.as_millis() as u64});
        let r = app
            .request("POST", "/v1/resources", Some(&body.to_string()))
            .await;
        assert_eq!(r.status, 201, "{}", shown(&r.body));
        until_real("the first version", || {
            app.store.head(&rid).ok().flatten().is_some()
        })
        .await;
    })
    .await;
}

/// Waits in real time (the clock held, at most `WAIT`) until `cond`.
async fn until_real(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        // A blocking task holds the paused clock still while it sleeps.
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
            .await
            .expect("sleeper");
    }
}

#[tokio::test(start_paused = true)]
async fn paused_clock_backoff_doubles_to_the_cap_and_a_success_resets_it() {
    const FAILURES: usize = 12;
    let up = Upstream::start(json!({"v": 1})).await;
    // Request 0: the first version. 1..=12: failures (the cap is reached at
    // the 10th). 13: healed (304, the same version). 14, 15: failures
    // again. Then 304s.
    let mut script = vec![Mode::Ok];
    script.extend(std::iter::repeat_n(Mode::Status(503), FAILURES));
    script.push(Mode::Ok);
    script.extend([Mode::Status(503), Mode::Status(503)]);
    up.script(script);
    let app = App::start(|c| c.allow_private_upstreams = true).await;
    create_and_wait_first_version(&app, "r", &up.url()).await;

    // 1 + 2 + … + 256 + 3 × 300 s of back-off, and then some.
    tokio::time::sleep(Duration::from_secs(2000)).await;
    let times = up.times();
    let r = app.get("/v1/resources/r").await;
    assert!(r.json()["last_error"].is_null(), "healed at the end");
    app.stop().await;

    assert!(times.len() > FAILURES + 10, "{} requests", times.len());
    // gaps[k]: the delay the poller chose after request k.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps[0], INTERVAL, "after a success: the interval");
    for (k, gap) in gaps.iter().enumerate().take(FAILURES + 1).skip(1) {
        // The k-th failure in a row: in [c/2, c], c = interval·2^(k-1) ≤ cap.
        let ceiling = INTERVAL.saturating_mul(1 << (k - 1)).min(CAP);
        assert!(
            *gap >= ceiling / 2 && *gap <= ceiling,
            "failure {k}: waited {gap:?}, expected within [{:?}, {ceiling:?}]; gaps {:?}",
            ceiling / 2,
            &gaps[..FAILURES + 4]
        );
    }
    assert!(
        gaps[FAILURES] >= CAP / 2,
        "the cap is reached: {:?}",
        gaps[FAILURES]
    );
    assert_eq!(
        gaps[FAILURES + 1],
        INTERVAL,
        "a success resets the back-off"
    );
    let first = gaps[FAILURES + 2];
    assert!(
        first >= INTERVAL / 2 && first <= INTERVAL,
        "the first failure after the reset: {first:?}"
    );
    let second = gaps[FAILURES + 3];
    assert!(
        second >= INTERVAL && second <= INTERVAL * 2,
        "the second failure after the reset: {second:?}"
    );
    for gap in &gaps[FAILURES + 4..FAILURES + 10] {
        assert_eq!(*gap, INTERVAL, "healthy again: every interval");
    }
}

#[tokio::test(start_paused = true)]
async fn paused_clock_an_idle_stream_sends_keep_alive_within_keep_alive() {
    const KEEP_ALIVE: Duration = Duration::from_secs(5);
    let up = Upstream::start(json!({"v": 1})).await;
    let app = App::start(|c| {
        c.allow_private_upstreams = true;
        c.limits.keep_alive = KEEP_ALIVE;
    })
    .await;
    create_and_wait_first_version(&app, "r", &up.url()).await;
    let mut sse = app.stream("/v1/resources/r/events").await;
    hold_clock(sse.until_event("snapshot")).await;

    // The upstream does not change (304 every interval): the stream is
    // idle, and says so at most KEEP_ALIVE after its last chunk.
    let polls = up.requests();
    let mut last = Instant::now();
    for n in 0..6 {
        let block = sse
            .next_block(KEEP_ALIVE * 3)
            .await
            .unwrap_or_else(|| panic!("keep-alive {n}: nothing within {:?}", KEEP_ALIVE * 3));
        let now = Instant::now();
        assert_eq!(block, ": keep-alive\n\n", "keep-alive {n}");
        assert!(
            now - last <= KEEP_ALIVE && now > last,
            "keep-alive {n} came {:?} after the chunk before it",
            now - last
        );
        last = now;
    }
    assert!(
        up.requests() - polls >= 25,
        "polled all along: {}",
        up.requests() - polls
    );
    drop(sse);
    app.stop().await;
}

#[tokio::test(start_paused = true)]
async fn paused_clock_the_proxy_reaper_keeps_watched_resources_and_removes_idle_ones() {
    const IDLE: Duration = Duration::from_secs(60);
    // The reaper looks every idle/4 (`spawn_proxy_reaper`).
    const EVERY: Duration = Duration::from_secs(15);
    let up = Upstream::start(json!({"v": "ë"})).await;
    let app = App::start(|c| {
        c.allow_private_upstreams = true;
        c.proxy.enabled = true;
        c.proxy.interval = INTERVAL;
        c.proxy.idle = IDLE;
    })
    .await;
    let path = format!("/streamdata/{}", up.url());
    let sse = hold_clock(async {
        let mut sse = app.stream(&path).await;
        sse.until_event("data").await;
        sse
    })
    .await;
    assert_eq!(app.registry.ad_hoc_count(), 1);

    // Watched for ten idle periods: kept, and polled all along.
    let polls = up.requests();
    tokio::time::sleep(IDLE * 10).await;
    let polled = up.requests() - polls;
    assert!(
        polled >= 590,
        "polled {polled} times in {:?}: stopped while a subscriber was connected",
        IDLE * 10
    );
    assert_eq!(
        app.registry.ad_hoc_count(),
        1,
        "removed while a subscriber was connected"
    );

    // The last subscriber leaves. The reaper stops the poller before it
    // deletes, so the upstream's last request dates the removal (within
    // one interval).
    drop(sse);
    let left = Instant::now();
    tokio::time::sleep(IDLE + EVERY * 2).await;
    until_real("the idle resource removed", || {
        app.registry.ad_hoc_count() == 0
    })
    .await;
    let last_poll = *up.times().last().expect("polled");
    let idle_for = last_poll - left;
    assert!(
        idle_for + INTERVAL >= IDLE - EVERY && idle_for <= IDLE + EVERY,
        "removed after {idle_for:?} without subscribers (idle = {IDLE:?}, checked every {EVERY:?})"
    );
    let listed = hold_clock(app.get("/v1/resources")).await.json();
    assert_eq!(listed["resources"], json!([]), "{listed}");
    let text =
        String::from_utf8(hold_clock(app.get("/metrics")).await.body.to_vec()).expect("text");
    assert_eq!(
        metric(&text, "patchfeed_proxy_resources_removed_total"),
        1.0
    );
    app.stop().await;
}
