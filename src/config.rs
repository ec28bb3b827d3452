//! The TOML configuration file: parsing, defaults and validation.
//!
//! The contract's keys (`listen`, `data_dir`, `allow_private_upstreams`,
//! `token`, `[[resource]]`) plus our additions: `read_token`, `[limits]`
//! and `[proxy]` (documented in docs/API.md). Unknown keys are errors, so a
//! typo never silently falls back to a default. Every error names the key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{check_interval, PagesInput, ResourceInput, ResourceSpec};
/// The duration parsers live with the settings they serve; kept here too
/// for callers of this module (the fuzz checks).
pub use crate::model::{parse_duration, parse_retain};

/// `[limits]`: the bounds on connections, bodies, timeouts and buffers.
///
/// [`Config::parse`] rejects a zero count or duration, and a `keep_alive`
/// over 15 s; the defaults are those of [`Limits::default`].
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Open client connections at once; beyond it, a JSON 503
    /// `too_many_connections`. Default 10000.
    pub max_connections: usize,
    /// Largest request body in bytes; a larger one is 413
    /// `payload_too_large`. Default 1 MiB.
    pub max_request_body_bytes: usize,
    /// Largest upstream body in bytes; a larger one fails the poll with
    /// `too_large`. Default 16 MiB.
    pub upstream_max_body_bytes: usize,
    /// Deadline for one whole upstream exchange, redirects and body
    /// included; over it, the poll fails with `timeout`. Default 10 s.
    pub upstream_timeout: Duration,
    /// Deadline for non-streaming requests; over it, 408
    /// `request_timeout`. Default 30 s.
    pub request_timeout: Duration,
    /// Idle time on a stream before a `: keep-alive` comment. Default and
    /// maximum 15 s.
    pub keep_alive: Duration,
    /// Events buffered per resource for live subscribers; one further
    /// behind is served from the log. Default 1024.
    pub live_buffer: usize,
    /// Time between two compaction runs over every resource. Default 1 min.
    pub compact_every: Duration,
    /// How long shutdown waits for connections to drain. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_request_body_bytes: 1 << 20,
            upstream_max_body_bytes: 16 << 20,
            upstream_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
            live_buffer: 1024,
            compact_every: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `[proxy]`: ad-hoc resources for unknown URLs on the streamdata route.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Create an ad-hoc resource for an unknown upstream URL instead of
    /// answering 404. Default `false`.
    pub enabled: bool,
    /// Poll interval of ad-hoc resources; at least
    /// [`ResourceSpec::MIN_INTERVAL`]. Default
    /// [`ResourceSpec::DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// An ad-hoc resource without subscribers for this long is removed,
    /// log and all. Default 5 min.
    pub idle: Duration,
    /// If set, the only hosts ad-hoc resources may poll: exact names, or
    /// `*.suffix` for any subdomain (case-insensitive). Default `None`:
    /// any host the upstream guard allows.
    pub allowed_hosts: Option<Vec<String>>,
    /// Ad-hoc resources at once; beyond it, new URLs get 503
    /// `proxy_full`. Default 1000.
    pub max_resources: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            interval: ResourceSpec::DEFAULT_INTERVAL,
            idle: Duration::from_secs(300),
            allowed_hosts: None,
            max_resources: 1000,
        }
    }
}

/// `[cluster]`: the change log on a NATS JetStream cluster instead of the
/// embedded sled store (`crate::cluster`). Absent: sled, and nothing of
/// NATS is touched.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// The NATS servers to connect to (`nats://host:port`), at least one,
    /// at most [`ClusterConfig::MAX_SERVERS`]; the client fails over among
    /// them.
    pub nats: Vec<String>,
    /// JetStream replicas of every stream and bucket, 1 to 5. Default 3.
    /// An append is acknowledged once a quorum of them stored it.
    pub replicas: usize,
    /// This node's name. Default: the host name and the pid. Not used yet
    /// (the next stage's leases name their holder with it).
    pub node: String,
    /// How long a poller's lease lasts without renewal, 1 s to 5 min.
    /// Default 10 s. Not used yet (the next stage's leases).
    pub lease: Duration,
    /// Prefix of every stream, bucket and subject name, so that several
    /// deployments (or tests) share one NATS cluster; ASCII letters, digits,
    /// `_` and `-`, at most 32. Default `patchfeed`.
    pub prefix: String,
}

impl ClusterConfig {
    /// Most entries of `nats`.
    pub const MAX_SERVERS: usize = 64;
    /// Default `replicas`.
    pub const DEFAULT_REPLICAS: usize = 3;
    /// Default `lease`.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
    /// Default `prefix`.
    pub const DEFAULT_PREFIX: &'static str = "patchfeed";

    /// The default node name: host name and pid.
    pub fn default_node() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "node".into());
        format!("{host}-{}", std::process::id())
    }

    /// Whether `p` is a usable prefix (see [`ClusterConfig::prefix`]).
    pub fn valid_prefix(p: &str) -> bool {
        !p.is_empty()
            && p.len() <= 32
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

/// The whole configuration file, validated; [`Config::default`] is an
/// empty file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Address to bind. Default `127.0.0.1:8080`; `--listen` overrides it.
    pub listen: SocketAddr,
    /// Directory of the change log, created if missing. Default
    /// `./patchfeed-data`; never empty; `--data-dir` overrides it.
    pub data_dir: PathBuf,
    /// Let upstreams be on loopback, private and other non-public
    /// addresses, which the upstream guard otherwise refuses. Default
    /// `false`.
    pub allow_private_upstreams: bool,
    /// When set, the credential every `/v1` request needs; non-empty
    /// printable ASCII without spaces. Default `None`: everything is open.
    pub token: Option<String>,
    /// May subscribe and read, not create or delete; same form as
    /// `token`, and only allowed with it. Default `None`.
    pub read_token: Option<String>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[proxy]`.
    pub proxy: ProxyConfig,
    /// `[cluster]`: `Some` puts the change log on NATS JetStream.
    pub cluster: Option<ClusterConfig>,
    /// The `[[resource]]` tables in file order, each through
    /// [`ResourceSpec::validate`]; ids are unique.
    pub resources: Vec<ResourceSpec>,
    /// `[webhooks]`: how webhooks are delivered.
    pub webhooks: crate::webhook::WebhookSettings,
    /// The `[[webhook]]` tables in file order, each through the webhook
    /// validator (`webhook::spec`); ids are unique.
    pub webhook_tables: Vec<crate::webhook::WebhookConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./patchfeed-data"),
            allow_private_upstreams: false,
            token: None,
            read_token: None,
            limits: Limits::default(),
            proxy: ProxyConfig::default(),
            cluster: None,
            resources: Vec::new(),
            webhooks: crate::webhook::WebhookSettings::default(),
            webhook_tables: Vec::new(),
        }
    }
}

/// Why a configuration was refused; its `Display` names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, as given.
        path: PathBuf,
        /// The read's error.
        source: std::io::Error,
    },
    /// The text is not TOML, has an unknown key or a value of the wrong
    /// type; the message is the parser's (prefixed with the file by
    /// [`Config::load`]).
    #[error("{0}")]
    Toml(String),
    /// A value is out of range or inconsistent with another.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, as in the file: `limits.keep_alive`,
        /// `resource[0].url` (prefixed with the file by [`Config::load`]).
        key: String,
        /// What is wrong with its value; never a credential.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    allow_private_upstreams: Option<bool>,
    token: Option<String>,
    read_token: Option<String>,
    limits: Option<RawLimits>,
    proxy: Option<RawProxy>,
    cluster: Option<RawCluster>,
    #[serde(default, rename = "resource")]
    resources: Vec<RawResource>,
    webhooks: Option<crate::webhook::spec::RawSettings>,
    #[serde(default, rename = "webhook")]
    webhook_tables: Vec<crate::webhook::WebhookInput>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_request_body_bytes: Option<usize>,
    upstream_max_body_bytes: Option<usize>,
    upstream_timeout: Option<String>,
    request_timeout: Option<String>,
    keep_alive: Option<String>,
    live_buffer: Option<usize>,
    compact_every: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    enabled: Option<bool>,
    interval: Option<String>,
    idle: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    max_resources: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nats: Vec<String>,
    replicas: Option<usize>,
    node: Option<String>,
    lease: Option<String>,
    prefix: Option<String>,
}

/// Validates `[cluster]`; every error names its key.
fn cluster(r: RawCluster) -> Result<ClusterConfig, ConfigError> {
    if r.nats.is_empty() {
        return Err(invalid("cluster.nats", "needs at least one server URL"));
    }
    if r.nats.len() > ClusterConfig::MAX_SERVERS {
        return Err(invalid(
            "cluster.nats",
            format!("at most {} servers", ClusterConfig::MAX_SERVERS),
        ));
    }
    for (i, u) in r.nats.iter().enumerate() {
        let ok = url::Url::parse(u).ok().is_some_and(|p| {
            matches!(p.scheme(), "nats" | "tls") && p.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            return Err(invalid(
                format!("cluster.nats[{i}]"),
                format!("{u:?} is not a URL like nats://127.0.0.1:4222"),
            ));
        }
    }
    let replicas = r.replicas.unwrap_or(ClusterConfig::DEFAULT_REPLICAS);
    if !(1..=5).contains(&replicas) {
        return Err(invalid(
            "cluster.replicas",
            "must be 1 to 5 (JetStream's range)",
        ));
    }
    let node = match r.node {
        None => ClusterConfig::default_node(),
        Some(n) if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(invalid(
                "cluster.node",
                "must be 1 to 64 printable ASCII characters without spaces",
            ))
        }
        Some(n) => n,
    };
    let lease = match r.lease {
        None => ClusterConfig::DEFAULT_LEASE,
        Some(s) => {
            let d = parse_duration(&s).map_err(|m| invalid("cluster.lease", m))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(300) {
                return Err(invalid("cluster.lease", "must be 1s to 5m"));
            }
            d
        }
    };
    let prefix = r
        .prefix
        .unwrap_or_else(|| ClusterConfig::DEFAULT_PREFIX.to_owned());
    if !ClusterConfig::valid_prefix(&prefix) {
        return Err(invalid(
            "cluster.prefix",
            "1 to 32 ASCII letters, digits, `_` or `-`",
        ));
    }
    Ok(ClusterConfig {
        nats: r.nats,
        replicas,
        node,
        lease,
        prefix,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    id: String,
    /// Absent exactly when `push = true`.
    url: Option<String>,
    /// Fed by its owner (`PUT`/`PATCH` of its document), never polled.
    #[serde(default)]
    push: bool,
    interval: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    snapshot_every: Option<u32>,
    retain: Option<String>,
    /// A paginated upstream: `pages = { next, items, param, max }`.
    pages: Option<PagesInput>,
}

impl Config {
    /// Reads, parses and validates the file at `path`; errors name it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Toml(m) => ConfigError::Toml(format!("{}: {m}", path.display())),
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key: format!("{}: {key}", path.display()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let mut c = Config::default();
        if let Some(l) = raw.listen {
            c.listen = l.parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{l:?} is not an address like 127.0.0.1:8080"),
                )
            })?;
        }
        if let Some(d) = raw.data_dir {
            if d.as_os_str().is_empty() {
                return Err(invalid("data_dir", "must not be empty"));
            }
            c.data_dir = d;
        }
        c.allow_private_upstreams = raw.allow_private_upstreams.unwrap_or(false);
        c.token = check_token("token", raw.token)?;
        c.read_token = check_token("read_token", raw.read_token)?;
        if c.read_token.is_some() && c.token.is_none() {
            return Err(invalid(
                "read_token",
                "needs `token` too (without it, everything is open)",
            ));
        }

        let l = raw.limits.unwrap_or_default();
        let d = Limits::default();
        let dur =
            |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => {
                        let d =
                            parse_duration(&s).map_err(|m| invalid(format!("limits.{key}"), m))?;
                        if d.is_zero() {
                            return Err(invalid(format!("limits.{key}"), "must be more than 0"));
                        }
                        Ok(d)
                    }
                }
            };
        let count = |key: &str, v: Option<usize>, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(invalid(format!("limits.{key}"), "must be more than 0")),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        c.limits = Limits {
            max_connections: count("max_connections", l.max_connections, d.max_connections)?,
            max_request_body_bytes: count(
                "max_request_body_bytes",
                l.max_request_body_bytes,
                d.max_request_body_bytes,
            )?,
            upstream_max_body_bytes: count(
                "upstream_max_body_bytes",
                l.upstream_max_body_bytes,
                d.upstream_max_body_bytes,
            )?,
            upstream_timeout: dur("upstream_timeout", l.upstream_timeout, d.upstream_timeout)?,
            request_timeout: dur("request_timeout", l.request_timeout, d.request_timeout)?,
            keep_alive: dur("keep_alive", l.keep_alive, d.keep_alive)?,
            live_buffer: count("live_buffer", l.live_buffer, d.live_buffer)?,
            compact_every: dur("compact_every", l.compact_every, d.compact_every)?,
            shutdown_grace: dur("shutdown_grace", l.shutdown_grace, d.shutdown_grace)?,
        };
        if c.limits.keep_alive > Duration::from_secs(15) {
            return Err(invalid(
                "limits.keep_alive",
                "at most 15s (the contract's keep-alive bound)",
            ));
        }

        let p = raw.proxy.unwrap_or_default();
        let pd = ProxyConfig::default();
        c.proxy = ProxyConfig {
            enabled: p.enabled.unwrap_or(false),
            interval: match p.interval {
                None => pd.interval,
                Some(s) => parse_duration(&s)
                    .and_then(check_interval)
                    .map_err(|m| invalid("proxy.interval", m))?,
            },
            idle: match p.idle {
                None => pd.idle,
                Some(s) => parse_duration(&s).map_err(|m| invalid("proxy.idle", m))?,
            },
            allowed_hosts: p.allowed_hosts,
            max_resources: match p.max_resources {
                Some(0) => return Err(invalid("proxy.max_resources", "must be more than 0")),
                Some(n) => n,
                None => pd.max_resources,
            },
        };

        c.cluster = raw.cluster.map(cluster).transpose()?;

        let mut seen = HashSet::new();
        for (i, r) in raw.resources.into_iter().enumerate() {
            let spec = resource(i, r)?;
            if !seen.insert(spec.id.clone()) {
                return Err(invalid(
                    format!("resource[{i}].id"),
                    format!("{} is defined twice", spec.id),
                ));
            }
            c.resources.push(spec);
        }
        c.webhooks = crate::webhook::spec::settings(raw.webhooks.unwrap_or_default())
            .map_err(|e| invalid(format!("webhooks.{}", e.field), e.message))?;
        let mut seen = HashSet::new();
        for (i, w) in raw.webhook_tables.into_iter().enumerate() {
            let key = |k: &str| format!("webhook[{i}].{k}");
            if w.id.is_none() {
                return Err(invalid(
                    key("id"),
                    "missing: a configured webhook needs an id",
                ));
            }
            let (spec, secret_given) =
                crate::webhook::spec::validate(w).map_err(|e| invalid(key(e.field), e.message))?;
            if !seen.insert(spec.id.clone()) {
                return Err(invalid(key("id"), format!("{} is defined twice", spec.id)));
            }
            c.webhook_tables
                .push(crate::webhook::WebhookConfig { spec, secret_given });
        }
        Ok(c)
    }
}

fn check_token(key: &str, t: Option<String>) -> Result<Option<String>, ConfigError> {
    match t {
        Some(t) if t.is_empty() => Err(invalid(key, "must not be empty")),
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(invalid(key, "must be printable ASCII without spaces"))
        }
        t => Ok(t),
    }
}

/// A `[[resource]]` table through the one settings validator; its error
/// names the key, `resource[i].<setting>`.
fn resource(i: usize, r: RawResource) -> Result<ResourceSpec, ConfigError> {
    let key = |k: &str| format!("resource[{i}].{k}");
    let interval = r
        .interval
        .map(|s| parse_duration(&s))
        .transpose()
        .map_err(|m| invalid(key("interval"), m))?;
    let retain = r
        .retain
        .map(|s| parse_retain(&s))
        .transpose()
        .map_err(|m| invalid(key("retain"), m))?;
    ResourceSpec::validate(ResourceInput {
        id: Some(r.id),
        url: r.url,
        interval,
        headers: r.headers,
        snapshot_every: r.snapshot_every,
        retain,
        ad_hoc: false,
        push: r.push,
        pages: r.pages,
    })
    .map_err(|e| invalid(key(e.field), e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_parses() {
        let c = Config::parse(
            r#"
            listen = "127.0.0.1:8080"
            data_dir = "./patchfeed-data"
            allow_private_upstreams = false

            [[resource]]
            id = "btc-eur"
            url = "https://api.example.com/ticker/EUR"
            interval = "5s"
            headers = { Authorization = "Bearer x" }
            snapshot_every = 100
            retain = "7d"
            "#,
        )
        .unwrap();
        assert_eq!(c.resources.len(), 1);
        let r = &c.resources[0];
        assert_eq!(r.id.as_str(), "btc-eur");
        assert_eq!(r.interval, Duration::from_secs(5));
        assert_eq!(r.retain, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(r.headers["Authorization"], "Bearer x");
        assert_eq!(c.limits, Limits::default());
        assert!(!c.proxy.enabled);
    }

    #[test]
    fn issue_13_webhook_tables_and_settings_parse_and_name_their_key() {
        let c = Config::parse(
            r#"
            [webhooks]
            timeout = "2s"
            retry = ["100ms", "200ms"]
            max_in_flight = 8
            [[webhook]]
            id = "h"
            url = "http://127.0.0.1:9/hook"
            resources = ["*"]
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            coalesce = true
            "#,
        )
        .unwrap();
        assert_eq!(c.webhooks.timeout, Duration::from_secs(2));
        assert_eq!(c.webhooks.retry.steps().len(), 2);
        assert_eq!(c.webhooks.max_in_flight, 8);
        let t = &c.webhook_tables[0];
        assert!(t.secret_given && t.spec.coalesce);
        for (text, key) in [
            ("[webhooks]\ntimeout = \"x\"", "webhooks.timeout"),
            ("[webhooks]\nmax_in_flight = 0", "webhooks.max_in_flight"),
            ("[[webhook]]\nurl = \"http://x/\"\nresources = [\"*\"]", "webhook[0].id"),
            ("[[webhook]]\nid = \"h\"\nresources = [\"*\"]", "webhook[0].url"),
            ("[[webhook]]\nid = \"h\"\nurl = \"http://x/\"\nresources = [\"*\"]\n[[webhook]]\nid = \"h\"\nurl = \"http://x/\"\nresources = [\"*\"]", "webhook[1].id"),
            ("[[webhook]]\nid = \"h\"\nurl = \"http://x/\"\nresources = [\"*\"]\nsecret = \"hunter2\"", "webhook[0].secret"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e:?}, expected it to name {key}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn extensions_parse() {
        let c = Config::parse(
            r#"
            token = "t0k"
            read_token = "r3ad"
            [limits]
            max_connections = 50
            upstream_timeout = "2s"
            [proxy]
            enabled = true
            interval = "1s"
            idle = "1m"
            allowed_hosts = ["*.example.com"]
            [[resource]]
            id = "a"
            url = "http://127.0.0.1:9/x"
            retain = "forever"
            "#,
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 50);
        assert_eq!(c.limits.upstream_timeout, Duration::from_secs(2));
        assert!(c.proxy.enabled);
        assert_eq!(c.proxy.idle, Duration::from_secs(60));
        assert_eq!(c.resources[0].retain, None);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("lisen = \"x\"", "unknown field"),
            ("listen = \"nope\"", "listen"),
            ("[[resource]]\nid = \"a b\"\nurl = \"http://x/\"", "resource[0].id"),
            ("[[resource]]\nid = \"a\"\nurl = \"ftp://x/\"", "resource[0].url"),
            ("[[resource]]\nid = \"a\"\nurl = \"http://x/\"\ninterval = \"50ms\"", "resource[0].interval"),
            ("[[resource]]\nid = \"a\"\nurl = \"http://x/\"\ninterval = \"soon\"", "resource[0].interval"),
            ("[[resource]]\nid = \"a\"\nurl = \"http://x/\"\nsnapshot_every = 0", "resource[0].snapshot_every"),
            ("[[resource]]\nid = \"a\"\nurl = \"http://x/\"\nretain = \"-1\"", "resource[0].retain"),
            ("[[resource]]\nid = \"a\"\nurl = \"http://x/\"\n[[resource]]\nid = \"a\"\nurl = \"http://y/\"", "resource[1].id"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits]\nkeep_alive = \"1m\"", "limits.keep_alive"),
            ("read_token = \"x\"", "read_token"),
            ("token = \"\"", "token"),
            ("[proxy]\ninterval = \"1ms\"", "proxy.interval"),
            ("[proxy]\ninterval = \"99ms\"", "proxy.interval"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e:?}, expected it to name {key}");
        }
    }

    #[test]
    fn issue_11_resource_and_proxy_intervals_share_the_bound() {
        let proxy = |i: &str| Config::parse(&format!("[proxy]\ninterval = {i:?}"));
        assert_eq!(
            proxy("100ms").unwrap().proxy.interval,
            ResourceSpec::MIN_INTERVAL
        );
        assert_eq!(
            proxy("99ms").unwrap_err().to_string(),
            "proxy.interval: 99ms is below the minimum of 100ms"
        );
        let resource = |i: &str| {
            Config::parse(&format!(
                "[[resource]]\nid = \"a\"\nurl = \"http://x/\"\ninterval = {i:?}"
            ))
        };
        assert_eq!(
            resource("100ms").unwrap().resources[0].interval,
            ResourceSpec::MIN_INTERVAL
        );
        assert_eq!(
            resource("99ms").unwrap_err().to_string(),
            "resource[0].interval: 99ms is below the minimum of 100ms"
        );
        assert_eq!(
            ProxyConfig::default().interval,
            ResourceSpec::DEFAULT_INTERVAL
        );
    }

    #[test]
    fn issue_11_url_errors_name_the_key_and_hide_credentials() {
        for url in ["ftp://u:hunter2@x/", "http://u:hunter2@x y/?token=hunter2"] {
            let e = Config::parse(&format!("[[resource]]\nid = \"a\"\nurl = {url:?}"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("resource[0].url: "), "{e}");
            assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
        }
    }

    #[test]
    fn issue_14_cluster_table_parses_with_defaults() {
        let c = Config::parse(
            r#"
            [cluster]
            nats = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
            "#,
        )
        .unwrap();
        let k = c.cluster.unwrap();
        assert_eq!(k.nats.len(), 3);
        assert_eq!(k.replicas, 3);
        assert_eq!(k.lease, Duration::from_secs(10));
        assert_eq!(k.prefix, "patchfeed");
        assert!(k.node.ends_with(&format!("-{}", std::process::id())));
        assert!(Config::parse("").unwrap().cluster.is_none());

        let c = Config::parse(
            "[cluster]\nnats = [\"nats://n1:4222\"]\nreplicas = 1\nnode = \"a\"\nlease = \"30s\"\nprefix = \"pf_test-1\"\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (c.replicas, c.node.as_str(), c.lease, c.prefix.as_str()),
            (1, "a", Duration::from_secs(30), "pf_test-1")
        );
    }

    #[test]
    fn issue_14_cluster_errors_name_the_key() {
        for (text, key) in [
            ("[cluster]\nnats = []", "cluster.nats"),
            ("[cluster]\nnats = [\"http://x:1\"]", "cluster.nats[0]"),
            (
                "[cluster]\nnats = [\"nats://a:1\", \"nope\"]",
                "cluster.nats[1]",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nreplicas = 0",
                "cluster.replicas",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nreplicas = 6",
                "cluster.replicas",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nnode = \"\"",
                "cluster.node",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nnode = \"a b\"",
                "cluster.node",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nlease = \"100ms\"",
                "cluster.lease",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nlease = \"1h\"",
                "cluster.lease",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nlease = \"soon\"",
                "cluster.lease",
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nprefix = \"a.b\"",
                "cluster.prefix",
            ),
        ] {
            match Config::parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // Unknown keys and a missing `nats` are TOML errors.
        assert!(matches!(
            Config::parse("[cluster]\nnats = [\"nats://a:1\"]\nreplica = 3"),
            Err(ConfigError::Toml(_))
        ));
        assert!(matches!(
            Config::parse("[cluster]\nreplicas = 3"),
            Err(ConfigError::Toml(_))
        ));
    }
}
