//! The server in-process. `InProcess`: `patchfeed::app::serve` on
//! 127.0.0.1:0, as the binary runs it. `App`: the router on a temp store,
//! called with `tower::ServiceExt::oneshot` (no socket), with its pollers
//! and the proxy reaper on the test's own runtime, so that under
//! `#[tokio::test(start_paused = true)]` the paused clock drives them too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use patchfeed::api::{self, HttpLimits};
use patchfeed::app::{self, Tasks};
use patchfeed::config::Config;
use patchfeed::store::Store;
use patchfeed::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::http::{Reply, WAIT};

/// The server in-process, on 127.0.0.1:0 with a fresh data dir.
pub struct InProcess {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    pub dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> InProcess {
        InProcess::launch(tweak, false).await
    }

    /// With `demo`, also the built-in demo upstream and resource.
    pub async fn launch(tweak: impl FnOnce(&mut Config), demo: bool) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(patchfeed::app::serve(
            config,
            demo,
            listener,
            shutdown.clone(),
        ));
        InProcess {
            addr,
            shutdown,
            task,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts down and checks the server stopped cleanly and in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops within 15 s")
            .expect("server task did not panic");
        r.expect("server ends without error");
    }
}

/// The API without sockets: `api::router` over the core `app::assemble`
/// builds, as `app::start` does, except that pollers run on the caller's
/// runtime (not an ingest thread of their own) and there is no demo and no
/// listener.
pub struct App {
    pub router: axum::Router,
    pub registry: Arc<Registry>,
    pub store: Store,
    pub shutdown: CancellationToken,
    tasks: Tasks,
    pub dir: tempfile::TempDir,
}

impl App {
    /// On a fresh data dir; `tweak` edits the default config (resources in
    /// it are registered and polled).
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let core = app::assemble(
            &config,
            false,
            shutdown.clone(),
            tokio::runtime::Handle::current(),
        )
        .await
        .expect("assemble the server");
        let tasks = core.start_tasks(config.limits.compact_every);
        let registry = core.registry.clone();
        let store = core.store().clone();
        let router = api::router(
            core.state,
            &HttpLimits {
                max_request_body: config.limits.max_request_body_bytes,
                request_timeout: config.limits.request_timeout,
            },
        );
        App {
            router,
            registry,
            store,
            shutdown,
            tasks,
            dir,
        }
    }

    /// One request through the router; the response as it comes (a stream
    /// stays open while its body is held).
    pub async fn call(&self, req: Request<Body>) -> Response {
        let resp = self.router.clone().oneshot(req);
        match tokio::time::timeout(WAIT, resp).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => match e {},
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    /// One request, its response read whole.
    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .expect("a valid request");
        Reply::from_response(self.call(req).await).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }

    /// `GET path` as an event stream.
    pub async fn stream(&self, path: &str) -> super::sse::Sse {
        let req = Request::get(path).body(Body::empty()).expect("a request");
        super::sse::Sse::from_body(self.call(req).await)
    }

    /// Ends streams, stops the pollers and the reaper, flushes the store.
    pub async fn stop(self) {
        self.shutdown.cancel();
        hold_clock(async {
            self.registry.stop_all().await;
            self.tasks.join().await;
            self.store.flush().await.expect("final flush");
        })
        .await;
    }
}

/// Runs `fut` with a paused clock held still: while it runs, work on other
/// threads (the store's flush thread answering an append) does not count
/// as idle time, so the clock does not jump to the next timer meanwhile.
/// Tokio inhibits auto-advance while a `spawn_blocking` task runs; this one
/// waits for `fut` to finish (or `WAIT`, real time). Without a paused
/// clock it only runs `fut`.
pub async fn hold_clock<F: std::future::Future>(fut: F) -> F::Output {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let _ = wait.recv_timeout(WAIT);
    });
    let out = fut.await;
    drop(done);
    let _ = holder.await;
    out
}
