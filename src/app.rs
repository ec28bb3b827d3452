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
use crate::feed::{self, FeedConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::poll::fetch::FetchConfig;
use crate::registry::{self, Registry};
use crate::service::Service;
use crate::store::{Store, StoreError};

/// Largest request head (request line and headers) accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections being turned away at once; more are dropped unanswered.
const MAX_REFUSING: usize = 256;

/// Exit status when writes to the data dir failed and did not recover in
/// process (`EX_TEMPFAIL`): a supervisor should restart the server, which
/// reopens the data dir and loses nothing that was durable.
pub const EXIT_STORAGE_FAILED: u8 = 75;
/// How long writes may keep failing before the server gives up and exits
/// with [`EXIT_STORAGE_FAILED`]. Meanwhile `/healthz` answers 503.
pub const STORAGE_GIVE_UP: Duration = Duration::from_secs(5);
/// How often the watchdog probes a failing store.
const STORAGE_PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long the shutdown after a storage failure may take before the
/// process exits anyway: longer than the connections' grace period (5 s by
/// default) and the final flush of a working disk.
const STORAGE_EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// The server stopped because its storage kept failing.
#[derive(Debug, thiserror::Error)]
#[error("writes to the data dir kept failing for {}s ({error}); exiting for a restart, which reopens it", STORAGE_GIVE_UP.as_secs())]
pub struct StorageFailed {
    /// The write error the store reported when the server gave up.
    pub error: String,
}

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
    /// The address it listens on (the bound port, when asked for port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the server has drained and flushed the store.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task failed")?
    }
}

/// Every part of a server but its listener, assembled from a [`Config`]
/// in one place: the log, the hub, the metrics, the registry (pollers,
/// compactor, proxy), the config and demo resources, and the state every
/// handler sees. Nothing is polled, compacted or reaped until the caller
/// starts the background tasks with [`Core::start_tasks`].
pub struct Core {
    /// The one service the API sees, inside [`Core::state`].
    pub state: AppState,
    /// The live resources, for in-process callers (the fan-out bench hands
    /// documents to `Registry::ingest` faster than polling could).
    pub registry: Arc<Registry>,
    store: Store,
    webhooks: Arc<crate::webhook::Manager>,
}

/// See [`Core`]. `ingest` is the runtime pollers and appends run on.
pub async fn assemble(
    config: &Config,
    demo: bool,
    shutdown: CancellationToken,
    ingest: tokio::runtime::Handle,
) -> anyhow::Result<Core> {
    let limits = &config.limits;
    // `[cluster]` puts the log on NATS JetStream; without it, sled (and
    // nothing of NATS is touched).
    let store = match &config.cluster {
        Some(cluster) => crate::store::open_cluster(cluster)
            .await
            .with_context(|| format!("opening the cluster log on {:?}", cluster.nats))?,
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
            crate::store::open_sled(&config.data_dir)
                .with_context(|| format!("opening data dir {}", config.data_dir.display()))?
        }
    };
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(limits.live_buffer));
    let registry = Registry::new(registry::Parts {
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        fetch: FetchConfig {
            timeout: limits.upstream_timeout,
            max_body: limits.upstream_max_body_bytes,
            allow_private: config.allow_private_upstreams,
            ..FetchConfig::default()
        },
        proxy: config.proxy.clone(),
        shutdown: shutdown.clone(),
        ingest,
    })
    .context("building the HTTP client")?;

    for spec in &config.resources {
        match registry.put(spec.clone()).await {
            // Kept as it is on disk, reported by /healthz; the rest serve.
            Err(StoreError::Quarantined { id, quarantine }) => tracing::error!(
                resource = %id,
                reason = %quarantine.reason,
                "configured resource is quarantined; not polling it"
            ),
            r => {
                r.with_context(|| format!("registering resource {}", spec.id))?;
            }
        }
    }
    if demo {
        let stop = shutdown.clone();
        let addr = crate::demo::start(async move { stop.cancelled().await })
            .await
            .context("starting the demo upstream")?;
        registry
            .put_trusted(crate::demo::demo_spec(addr))
            .await
            .context("registering the demo")?;
    }

    let feed = feed::Ctx {
        store: store.clone(),
        metrics,
        config: FeedConfig {
            keep_alive: limits.keep_alive,
            ..FeedConfig::default()
        },
        shutdown: shutdown.clone(),
    };
    let webhooks = crate::webhook::Manager::new(crate::webhook::Parts {
        store: store.clone(),
        hub: hub.clone(),
        feed: feed.clone(),
        settings: config.webhooks.clone(),
        allow_private: config.allow_private_upstreams,
        shutdown,
    })
    .context("loading the webhooks")?;
    webhooks
        .apply_config(&config.webhook_tables)
        .await
        .context("registering the configured webhooks")?;
    let state = AppState {
        service: Arc::new(Service::new(
            registry.clone(),
            hub,
            feed,
            limits.max_connections,
            webhooks.clone(),
        )),
        auth: Arc::new(Auth {
            token: config.token.clone(),
            read_token: config.read_token.clone(),
        }),
    };
    Ok(Core {
        state,
        registry,
        store,
        webhooks,
    })
}

/// The background tasks of a running core.
pub struct Tasks {
    compactor: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
    webhooks: tokio::task::JoinHandle<()>,
}

impl Tasks {
    /// Waits for the tasks to end (they end on the shutdown signal).
    pub async fn join(self) {
        let _ = self.compactor.await;
        let _ = self.reaper.await;
        let _ = self.webhooks.await;
    }
}

impl Core {
    /// The log.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts every poller, the compactor (every `compact_every`), the
    /// proxy reaper and the webhooks' deliveries.
    pub fn start_tasks(&self, compact_every: Duration) -> Tasks {
        self.registry.start_all();
        Tasks {
            reaper: self.registry.spawn_proxy_reaper(),
            compactor: self.registry.spawn_compactor(compact_every),
            webhooks: self.webhooks.start(),
        }
    }
}

/// Assembles the server, registers resources, announces the address and
/// spawns the accept loop; returns once the server is ready to accept.
pub async fn start(
    config: Config,
    demo: bool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let limits = &config.limits;
    let ingest = IngestRuntime::start().context("starting the ingest thread")?;
    let core = assemble(&config, demo, shutdown.clone(), ingest.handle.clone()).await?;
    let Tasks {
        compactor,
        reaper,
        webhooks,
    } = core.start_tasks(limits.compact_every);
    let storage_failed = Arc::new(std::sync::OnceLock::new());
    let watchdog =
        spawn_storage_watchdog(core.store.clone(), shutdown.clone(), storage_failed.clone());
    let metrics = core.state.service.metrics().clone();
    let service = core.state.service.clone();
    let router = api::router(
        core.state,
        &HttpLimits {
            max_request_body: limits.max_request_body_bytes,
            request_timeout: limits.request_timeout,
        },
    );

    let addr = listener.local_addr().context("reading the bound address")?;
    announce(addr);
    tracing::info!(%addr, resources = core.store.resources().len(), "serving");
    let console = if demo { "/ui/resources/demo" } else { "/ui" };
    tracing::info!("web console: http://{addr}{console}");

    let task = tokio::spawn(accept_loop(Serving {
        listener,
        router,
        limits: limits.clone(),
        metrics,
        registry: core.registry.clone(),
        service,
        store: core.store,
        compactor,
        reaper,
        webhooks,
        watchdog,
        storage_failed,
        shutdown,
        ingest,
    }));
    Ok(Running {
        registry: core.registry,
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
    service: Arc<Service>,
    store: Store,
    compactor: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
    /// Ends once every webhook worker has (they end on `shutdown`).
    webhooks: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
    /// Set by the watchdog when it gave up on the storage.
    storage_failed: Arc<std::sync::OnceLock<String>>,
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
        service,
        store,
        compactor,
        reaper,
        webhooks,
        watchdog,
        storage_failed,
        shutdown,
        ingest,
    } = s;
    // Every connection task, so that shutdown can wait for them to drain.
    // (hyper-util's `GracefulShutdown` does not take upgradeable
    // connections, which WebSocket needs.)
    let connections = tokio_util::task::TaskTracker::new();
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
        // Upgrades for WebSocket; an upgraded connection leaves this cap
        // and counts against the WebSocket sessions' own (`Service`).
        let conn = http
            .serve_connection(
                TokioIo::new(conn_io::ConnIo::new(stream)),
                TowerToHyperService::new(router.clone()),
            )
            .with_upgrades();
        let metrics = metrics.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            metrics.http_open.fetch_add(1, Relaxed);
            let mut conn = std::pin::pin!(conn);
            // On shutdown: finish the request in flight, take no other.
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics.http_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    drop(listener);

    // Streams end by themselves on `shutdown`; requests in flight get the
    // grace period.
    connections.close();
    let drained = async {
        connections.wait().await;
        service.ws_sessions_ended().await;
    };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    registry.stop_all().await;
    let _ = compactor.await;
    let _ = reaper.await;
    let _ = webhooks.await;
    let _ = watchdog.await;
    let flushed = store.flush().await;
    drop(ingest);
    if let Some(error) = storage_failed.get() {
        return Err(StorageFailed {
            error: error.clone(),
        }
        .into());
    }
    flushed.context("final flush")?;
    tracing::info!("stopped");
    Ok(())
}

/// Watches the store's writes. While they fail, probes them (a real write
/// and flush) every [`STORAGE_PROBE_EVERY`]; a probe that succeeds clears
/// the failure. If they still fail after [`STORAGE_GIVE_UP`], shuts the
/// server down with [`StorageFailed`]: sled 0.34 keeps its first IO error
/// until the database is reopened, so only a restart recovers.
fn spawn_storage_watchdog(
    store: Store,
    shutdown: CancellationToken,
    failed: Arc<std::sync::OnceLock<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some((error, since)) = store.health().failing else {
                continue;
            };
            // Bounded: a flush stuck on a dead disk must not stall the watch.
            if let Ok(Ok(())) = tokio::time::timeout(STORAGE_GIVE_UP, store.probe()).await {
                continue;
            }
            let failing_for = crate::model::now_ms().saturating_sub(since);
            if u128::from(failing_for) >= STORAGE_GIVE_UP.as_millis() {
                tracing::error!(
                    error = %error,
                    failing_ms = failing_for,
                    exit_status = EXIT_STORAGE_FAILED,
                    "storage: writes keep failing and cannot recover in this process; shutting down for a restart"
                );
                let _ = failed.set(error);
                shutdown.cancel();
                force_exit_after(STORAGE_EXIT_DEADLINE);
                return;
            }
        }
    })
}

/// Exits the process with [`EXIT_STORAGE_FAILED`] after `deadline` unless
/// it ended before. The orderly shutdown flushes the store, and when sled
/// itself is stuck (a flush that never returns, `log::FLUSH_STUCK`) that
/// flush, the appends in flight and the store's drop wait forever; nothing
/// they hold is durable or acknowledged, so exiting loses nothing.
fn force_exit_after(deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("patchfeed-exit".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(
                deadline_s = deadline.as_secs(),
                exit_status = EXIT_STORAGE_FAILED,
                "storage: the shutdown did not finish; exiting now"
            );
            eprintln!(
                "patchfeed: the shutdown after a storage failure did not finish within {}s; exiting",
                deadline.as_secs()
            );
            std::process::exit(i32::from(EXIT_STORAGE_FAILED));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the exit timer");
    }
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
    let resp = api::error::too_many_connections();
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
