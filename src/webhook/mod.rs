//! Webhooks out: every change of the resources a webhook follows, POSTed to
//! its URL, signed (Standard Webhooks v1, `sign`), in order, retried on a
//! schedule (`schedule`), never lost.
//!
//! A webhook is a durable cursor per resource into the change log, nothing
//! more: no payload is copied into a queue. One worker per (webhook,
//! resource) (`delivery`) reads the log after its cursor through the same
//! feed as a stream (`crate::feed`: log catch-up, then live from the hub,
//! a snapshot where the cursor is behind the horizon), sends one message
//! at a time, and moves the cursor, durably, only after a 2xx. The
//! [`Manager`] holds the webhooks, starts and stops their workers (one
//! reconciliation loop notices resources created and deleted), and answers
//! the API. Settings are validated in `spec`.
//!
//! Bounds: one request in flight per (webhook, resource);
//! `webhooks.max_in_flight` in all, a quarter of it per webhook; each worker
//! holds at most one feed batch (a catch-up page) and one message; recent
//! attempts are kept in memory, [`ATTEMPTS_KEPT`] per webhook.

mod delivery;
pub mod schedule;
pub mod sign;
pub mod spec;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::feed;
use crate::hub::Hub;
use crate::model::{
    now_ms, Cursor, EventId, Point, ResourceId, Resources, Start, WebhookRecord, WebhookSpec,
};
use crate::poll::fetch::{FetchConfig, Fetcher};
use crate::store::{ReadAfter, Store, StoreError};
pub use spec::{WebhookInput, WebhookSettings};

/// Recent attempts kept per webhook (in memory: they do not survive a
/// restart).
pub const ATTEMPTS_KEPT: usize = 256;
/// `pending` counts events up to this many; past it, it shows this.
pub const PENDING_CAP: u64 = 10_000;
/// How often the manager looks for resources created or deleted without
/// telling it (config, proxy), besides being woken.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// A `[[webhook]]` table, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// Its settings (with a generated secret when none was given).
    pub spec: WebhookSpec,
    /// Whether the table gave the secret; if not, an existing webhook keeps
    /// its own.
    pub secret_given: bool,
}

/// What a webhook operation found.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No webhook with that id.
    #[error("no webhook with id {0:?}")]
    NotFound(String),
    /// `POST /v1/webhooks` with an id that exists.
    #[error("a webhook with id {0:?} already exists")]
    Exists(String),
    /// A field is wrong: `field: message`.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A webhook's state, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Delivering, nothing failing.
    Active,
    /// A message of at least one resource failed and waits for its retry.
    Retrying,
    /// Nothing is sent until it is enabled; cursors are kept.
    Disabled,
}

impl State {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Retrying => "retrying",
            State::Disabled => "disabled",
        }
    }
}

/// One resource's cursor, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorView {
    /// The last event delivered with a 2xx (null before the first, or after
    /// a replay).
    pub acked: Option<EventId>,
    /// The resource's newest event.
    pub head: Option<EventId>,
    /// Events not yet delivered (a snapshot counts as one), up to
    /// [`PENDING_CAP`].
    pub pending: u64,
}

/// A webhook, as the API shows it.
#[derive(Clone, Debug)]
pub struct View {
    /// Its record (the secret inside is never shown by the API's views).
    pub record: WebhookRecord,
    /// Now.
    pub state: State,
    /// By resource.
    pub cursors: BTreeMap<ResourceId, CursorView>,
}

/// One delivery attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The resource.
    pub resource: ResourceId,
    /// The message's event id.
    pub event_id: EventId,
    /// 1 for the first attempt of a message.
    pub attempt: u32,
    /// When it began, Unix ms.
    pub time_ms: u64,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why it failed without a status (timeout, connection), or with one.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct Counters {
    attempts_ok: AtomicU64,
    attempts_status: AtomicU64,
    attempts_timeout: AtomicU64,
    attempts_error: AtomicU64,
    delivered: AtomicU64,
    abandoned: AtomicU64,
    disabled: AtomicU64,
}

/// A webhook's running part.
pub(crate) struct Hook {
    record: Mutex<WebhookRecord>,
    key: sign::Key,
    /// Its share of `max_in_flight`.
    slots: Semaphore,
    run: Mutex<Run>,
    /// Resources whose current message failed and waits for a retry.
    retrying: Mutex<std::collections::HashSet<ResourceId>>,
    attempts: Mutex<VecDeque<Attempt>>,
}

/// The workers of a webhook and the token that stops them.
struct Run {
    token: CancellationToken,
    workers: HashMap<ResourceId, JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hook {
    fn new(
        record: WebhookRecord,
        per_webhook: usize,
        parent: &CancellationToken,
    ) -> Result<Hook, WebhookError> {
        let key = sign::Key::from_secret(&record.spec.secret)
            .map_err(|m| WebhookError::Invalid(format!("secret: {m}")))?;
        Ok(Hook {
            record: Mutex::new(record),
            key,
            slots: Semaphore::new(per_webhook),
            run: Mutex::new(Run {
                token: parent.child_token(),
                workers: HashMap::new(),
            }),
            retrying: Mutex::new(Default::default()),
            attempts: Mutex::new(VecDeque::with_capacity(16)),
        })
    }

    fn id(&self) -> ResourceId {
        lock(&self.record).spec.id.clone()
    }

    fn record(&self) -> WebhookRecord {
        lock(&self.record).clone()
    }

    fn state(&self) -> State {
        if lock(&self.record).disabled.is_some() {
            State::Disabled
        } else if lock(&self.retrying).is_empty() {
            State::Active
        } else {
            State::Retrying
        }
    }

    fn push_attempt(&self, a: Attempt) {
        let mut q = lock(&self.attempts);
        if q.len() == ATTEMPTS_KEPT {
            q.pop_back();
        }
        q.push_front(a);
    }

    /// Cancels the workers and waits for them to end.
    async fn stop_workers(&self, parent: &CancellationToken) {
        let handles: Vec<JoinHandle<()>> = {
            let mut run = lock(&self.run);
            run.token.cancel();
            run.token = parent.child_token();
            run.workers.drain().map(|(_, h)| h).collect()
        };
        for h in handles {
            let _ = h.await;
        }
        lock(&self.retrying).clear();
    }
}

/// What the manager is built from.
pub struct Parts {
    /// The log (webhooks and cursors are stored in it too).
    pub store: Store,
    /// For the workers' live events.
    pub hub: Arc<Hub>,
    /// How feeds read the log; its metrics are not used (webhook feeds do
    /// not count as streams).
    pub feed: feed::Ctx,
    /// `[webhooks]`.
    pub settings: WebhookSettings,
    /// `allow_private_upstreams`: whether a webhook may point at loopback
    /// and private addresses.
    pub allow_private: bool,
    /// Ends every worker.
    pub shutdown: CancellationToken,
}

/// Every webhook and its workers. See the module docs.
pub struct Manager {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    pub(crate) feed: feed::Ctx,
    pub(crate) settings: WebhookSettings,
    pub(crate) client: reqwest::Client,
    guard: Fetcher,
    pub(crate) in_flight: Semaphore,
    hooks: Mutex<BTreeMap<ResourceId, Arc<Hook>>>,
    /// Serialises create, delete, replay, enable and reconciliation.
    admin: tokio::sync::Mutex<()>,
    wake: Notify,
    pub(crate) shutdown: CancellationToken,
    started: std::sync::atomic::AtomicBool,
    pub(crate) counters: Counters,
}

impl Manager {
    /// Loads the stored webhooks; nothing is sent before [`Manager::start`].
    pub fn new(parts: Parts) -> anyhow::Result<Arc<Manager>> {
        let settings = parts.settings;
        let client = reqwest::Client::builder()
            .user_agent(concat!("patchfeed-webhooks/", env!("CARGO_PKG_VERSION")))
            // A 3xx is a failure to retry, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(crate::poll::guard::GuardedResolver::shared(
                parts.allow_private,
            ))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let guard = Fetcher::new(FetchConfig {
            allow_private: parts.allow_private,
            ..FetchConfig::default()
        })?;
        let mut feed = parts.feed;
        feed.metrics = Arc::new(crate::metrics::Metrics::default());
        let mut hooks = BTreeMap::new();
        for record in parts.store.webhooks()? {
            let id = record.spec.id.clone();
            match Hook::new(record, settings.per_webhook(), &parts.shutdown) {
                Ok(h) => {
                    hooks.insert(id, Arc::new(h));
                }
                Err(e) => {
                    tracing::error!(webhook = %id, error = %e, "a stored webhook cannot be used; skipped")
                }
            }
        }
        Ok(Arc::new(Manager {
            in_flight: Semaphore::new(settings.max_in_flight),
            store: parts.store,
            hub: parts.hub,
            feed,
            settings,
            client,
            guard,
            hooks: Mutex::new(hooks),
            admin: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            shutdown: parts.shutdown,
            started: Default::default(),
            counters: Counters::default(),
        }))
    }

    fn hook(&self, id: &ResourceId) -> Result<Arc<Hook>, WebhookError> {
        lock(&self.hooks)
            .get(id)
            .cloned()
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))
    }

    /// The checks a spec needs from the running server: the upstream guard
    /// on its URL and, for a list, that each resource exists.
    fn check(&self, spec: &WebhookSpec) -> Result<(), WebhookError> {
        self.guard
            .check_url(&spec.url)
            .map_err(|e| WebhookError::Invalid(format!("url: {e}")))?;
        if let Resources::List(l) = &spec.resources {
            for r in l {
                if self.store.resource(r).is_none() {
                    return Err(WebhookError::Invalid(format!(
                        "resources: no resource with id {:?}",
                        r.as_str()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The resources a webhook delivers now: those it follows that exist
    /// and are not quarantined.
    fn targets(&self, spec: &WebhookSpec) -> Vec<ResourceId> {
        self.store
            .resources()
            .into_iter()
            .map(|r| r.spec.id)
            .filter(|id| spec.resources.includes(id) && self.store.quarantine(id).is_none())
            .collect()
    }

    /// Creates a webhook (`Exists` if the id is taken). Returns its view.
    pub async fn create(&self, spec: WebhookSpec) -> Result<View, WebhookError> {
        self.check(&spec)?;
        let id = spec.id.clone();
        {
            let _admin = self.admin.lock().await;
            if lock(&self.hooks).contains_key(&id) {
                return Err(WebhookError::Exists(id.to_string()));
            }
            self.insert(spec).await?;
        }
        self.wake.notify_one();
        self.view(&id).await
    }

    /// Writes a new webhook's cursors (for `from: "now"`) and record, and
    /// registers it. Caller holds `admin`.
    async fn insert(&self, spec: WebhookSpec) -> Result<(), WebhookError> {
        // Stale cursors of an earlier webhook of this id (a crash between
        // its delete's steps) must not be taken for this one's.
        self.store.delete_webhook(&spec.id).await?;
        if spec.from == Start::Now {
            let mut cursors = Vec::new();
            for r in self.targets(&spec) {
                if let Some(head) = self.store.head(&r)? {
                    cursors.push((r, Cursor::Acked(head.id)));
                }
            }
            self.set_cursors(&spec.id, cursors).await?;
        }
        let record = WebhookRecord {
            created_ms: now_ms(),
            spec,
            disabled: None,
        };
        let hook = Hook::new(record.clone(), self.settings.per_webhook(), &self.shutdown)?;
        self.store.put_webhook(&record).await?;
        lock(&self.hooks).insert(record.spec.id.clone(), Arc::new(hook));
        Ok(())
    }

    /// The `[[webhook]]` tables: each created, or updated in place keeping
    /// its cursors, creation time, state and (unless the table gives one)
    /// secret. Before [`Manager::start`].
    pub async fn apply_config(&self, tables: &[WebhookConfig]) -> Result<(), WebhookError> {
        let _admin = self.admin.lock().await;
        for t in tables {
            self.check(&t.spec)?;
            let existing = lock(&self.hooks).get(&t.spec.id).map(|h| h.record());
            match existing {
                None => self.insert(t.spec.clone()).await?,
                Some(old) => {
                    let mut spec = t.spec.clone();
                    if !t.secret_given {
                        spec.secret = old.spec.secret.clone();
                    }
                    let record = WebhookRecord {
                        spec,
                        ..old.clone()
                    };
                    if record != old {
                        self.store.put_webhook(&record).await?;
                    }
                    let hook = Hook::new(record, self.settings.per_webhook(), &self.shutdown)?;
                    lock(&self.hooks).insert(t.spec.id.clone(), Arc::new(hook));
                }
            }
        }
        Ok(())
    }

    /// Every webhook, ordered by id.
    pub async fn list(&self) -> Result<Vec<View>, WebhookError> {
        let ids: Vec<ResourceId> = lock(&self.hooks).keys().cloned().collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.view(&id).await {
                Ok(v) => out.push(v),
                // Deleted meanwhile.
                Err(WebhookError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One webhook.
    pub async fn view(&self, id: &ResourceId) -> Result<View, WebhookError> {
        let hook = self.hook(id)?;
        let record = hook.record();
        let stored = self.store.cursors(id)?;
        let mut resources: Vec<ResourceId> = match &record.spec.resources {
            Resources::List(l) => l.clone(),
            Resources::All => self
                .store
                .resources()
                .into_iter()
                .map(|r| r.spec.id)
                .collect(),
        };
        if let Resources::All = record.spec.resources {
            resources.sort();
        }
        let mut cursors = BTreeMap::new();
        for r in resources {
            let c = stored.get(&r).copied();
            let v = self.cursor_view(&r, c, record.spec.from).await?;
            cursors.insert(r, v);
        }
        Ok(View {
            state: hook.state(),
            record,
            cursors,
        })
    }

    /// `acked`, `head` and `pending` of one cursor.
    async fn cursor_view(
        &self,
        r: &ResourceId,
        c: Option<Cursor>,
        from: Start,
    ) -> Result<CursorView, StoreError> {
        let head = match self.store.head(r) {
            Ok(h) => h.map(|h| h.id),
            Err(StoreError::NoSuchResource(_) | StoreError::Quarantined { .. }) => None,
            Err(e) => return Err(e),
        };
        let acked = match c {
            Some(Cursor::Acked(e)) => Some(e),
            _ => None,
        };
        let view = |pending| CursorView {
            acked,
            head,
            pending,
        };
        let Some(head_id) = head else {
            return Ok(view(0));
        };
        let after = match (c, from) {
            (Some(Cursor::Acked(e)), _) if e == head_id => return Ok(view(0)),
            (Some(Cursor::Acked(e)), _) => Some(e.0),
            (Some(Cursor::Replay(p)), _) | (None, Start::Since(p)) => {
                Some(p.upper_bound().min(head_id.0))
            }
            // A snapshot is due first.
            (None, _) => None,
        };
        Ok(view(match after {
            None => 1,
            Some(a) => self.count_after(r, a).await?,
        }))
    }

    /// Events after `after` in `r`'s log, up to [`PENDING_CAP`]; 1 (the
    /// snapshot that is due) if `after` is before the horizon.
    async fn count_after(&self, r: &ResourceId, after: ulid::Ulid) -> Result<u64, StoreError> {
        let mut n = 0u64;
        let mut cursor = after;
        while n < PENDING_CAP {
            match self.store.read_after(r, cursor, 1000, usize::MAX).await {
                Ok(ReadAfter::Events(ev)) => {
                    let Some(last) = ev.last() else { break };
                    cursor = last.id.0;
                    n += ev.len() as u64;
                }
                Ok(ReadAfter::BeforeHorizon { .. }) => return Ok(1),
                Err(StoreError::NoSuchResource(_)) => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        Ok(n.min(PENDING_CAP))
    }

    /// Writes many cursors of one webhook, concurrently (in chunks), so
    /// that they share durable writes; returns once all are durable.
    async fn set_cursors(
        &self,
        webhook: &ResourceId,
        cursors: Vec<(ResourceId, Cursor)>,
    ) -> Result<(), StoreError> {
        for chunk in cursors.chunks(512) {
            futures_util::future::try_join_all(
                chunk
                    .iter()
                    .map(|(r, c)| self.store.set_cursor(webhook, r, Some(*c))),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes a webhook: its workers end (a request in flight is dropped),
    /// then its record and cursors go. False if there was none.
    pub async fn delete(&self, id: &ResourceId) -> Result<bool, WebhookError> {
        let _admin = self.admin.lock().await;
        let Some(hook) = lock(&self.hooks).remove(id) else {
            return Ok(false);
        };
        hook.stop_workers(&self.shutdown).await;
        hook.run_token().cancel();
        self.store.delete_webhook(id).await?;
        Ok(true)
    }

    /// Moves every cursor of the webhook back to `from` (the patches after
    /// it, a snapshot where it is before the horizon); delivery restarts
    /// from there unless the webhook is disabled.
    pub async fn replay(&self, id: &ResourceId, from: Point) -> Result<View, WebhookError> {
        {
            let _admin = self.admin.lock().await;
            let hook = self.hook(id)?;
            hook.stop_workers(&self.shutdown).await;
            let spec = hook.record().spec;
            let mut resources: Vec<ResourceId> = self.targets(&spec);
            resources.extend(self.store.cursors(id)?.into_keys());
            resources.sort();
            resources.dedup();
            let cursors = resources
                .into_iter()
                .map(|r| (r, Cursor::Replay(from)))
                .collect();
            self.set_cursors(id, cursors).await?;
        }
        self.wake.notify_one();
        self.view(id).await
    }

    /// Resumes a disabled webhook from its cursors (nothing if it is not
    /// disabled).
    pub async fn enable(&self, id: &ResourceId) -> Result<View, WebhookError> {
        {
            let _admin = self.admin.lock().await;
            let hook = self.hook(id)?;
            let mut record = hook.record();
            if record.disabled.is_some() {
                // Workers that were stopping when it was disabled are gone
                // before any new one starts.
                hook.stop_workers(&self.shutdown).await;
                record.disabled = None;
                self.store.put_webhook(&record).await?;
                *lock(&hook.record) = record;
                tracing::info!(webhook = %id, "webhook enabled");
            }
        }
        self.wake.notify_one();
        self.view(id).await
    }

    /// The webhook's recent attempts, newest first, at most `limit`.
    pub fn attempts(&self, id: &ResourceId, limit: usize) -> Result<Vec<Attempt>, WebhookError> {
        let hook = self.hook(id)?;
        let q = lock(&hook.attempts);
        Ok(q.iter().take(limit).cloned().collect())
    }

    /// Tells the manager that resources were created or deleted.
    pub fn resources_changed(&self) {
        self.wake.notify_one();
    }

    /// Starts delivering: one loop that keeps a worker running for each
    /// (webhook, resource) that should have one, until shutdown; the
    /// handle ends once every worker has.
    pub fn start(self: &Arc<Self>) -> JoinHandle<()> {
        self.started.store(true, Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.reconcile().await;
                tokio::select! {
                    _ = this.shutdown.cancelled() => break,
                    _ = this.wake.notified() => {}
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
            let hooks: Vec<Arc<Hook>> = lock(&this.hooks).values().cloned().collect();
            for h in hooks {
                h.stop_workers(&this.shutdown).await;
            }
        })
    }

    /// Starts the workers that are missing; forgets the cursors of
    /// resources that are gone.
    async fn reconcile(self: &Arc<Self>) {
        let _admin = self.admin.lock().await;
        if self.shutdown.is_cancelled() {
            return;
        }
        let hooks: Vec<Arc<Hook>> = lock(&self.hooks).values().cloned().collect();
        for hook in hooks {
            let record = hook.record();
            if record.disabled.is_some() {
                continue;
            }
            let targets = self.targets(&record.spec);
            let missing = {
                let run = lock(&hook.run);
                targets
                    .iter()
                    .any(|r| run.workers.get(r).is_none_or(|h| h.is_finished()))
            };
            // Read once for every worker started now: no cursor of theirs
            // moves meanwhile (their writers are these workers, and replay,
            // which waits for `admin`).
            let stored = if missing {
                match self.store.cursors(&record.spec.id) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(webhook = %record.spec.id, error = %e, "cannot read the webhook's cursors");
                        continue;
                    }
                }
            } else {
                BTreeMap::new()
            };
            let mut finished = Vec::new();
            {
                let mut run = lock(&hook.run);
                run.workers.retain(|r, h| {
                    let done = h.is_finished();
                    if done {
                        finished.push(r.clone());
                    }
                    !done
                });
                for r in &targets {
                    if !run.workers.contains_key(r) {
                        let w = delivery::Worker::new(
                            self.clone(),
                            hook.clone(),
                            r.clone(),
                            stored.get(r).copied(),
                            run.token.clone(),
                        );
                        run.workers.insert(r.clone(), tokio::spawn(w.run()));
                    }
                }
            }
            // A resource that is gone takes its cursor with it, so that one
            // created later under its name starts afresh.
            for r in finished {
                if self.store.resource(&r).is_none() {
                    lock(&hook.retrying).remove(&r);
                    if let Err(e) = self.store.set_cursor(&record.spec.id, &r, None).await {
                        tracing::warn!(webhook = %record.spec.id, resource = %r, error = %e, "could not remove the cursor of a deleted resource");
                    }
                }
            }
        }
    }

    /// Disables `hook` (a 410, or its retries exhausted): its workers end
    /// and its cursors stay. A worker whose run was stopped meanwhile (a
    /// delete, a replay) does not disable it.
    pub(crate) async fn disable(&self, hook: &Hook, token: &CancellationToken, reason: String) {
        if token.is_cancelled() {
            return;
        }
        let record = {
            let mut r = lock(&hook.record);
            if r.disabled.is_some() {
                return;
            }
            r.disabled = Some(reason.clone());
            r.clone()
        };
        token.cancel();
        Metrics::inc(&self.counters.disabled);
        tracing::warn!(webhook = %record.spec.id, reason = %reason, "webhook disabled");
        if let Err(e) = self.store.put_webhook(&record).await {
            tracing::error!(webhook = %record.spec.id, error = %e, "could not store that the webhook is disabled");
        }
    }

    /// The webhook lines of `/metrics`.
    pub async fn render_metrics(&self) -> String {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut out = String::with_capacity(1024);
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhook_attempts_total Webhook delivery attempts by outcome.\n# TYPE patchfeed_webhook_attempts_total counter"
        );
        for (o, v) in [
            ("2xx", g(&c.attempts_ok)),
            ("status", g(&c.attempts_status)),
            ("timeout", g(&c.attempts_timeout)),
            ("error", g(&c.attempts_error)),
        ] {
            let _ = writeln!(
                out,
                "patchfeed_webhook_attempts_total{{outcome=\"{o}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhook_deliveries_total Webhook messages by outcome: delivered (a 2xx) or abandoned (the webhook was disabled while it was due).\n# TYPE patchfeed_webhook_deliveries_total counter"
        );
        for (o, v) in [
            ("delivered", g(&c.delivered)),
            ("abandoned", g(&c.abandoned)),
        ] {
            let _ = writeln!(
                out,
                "patchfeed_webhook_deliveries_total{{outcome=\"{o}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhooks_disabled_total Times a webhook was disabled (410, or retries exhausted).\n# TYPE patchfeed_webhooks_disabled_total counter\npatchfeed_webhooks_disabled_total {}",
            g(&c.disabled)
        );
        let mut lag = [0u64; 3];
        let mut count = [0u64; 3];
        let views = self.list().await.unwrap_or_default();
        for v in &views {
            let i = v.state as usize;
            count[i] += 1;
            lag[i] += v.cursors.values().map(|c| c.pending).sum::<u64>();
        }
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhooks Webhooks by state.\n# TYPE patchfeed_webhooks gauge"
        );
        for s in [State::Active, State::Retrying, State::Disabled] {
            let _ = writeln!(
                out,
                "patchfeed_webhooks{{state=\"{}\"}} {}",
                s.as_str(),
                count[s as usize]
            );
        }
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhooks_disabled Webhooks disabled now.\n# TYPE patchfeed_webhooks_disabled gauge\npatchfeed_webhooks_disabled {}",
            count[State::Disabled as usize]
        );
        let _ = writeln!(
            out,
            "# HELP patchfeed_webhook_lag_events Events not yet delivered, summed over the cursors of webhooks in each state (each cursor counted up to {PENDING_CAP}).\n# TYPE patchfeed_webhook_lag_events gauge"
        );
        for s in [State::Active, State::Retrying, State::Disabled] {
            let _ = writeln!(
                out,
                "patchfeed_webhook_lag_events{{state=\"{}\"}} {}",
                s.as_str(),
                lag[s as usize]
            );
        }
        out
    }
}

use crate::metrics::Metrics;

impl Hook {
    fn run_token(&self) -> CancellationToken {
        lock(&self.run).token.clone()
    }
}
