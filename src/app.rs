//! Start-up and shutdown: open the store, restore and register resources,
//! bind, serve, and on SIGINT/SIGTERM end every stream, drain connections
//! within a grace period, stop the pollers and flush the store.
//!
//! The accept loop is ours rather than `axum::serve` so that connections
//! are capped (over the cap: a JSON 503), request heads are bounded, and
//! hyper's own error responses get the JSON shape (`conn_io`).

mod conn_io;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Auth, HttpLimits};
use crate::config::Config;
use crate::hub::Hub;
use crate::log::Store;
use crate::metrics::Metrics;
use crate::poll::fetch::{FetchConfig, Fetcher};
use crate::registry::Registry;
use crate::sse::{self, StreamConfig};

/// Largest request head (request line and headers) accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections being turned away at once; more are dropped unanswered.
const MAX_REFUSING: usize = 256;

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: Config, demo: bool) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    serve(config, demo, listener, shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    config: Config,
    demo: bool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(config, demo, listener, shutdown).await?.wait().await
}

/// A server started by [`start`]: it serves until its `shutdown` token is
/// cancelled.
pub struct Running {
    /// The live resources, for in-process callers (the fan-out bench hands
    /// documents to `Registry::ingest` faster than polling could).
    pub registry: Arc<Registry>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the server has drained and flushed the store.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task failed")?
    }
}

/// Opens the store, registers resources, announces the address and spawns
/// the accept loop; returns once the server is ready to accept.
pub async fn start(
    config: Config,
    demo: bool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let limits = &config.limits;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir)
        .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(limits.live_buffer));
    let fetch = FetchConfig {
        timeout: limits.upstream_timeout,
        max_body: limits.upstream_max_body_bytes,
        allow_private: config.allow_private_upstreams,
        ..FetchConfig::default()
    };
    let proxy_fetch = FetchConfig {
        allowed_hosts: config.proxy.allowed_hosts.clone(),
        ..fetch.clone()
    };
    let trusted = FetchConfig {
        allow_private: true,
        ..fetch.clone()
    };
    let ingest = IngestRuntime::start().context("starting the ingest thread")?;
    let registry = Registry::new(
        store.clone(),
        hub.clone(),
        metrics.clone(),
        Fetcher::new(fetch).context("building the HTTP client")?,
        Fetcher::new(trusted).context("building the HTTP client")?,
        shutdown.clone(),
        ingest.handle.clone(),
    );

    for spec in &config.resources {
        registry
            .put(spec.clone())
            .await
            .with_context(|| format!("registering resource {}", spec.id))?;
    }
    if demo {
        let stop = shutdown.clone();
        let addr = crate::demo::start(async move { stop.cancelled().await })
            .await
            .context("starting the demo upstream")?;
        let spec = crate::demo::demo_spec(addr);
        registry.trust(&spec.id);
        registry.put(spec).await.context("registering the demo")?;
    }
    registry.configure_proxy(
        config.proxy.clone(),
        Fetcher::new(proxy_fetch).context("building the HTTP client")?,
    );
    registry.start_all();
    let reaper = registry.spawn_proxy_reaper();
    let compactor = registry.spawn_compactor(limits.compact_every);

    let state = AppState {
        registry: registry.clone(),
        hub,
        metrics: metrics.clone(),
        auth: Arc::new(Auth {
            token: config.token.clone(),
            read_token: config.read_token.clone(),
        }),
        sse: sse::Ctx {
            store: store.clone(),
            metrics: metrics.clone(),
            config: StreamConfig {
                keep_alive: limits.keep_alive,
                ..StreamConfig::default()
            },
            shutdown: shutdown.clone(),
        },
    };
    let router = api::router(
        state,
        &HttpLimits {
            max_request_body: limits.max_request_body_bytes,
            request_timeout: limits.request_timeout,
        },
    );

    let addr = listener.local_addr().context("reading the bound address")?;
    announce(addr);
    tracing::info!(%addr, resources = registry.store().resources().len(), "serving");

    let task = tokio::spawn(accept_loop(Serving {
        listener,
        router,
        limits: limits.clone(),
        metrics,
        registry: registry.clone(),
        store,
        compactor,
        reaper,
        shutdown,
        ingest,
    }));
    Ok(Running {
        registry,
        addr,
        task,
    })
}

/// What the accept loop owns until shutdown.
struct Serving {
    listener: TcpListener,
    router: axum::Router,
    limits: crate::config::Limits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    store: Store,
    compactor: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    /// Outlives the final flush: dropped last.
    ingest: IngestRuntime,
}

/// Accepts until shutdown, then drains connections, stops the pollers and
/// flushes the store.
async fn accept_loop(s: Serving) -> anyhow::Result<()> {
    let Serving {
        listener,
        router,
        limits,
        metrics,
        registry,
        store,
        compactor,
        reaper,
        shutdown,
        ingest,
    } = s;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, usually: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Metrics::inc(&metrics.http_refused);
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(p);
                });
            }
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        // `max_buf_size` alone lets a head through that arrives in a read
        // overshooting it; `max_header_size` is exact. The buffer bound
        // also caps what hyper queues for a client that does not read.
        http.max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        let conn = http.serve_connection(
            TokioIo::new(conn_io::ConnIo::new(stream)),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.http_open.fetch_add(1, Relaxed);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics.http_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    drop(listener);

    // Streams end by themselves on `shutdown`; requests in flight get the
    // grace period.
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    registry.stop_all().await;
    let _ = compactor.await;
    let _ = reaper.await;
    store.flush().await.context("final flush")?;
    drop(ingest);
    tracing::info!("stopped");
    Ok(())
}

/// A thread running a current-thread runtime for the pollers and appends.
///
/// Publishing an event wakes every subscriber's task at once; on the
/// shared runtime, the next append's wake-ups (the flush thread's answer
/// comes through the global queue) waited behind all of them, so one
/// resource published at most one event per fan-out and every subscriber
/// paid one write per event. On a thread of their own, appends keep their
/// pace and subscribers that fall behind write several events at once.
///
/// Every resource's polls share this one thread, so nothing slow may run
/// on it: the CPU-heavy steps of large documents (the parse, the diff and
/// the encoding) go to the blocking pool (`crate::cpu`), and the diff is
/// bounded by its work budget (`crate::diff`). A resource whose document is
/// expensive slows its own polls, not the others'.
struct IngestRuntime {
    handle: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl IngestRuntime {
    fn start() -> std::io::Result<IngestRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let until = stop.clone();
        std::thread::Builder::new()
            .name("patchfeed-ingest".into())
            .spawn(move || rt.block_on(until.cancelled()))?;
        Ok(IngestRuntime { handle, stop })
    }
}

impl Drop for IngestRuntime {
    /// Ends the thread; tasks still on it (none after `stop_all`) are
    /// dropped there, outside any async context.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The one line on stdout that tells scripts where we listen.
fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "patchfeed listening on http://{addr}");
    let _ = out.flush();
}

/// Answers a connection over the cap with a JSON 503, after reading (a
/// bounded part of) its request so the client sees the answer, not a reset.
async fn refuse(mut stream: TcpStream) {
    let body = api::error::body(
        "too_many_connections",
        "the server is at its connection limit; retry later",
    );
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::with_capacity(1024);
        while seen.len() < 16 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
