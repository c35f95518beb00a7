//! The engine's configuration types: serde structs mirroring `config/default.toml`, with one
//! `validate()` step holding every cross-field rule. Loading (file + environment layering)
//! lives in the binary; this module is pure so every component can take `&Config`.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::secret::Secret;

/// The whole configuration. Every section rejects unknown keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub integration: IntegrationConfig,
    pub webex: WebexConfig,
    pub activation: ActivationConfig,
    pub redis: RedisConfig,
    pub streams: StreamsConfig,
    pub security: SecurityConfig,
    pub ingest: IngestConfig,
    pub devices: DevicesConfig,
    pub scaling: ScalingConfig,
    pub support: SupportConfig,
    pub log: LogConfig,
}

/// Which streams a message's entries go to, and how long entries are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// Write each organization's `<p>:{<org>}:status|events`.
    pub per_org: bool,
    /// Also write every entry to the fleet-wide `<p>:{all-<n>}:status|events`.
    pub firehose: bool,
    /// Firehose shards: an organization's entries all go to shard `fnv1a(org) % shards`.
    pub shards: u32,
    /// Entries older than this are trimmed (`XADD MINID ~`); 0 = by `redis.stream_maxlen` only.
    pub retention_secs: u64,
    /// How often the firehose's consumer groups are sampled for the lag metrics; 0 = never.
    pub lag_sample_secs: u64,
    /// Consumer groups of the organizations' streams reported as `org_consumer_lag` and
    /// `org_consumer_pending` (summed over the organizations each replica owns), at most
    /// [`MAX_LAG_GROUPS`].
    pub lag_groups: Vec<String>,
}

/// Names in `streams.lag_groups` at most (each is a label value).
pub const MAX_LAG_GROUPS: usize = 20;

/// The support log of errors answered with a trackingId.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportConfig {
    /// How long an error stays findable by its trackingId.
    pub errors_retention_secs: u64,
    /// At most this many errors recorded per hour by one replica; more are counted
    /// (`support_errors_total{result="dropped"}`) but not stored, so a flood of bad requests
    /// cannot fill Redis.
    pub errors_per_hour: u32,
}

/// The device API: inventory, xAPI status/commands, configurations, the command stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// Seconds between two inventory syncs of a tenant (jittered ±10 %); the first runs at
    /// activation.
    pub inventory_interval_secs: f64,
    /// Items asked for per page of `/devices` and `/workspaces`.
    pub page_size: u32,
    /// Device-API calls of one tenant in flight at once.
    pub max_concurrency: usize,
    /// Attempts of one call (retries after 429, 5xx and network errors; never after other 4xx).
    pub max_attempts: u32,
    /// Longest time one request may take, waits for rate limits and retries included.
    pub call_deadline_secs: f64,
    /// Pause between two reads of an idle command stream, in milliseconds, while Redis keyspace
    /// notifications are unavailable (else a new entry wakes the consumer at once).
    pub commands_poll_ms: u64,
    /// With keyspace notifications on, an idle command stream is still read this often (the
    /// safety net under fire-and-forget notifications), in seconds.
    pub commands_sweep_secs: f64,
    /// Whether the engine turns on Redis keyspace notifications for stream commands and waits
    /// for them (the command bell). They cost Redis work on every stream write (≈ 0.4 µs per
    /// XADD measured); off, idle command streams are read every `commands_poll_ms`.
    pub command_notifications: bool,
    /// Commands pending this long with another consumer (a dead replica) are claimed.
    pub commands_claim_idle_secs: u64,
    /// Approximate cap of the results and inventory streams (XADD MAXLEN ~).
    pub results_maxlen: u64,
}

/// Ingest tuning: how much may be in flight before callers are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Messages accepted but not yet durable in Redis, at most (beyond: 503).
    pub queue_capacity: usize,
    /// Concurrent Redis pipelines.
    pub writers: usize,
    /// First pause after a failed queue poll, in seconds (doubling, capped at 60, jittered).
    pub poll_retry_secs: f64,
    /// Queue polls in flight on one HTTP client, at most: over HTTP/2 they share its
    /// connection, and servers allow 100 to 128 streams per connection.
    pub polls_per_connection: usize,
    /// Which HTTP client long-polls the queues.
    pub poll_client: PollClient,
}

/// The HTTP client of queue long-polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollClient {
    /// HTTP/1.1, one connection per tenant kept between polls, holding nothing but the socket
    /// while a poll waits (`webex/http1.rs`).
    Http1,
    /// reqwest: HTTP/2 where the server offers it (ALPN, or `webex.plain_http2`), polls spread
    /// over clients of `polls_per_connection` each; else HTTP/1.1 with hyper's buffers.
    Negotiated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    /// A second, private listener for the admin API, `/metrics` and the probes; empty: they
    /// share `bind` with the routes Webex calls.
    pub admin_bind: String,
    /// Empty in the file: derived from `bind` at load time ([`Config::derive_public_url`]),
    /// for trying the engine locally; Webex itself needs an HTTPS address.
    pub public_url: String,
    /// PEM files of the certificate chain and private key: the public listener then speaks
    /// HTTPS (reloaded on SIGHUP). Empty: plain HTTP behind a terminating ingress.
    pub tls_cert: String,
    pub tls_key: String,
    /// Whether `public_url` was derived from `bind` rather than configured.
    #[serde(skip)]
    pub public_url_derived: bool,
    pub admin_token: Secret,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub workers: usize,
    /// Proxies whose `X-Forwarded-For` names the client (IP addresses or CIDR ranges).
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    /// `trusted_proxies` parsed (a plain address is a one-address range); validated at load.
    pub fn trusted_proxy_nets(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p))
            .collect()
    }
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// What the activation PATCH asks Webex for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestMode {
    Webhook,
    Queue,
    Both,
}

impl IngestMode {
    pub fn webhook(self) -> bool {
        matches!(self, Self::Webhook | Self::Both)
    }
    pub fn queue(self) -> bool {
        matches!(self, Self::Queue | Self::Both)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Queue => "queue",
            Self::Both => "both",
        }
    }
    /// The mode reading these transports; `None` for neither.
    pub fn of(webhook: bool, queue: bool) -> Option<Self> {
        match (webhook, queue) {
            (true, true) => Some(Self::Both),
            (true, false) => Some(Self::Webhook),
            (false, true) => Some(Self::Queue),
            (false, false) => None,
        }
    }
    /// Both modes' transports.
    pub fn union(self, other: Self) -> Self {
        Self::of(
            self.webhook() || other.webhook(),
            self.queue() || other.queue(),
        )
        .unwrap_or(self)
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Self::Webhook),
            "queue" => Some(Self::Queue),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    pub app_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub ingest: IngestMode,
    /// How new webhook registrations (activations, rotations) authenticate.
    pub webhook_auth: crate::protocol::webhook::Scheme,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebexConfig {
    pub jwks: BTreeMap<String, String>,
    pub default_region: String,
    pub gov_region: String,
    pub allow_http: bool,
    /// Speak HTTP/2 without negotiation (h2c) to plain-HTTP endpoints (`allow_http`), as the
    /// simulator can; over HTTPS HTTP/2 is negotiated whenever the server offers it.
    pub plain_http2: bool,
    pub http_timeout_secs: u64,
    pub jwks_refetch_cooldown_secs: u64,
    pub jwks_max_age_secs: u64,
}

impl WebexConfig {
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    pub auto_complete: bool,
    pub pending_ttl_secs: u64,
    pub purge_streams_on_deprovision: bool,
    /// Seconds between two reads of each tenant's appUrl (jittered ±10 %).
    pub reconcile_interval_secs: f64,
    /// How long an invitation's code can be used.
    pub invitation_ttl_secs: u64,
    /// Wrong invitation codes after which a setup session is locked.
    pub setup_max_attempts: u64,
    /// Wrong invitation codes from one client address per hour, at most.
    pub setup_attempts_per_address: u64,
    /// A transport switch reads both transports this long before it removes the old one
    /// (Webex caches notification settings for up to 10 minutes).
    pub transport_overlap_secs: u64,
}

impl ActivationConfig {
    pub fn transport_overlap(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.transport_overlap_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…`, or a comma-separated list of cluster nodes.
    pub url: Secret,
    /// Talk to a Redis Cluster (implied when `url` lists more than one node).
    pub cluster: bool,
    pub key_prefix: String,
    pub stream_maxlen: u64,
    pub command_timeout_ms: u64,
    /// A write is acknowledged (200) only once `WAIT` confirms it on this many replicas; 0 =
    /// acknowledged when the master has it.
    pub wait_replicas: u32,
    /// How long `WAIT` may take before the batch is refused (503; the retry is deduplicated).
    pub wait_timeout_ms: u64,
    /// Redis Sentinel: `host:port` of each sentinel. When set, the master named
    /// `sentinel_master` is found through them at start and again after every failover, instead
    /// of at `url`'s address; `url`'s scheme (`rediss://` = TLS, for the sentinels too), user,
    /// password and database still apply to the data nodes.
    pub sentinels: Vec<String>,
    /// The master's name in the sentinels' configuration (`sentinel monitor <name> …`).
    pub sentinel_master: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf); empty = none.
    pub sentinel_password: Secret,
    /// Seconds between two checks that every data node has exactly the consumer credentials on
    /// record (a node that joined or restarted gets them; a revoked one left on a node that was
    /// down is removed); 0 = never.
    pub acl_sync_secs: u64,
}

impl crate::protocol::jwt::JwksTable for WebexConfig {
    fn jwks_url(&self, region: &str) -> Option<&str> {
        self.jwks.get(region).map(String::as_str)
    }

    fn default_region(&self) -> &str {
        &self.default_region
    }

    fn gov_region(&self) -> &str {
        &self.gov_region
    }
}

/// The seed URLs of `redis.url` (a comma-separated list for a cluster).
pub fn seed_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

impl RedisConfig {
    /// Cluster mode: `redis.cluster = true` or several nodes in `redis.url`.
    pub fn is_cluster(&self) -> bool {
        self.cluster || seed_urls(self.url.expose()).len() > 1
    }

    /// Sentinel mode: the master is found through `redis.sentinels`.
    pub fn is_sentinel(&self) -> bool {
        !self.sentinels.is_empty()
    }
}

/// Sharing tenants between replicas: leases on token refresh and queue polling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingConfig {
    /// This replica's name in leases and logs; empty = `$HOSTNAME-<pid>` (the pod name on
    /// Kubernetes).
    pub replica_id: String,
    /// How long a tenant's lease (and a replica's heartbeat) lasts without renewal. A dead
    /// replica's tenants are taken over within about this long.
    pub lease_ttl_secs: f64,
    /// Seconds between two resyncs (a safety net under pub/sub): each reloads the tenants
    /// whose announced-change count moved.
    pub resync_secs: f64,
    /// Seconds between two full reloads of every tenant (the net under the net: a change whose
    /// announcement failed altogether).
    pub full_resync_secs: f64,
}

impl ScalingConfig {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.lease_ttl_secs)
    }

    /// Leases are renewed (and unowned tenants looked for) this often.
    pub fn renew_every(&self) -> Duration {
        Duration::from_secs_f64((self.lease_ttl_secs / 6.0).clamp(0.05, 3.0))
    }

    /// The replica id: configured, or `$HOSTNAME-<pid>`.
    pub fn replica_id(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
        format!("{host}-{}", std::process::id())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    pub encryption_key: Secret,
    /// After a webhook secret is replaced, the previous one is still accepted this long
    /// (Webex applies a new configuration about 5 minutes after the PATCH and caches
    /// notification settings for up to 10).
    pub webhook_secret_overlap_secs: u64,
    /// Each tenant's webhook secret is replaced this often (jittered per tenant, run by the
    /// lease holder); 0 = never (activations and the admin API still rotate).
    pub webhook_secret_rotation_days: f64,
    /// Wrong or missing admin tokens (bearer or console sign-in) accepted from one client
    /// address within `admin_failure_window_secs`; beyond it that address is answered 429.
    pub admin_failures_per_address: u32,
    pub admin_failure_window_secs: u64,
}

impl SecurityConfig {
    /// The previous secret's grace after a rotation.
    pub fn overlap(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.webhook_secret_overlap_secs)
    }

    /// The periodic rotation's period; `None` when off.
    pub fn rotation_period(&self) -> Option<std::time::Duration> {
        (self.webhook_secret_rotation_days > 0.0).then(|| {
            std::time::Duration::from_secs_f64(self.webhook_secret_rotation_days * 86_400.0)
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// A configuration value that breaks a rule: names the key so the operator can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Length of the AES-256 key behind `security.encryption_key`.
pub const ENCRYPTION_KEY_LEN: usize = 32;

impl Config {
    /// Every rule that serde's types cannot express, checked once before anything starts.
    /// Returns the first broken rule (one clear line is what an operator needs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .bind
            .parse::<SocketAddr>()
            .map_err(|e| err("server.bind", format!("not a socket address ({e})")))?;
        match (
            self.server.tls_cert.is_empty(),
            self.server.tls_key.is_empty(),
        ) {
            (true, true) | (false, false) => {}
            (false, true) => return Err(err("server.tls_key", "needed with server.tls_cert")),
            (true, false) => return Err(err("server.tls_cert", "needed with server.tls_key")),
        }
        if !self.server.admin_bind.is_empty() {
            let admin = self.server.admin_bind.parse::<SocketAddr>().map_err(|e| {
                err(
                    "server.admin_bind",
                    format!("not a socket address ({e}); empty to serve admin on server.bind"),
                )
            })?;
            if admin == self.bind_addr() && admin.port() != 0 {
                return Err(err("server.admin_bind", "must differ from server.bind"));
            }
        }
        if !self.server.public_url_derived {
            // Webex requires HTTPS with a valid certificate for actionsUrl and the webhook's
            // targetUrl; plain HTTP only beside simulators.
            check_url(
                "server.public_url",
                &self.server.public_url,
                self.webex.allow_http,
            )?;
        }
        if self.server.max_body_bytes < 1024 {
            return Err(err("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.shutdown_grace_secs == 0 {
            return Err(err("server.shutdown_grace_secs", "must be at least 1"));
        }
        if uuid::Uuid::parse_str(&self.integration.app_id).is_err() {
            return Err(err(
                "integration.app_id",
                "must be the manifest id (a UUID)",
            ));
        }
        if self.webex.jwks.is_empty() {
            return Err(err("webex.jwks", "must name at least one region"));
        }
        for (region, url) in &self.webex.jwks {
            check_url(&format!("webex.jwks.{region}"), url, self.webex.allow_http)?;
        }
        if !self.webex.jwks.contains_key(&self.webex.default_region) {
            return Err(err("webex.default_region", "is not a key of webex.jwks"));
        }
        if !self.webex.jwks.contains_key(&self.webex.gov_region) {
            return Err(err("webex.gov_region", "is not a key of webex.jwks"));
        }
        if self.activation.reconcile_interval_secs.is_nan()
            || self.activation.reconcile_interval_secs < 0.05
        {
            return Err(err(
                "activation.reconcile_interval_secs",
                "must be at least 0.05",
            ));
        }
        // Simulators (webex.allow_http) may scale the overlap down for tests.
        let min_overlap = if self.webex.allow_http { 1 } else { 600 };
        if self.security.webhook_secret_overlap_secs < min_overlap {
            return Err(err(
                "security.webhook_secret_overlap_secs",
                "must be at least 600 (Webex caches notification settings for up to 10 minutes)",
            ));
        }
        if self.activation.transport_overlap_secs < min_overlap {
            return Err(err(
                "activation.transport_overlap_secs",
                "must be at least 600 (Webex caches notification settings for up to 10 minutes)",
            ));
        }
        let days = self.security.webhook_secret_rotation_days;
        if !(0.0..=3650.0).contains(&days) {
            return Err(err(
                "security.webhook_secret_rotation_days",
                "must be between 0 (never) and 3650",
            ));
        }
        if days > 0.0 && days * 86_400.0 <= 2.0 * self.security.webhook_secret_overlap_secs as f64 {
            return Err(err(
                "security.webhook_secret_rotation_days",
                "must be longer than twice security.webhook_secret_overlap_secs (a rotation waits for the last one's overlap to end)",
            ));
        }
        if self.activation.invitation_ttl_secs < 60 {
            return Err(err("activation.invitation_ttl_secs", "must be at least 60"));
        }
        if self.activation.setup_max_attempts == 0 {
            return Err(err("activation.setup_max_attempts", "must be at least 1"));
        }
        if self.security.admin_failures_per_address == 0 {
            return Err(err(
                "security.admin_failures_per_address",
                "must be at least 1",
            ));
        }
        if self.security.admin_failure_window_secs == 0 {
            return Err(err(
                "security.admin_failure_window_secs",
                "must be at least 1",
            ));
        }
        if self.activation.setup_attempts_per_address < self.activation.setup_max_attempts {
            return Err(err(
                "activation.setup_attempts_per_address",
                "must be at least activation.setup_max_attempts",
            ));
        }
        if self.support.errors_retention_secs < 3600 {
            return Err(err(
                "support.errors_retention_secs",
                "must be at least 3600",
            ));
        }
        if self.ingest.polls_per_connection == 0 {
            return Err(err("ingest.polls_per_connection", "must be at least 1"));
        }
        if self.webex.plain_http2 && self.ingest.poll_client != PollClient::Negotiated {
            return Err(err(
                "webex.plain_http2",
                "needs ingest.poll_client = \"negotiated\" (the http1 client speaks HTTP/1.1)",
            ));
        }
        if self.webex.plain_http2 && !self.webex.allow_http {
            return Err(err(
                "webex.plain_http2",
                "applies to plain-HTTP endpoints only: set webex.allow_http too (simulators)",
            ));
        }
        let d = &self.devices;
        if d.inventory_interval_secs.is_nan() || d.inventory_interval_secs < 0.05 {
            return Err(err(
                "devices.inventory_interval_secs",
                "must be at least 0.05",
            ));
        }
        if !(1..=1000).contains(&d.page_size) {
            return Err(err("devices.page_size", "must be between 1 and 1000"));
        }
        if d.max_concurrency == 0 {
            return Err(err("devices.max_concurrency", "must be at least 1"));
        }
        if d.max_attempts == 0 {
            return Err(err("devices.max_attempts", "must be at least 1"));
        }
        if d.call_deadline_secs.is_nan() || d.call_deadline_secs < 0.1 {
            return Err(err("devices.call_deadline_secs", "must be at least 0.1"));
        }
        if (d.commands_claim_idle_secs as f64) < 2.0 * d.call_deadline_secs {
            return Err(err(
                "devices.commands_claim_idle_secs",
                "must be at least twice devices.call_deadline_secs (a live consumer's entry must not be claimed)",
            ));
        }
        if d.commands_poll_ms == 0 {
            return Err(err("devices.commands_poll_ms", "must be at least 1"));
        }
        if d.commands_sweep_secs.is_nan() || d.commands_sweep_secs < 0.1 {
            return Err(err("devices.commands_sweep_secs", "must be at least 0.1"));
        }
        if self.webex.http_timeout_secs == 0 {
            return Err(err("webex.http_timeout_secs", "must be at least 1"));
        }
        let seeds = seed_urls(self.redis.url.expose());
        if seeds.is_empty() {
            return Err(err("redis.url", "is empty"));
        }
        if seeds
            .iter()
            .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(err(
                "redis.url",
                "must start with redis:// or rediss:// (a comma-separated list for a cluster)",
            ));
        }
        self.validate_sentinel()?;
        let s = &self.scaling;
        if s.lease_ttl_secs.is_nan() || s.lease_ttl_secs < 1.0 {
            return Err(err("scaling.lease_ttl_secs", "must be at least 1"));
        }
        if s.lease_ttl_secs < 2.0 * self.webex.http_timeout_secs as f64 {
            return Err(err(
                "scaling.lease_ttl_secs",
                "must be at least twice webex.http_timeout_secs (a token exchange must end well within the lease)",
            ));
        }
        if s.resync_secs.is_nan() || s.resync_secs < 0.5 {
            return Err(err("scaling.resync_secs", "must be at least 0.5"));
        }
        if s.full_resync_secs.is_nan() || s.full_resync_secs < s.resync_secs {
            return Err(err(
                "scaling.full_resync_secs",
                "must be at least scaling.resync_secs",
            ));
        }
        if s.replica_id.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(err(
                "scaling.replica_id",
                "must not contain spaces or commas",
            ));
        }
        if self.redis.key_prefix.is_empty()
            || self
                .redis
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(err(
                "redis.key_prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.redis.command_timeout_ms == 0 {
            return Err(err("redis.command_timeout_ms", "must be at least 1"));
        }
        if self.redis.wait_replicas > 0
            && (self.redis.wait_timeout_ms == 0
                || self.redis.wait_timeout_ms >= self.redis.command_timeout_ms)
        {
            return Err(err(
                "redis.wait_timeout_ms",
                format!(
                    "must be at least 1 and below redis.command_timeout_ms ({}) when redis.wait_replicas is set",
                    self.redis.command_timeout_ms
                ),
            ));
        }
        if let Some(bad) = self
            .server
            .trusted_proxies
            .iter()
            .find(|p| parse_net(p).is_none())
        {
            return Err(err(
                "server.trusted_proxies",
                format!("{bad:?} is neither an IP address nor a CIDR range (10.0.0.0/8, fd00::/8)"),
            ));
        }
        let streams = &self.streams;
        if !streams.per_org && !streams.firehose {
            return Err(err(
                "streams.per_org",
                "false needs streams.firehose = true (else no entry is written anywhere)",
            ));
        }
        if !(1..=1024).contains(&streams.shards) {
            return Err(err("streams.shards", "must be between 1 and 1024"));
        }
        if !streams.per_org && self.redis.is_cluster() {
            // There the firehose is copied from the organizations' streams (a shard's slot
            // differs from the organization's: docs/streams.md, "The firehose").
            return Err(err(
                "streams.per_org",
                "false is not supported on Redis Cluster (the firehose is relayed from the organizations' streams there)",
            ));
        }
        if streams.lag_groups.len() > MAX_LAG_GROUPS {
            return Err(err(
                "streams.lag_groups",
                format!("at most {MAX_LAG_GROUPS} groups (each is a metric label)"),
            ));
        }
        if let Some(bad) = streams
            .lag_groups
            .iter()
            .find(|g| g.is_empty() || g.len() > 200 || g.chars().any(char::is_control))
        {
            return Err(err(
                "streams.lag_groups",
                format!(
                    "{bad:?} is not a consumer group name (1 to 200 characters, no control characters)"
                ),
            ));
        }
        if !streams.lag_groups.is_empty() && !streams.per_org {
            return Err(err(
                "streams.lag_groups",
                "names groups of the organizations' streams, which streams.per_org = false does not write",
            ));
        }
        if streams.retention_secs != 0 && streams.retention_secs < 10 {
            return Err(err(
                "streams.retention_secs",
                "must be 0 (keep by redis.stream_maxlen only) or at least 10",
            ));
        }
        self.encryption_key()?;
        Ok(())
    }

    /// The decoded `security.encryption_key`.
    pub fn encryption_key(&self) -> Result<[u8; ENCRYPTION_KEY_LEN], ConfigError> {
        const KEY: &str = "security.encryption_key";
        let raw = self.security.encryption_key.expose();
        if raw.is_empty() {
            return Err(err(
                KEY,
                "required: base64 of 32 random bytes (head -c32 /dev/urandom | base64)",
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|_| err(KEY, "is not valid base64"))?;
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| err(KEY, format!("must decode to 32 bytes, got {}", b.len())))
    }

    /// The listen address (validated).
    pub fn bind_addr(&self) -> SocketAddr {
        self.server
            .bind
            .parse()
            .expect("validated in Config::validate")
    }

    /// The private admin listener's address, when `server.admin_bind` is set (validated).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        (!self.server.admin_bind.is_empty()).then(|| {
            self.server
                .admin_bind
                .parse()
                .expect("validated in Config::validate")
        })
    }

    /// An empty `server.public_url` becomes `http://<bind>` (`127.0.0.1` for an unspecified
    /// address), marked as derived: nothing Webex could reach, but enough to try things locally.
    pub fn derive_public_url(&mut self) {
        if !self.server.public_url.is_empty() {
            return;
        }
        let host = match self.server.bind.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
            _ => self.server.bind.clone(),
        };
        let scheme = if self.server.tls_cert.is_empty() {
            "http"
        } else {
            "https"
        };
        self.server.public_url = format!("{scheme}://{host}");
        self.server.public_url_derived = true;
    }

    /// `server.public_url` without a trailing slash, ready for joining paths.
    pub fn public_base(&self) -> &str {
        self.server.public_url.trim_end_matches('/')
    }

    /// Sentinel settings go together, name reachable sentinels, and exclude a cluster.
    fn validate_sentinel(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        if !r.is_sentinel() {
            if !r.sentinel_master.is_empty() {
                return Err(err(
                    "redis.sentinels",
                    "is empty while redis.sentinel_master is set (list the sentinels as host:port)",
                ));
            }
            return Ok(());
        }
        if r.sentinel_master.trim().is_empty() {
            return Err(err(
                "redis.sentinel_master",
                "must name the master (as in `sentinel monitor <name> …`) when redis.sentinels is set",
            ));
        }
        if r.is_cluster() {
            return Err(err(
                "redis.sentinels",
                "cannot be combined with a Redis Cluster (a cluster fails over by itself)",
            ));
        }
        for s in &r.sentinels {
            let port_ok = s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return Err(err("redis.sentinels", format!("{s:?} is not host:port")));
            }
        }
        Ok(())
    }
}

fn check_url(key: &str, value: &str, allow_http: bool) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|e| err(key, format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(err(
            key,
            "must be https (set webex.allow_http for simulators)",
        )),
        other => Err(err(key, format!("unsupported scheme {other}"))),
    }
}
