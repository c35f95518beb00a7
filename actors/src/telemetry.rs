//! Every metric family of the engine, registered once in one registry per engine, plus named
//! recording functions. Business logic records through these functions and never registers
//! or names a metric itself. Label values come from small fixed sets (never a tenant id).
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Prefix of every metric name.
pub const NAMESPACE: &str = "xapi_stream";

/// Latency buckets (seconds) for sub-millisecond to multi-second operations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Label values of the contract's fixed sets, initialised to 0 so every series exists from the
/// first scrape (dashboards and `rate()` see zeros, not gaps).
pub const WEBHOOK_RESULTS: &[&str] = &[
    "accepted",
    "health_check",
    "bad_signature",
    "stale",
    "malformed",
    "too_large",
    "unknown_tenant",
    "gone",
    "overloaded",
    "duplicate",
];
pub const JWT_REASONS: &[&str] = &[
    "malformed",
    "algorithm",
    "unknown_kid",
    "signature",
    "expired",
    "stale",
    "app_id",
    "replay",
    "wrong_action",
    "jwks_unavailable",
];
pub const QUEUE_POLL_RESULTS: &[&str] = &["ok", "empty", "error", "unauthorized", "backpressure"];
pub const TOKEN_REFRESH_RESULTS: &[&str] = &["ok", "invalid_grant", "invalid", "error"];
pub const ACTIVATION_RESULTS: &[&str] = &["started", "completed", "error", "rejected"];
/// Outcomes of transport switches (webhook ↔ queue): asked for, done, refused by Webex (4xx),
/// failed otherwise, a queue removed without having been seen empty after the overlap.
pub const TRANSPORT_SWITCH_RESULTS: &[&str] =
    &["requested", "completed", "refused", "failed", "forced"];
pub const ACTIONS: &[&str] = &["healthCheck", "update", "updateApproved", "deprovision"];
pub const ACTION_RESULTS: &[&str] = &["ok", "rejected", "error"];
pub const SOURCES: &[&str] = &["webhook", "queue"];
pub const MESSAGE_TYPES: &[&str] = &["status", "events"];
pub const STREAMS: &[&str] = &["status", "events"];
pub const TENANT_STATES: &[&str] = &["provisioning", "completed", "error", "deprovisioned"];
/// `kind` of device-API calls (see `devices::access::CallKind`).
pub const DEVICE_CALL_KINDS: &[&str] = &[
    "devices",
    "workspaces",
    "status",
    "command",
    "config_get",
    "config_patch",
];
/// Outcome of one HTTP attempt of a device-API call.
pub const DEVICE_CALL_RESULTS: &[&str] = &[
    "ok",
    "client_error",
    "unauthorized",
    "rate_limited",
    "server_error",
    "network",
];
/// Where a device request came from, and how it ended.
pub const DEVICE_REQUEST_SOURCES: &[&str] = &["http", "stream"];
pub const DEVICE_REQUEST_RESULTS: &[&str] = &["ok", "refused", "error"];
pub const INVENTORY_SYNC_RESULTS: &[&str] = &["ok", "error"];
pub const INVENTORY_KINDS: &[&str] = &["device", "workspace"];
pub const INVENTORY_OPS: &[&str] = &["add", "update", "remove"];
/// `lease_changes_total{result}`: how this replica's leases changed hands.
pub const LEASE_RESULTS: &[&str] = &["acquired", "lost", "lapsed", "handed_over"];

/// The engine's metric handles. Cheap to clone (each handle is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub webhooks_total: IntCounterVec,
    pub queue_polls_total: IntCounterVec,
    pub messages_total: IntCounterVec,
    pub stream_entries_total: IntCounterVec,
    pub redis_write_seconds: Histogram,
    pub token_refreshes_total: IntCounterVec,
    pub actions_total: IntCounterVec,
    pub activations_total: IntCounterVec,
    pub transport_switches_total: IntCounterVec,
    pub jwt_rejections_total: IntCounterVec,
    pub jwks_fetches_total: IntCounterVec,
    pub backpressure_rejections_total: IntCounter,
    pub token_exchanges_lost_total: IntCounter,
    pub replication_waits_total: IntCounterVec,
    pub tenants: IntGaugeVec,
    /// Firehose consumer groups: entries not yet delivered / delivered and not acknowledged.
    pub consumer_lag: IntGaugeVec,
    pub consumer_pending: IntGaugeVec,
    pub org_consumer_lag: IntGaugeVec,
    pub org_consumer_pending: IntGaugeVec,
    pub ingest_queue_depth: IntGauge,
    pub stage_seconds: HistogramVec,
    pub actor_restarts_total: IntCounterVec,
    pub redis_up: IntGauge,
    /// Redis Sentinel named a new master (the engine reconnected everything to it).
    pub redis_master_switches: IntCounter,
    pub token_expiry_horizon_seconds: prometheus::Gauge,
    pub queue_poll_lag_seconds: Histogram,
    pub device_api_calls_total: IntCounterVec,
    pub device_api_seconds: HistogramVec,
    pub device_requests_total: IntCounterVec,
    pub inventory_syncs_total: IntCounterVec,
    pub inventory_changes_total: IntCounterVec,
    pub lease_changes_total: IntCounterVec,
    pub webhook_secret_rotations_total: IntCounterVec,
    pub support_errors_total: IntCounterVec,
    pub setup_attempts_total: IntCounterVec,
    pub admin_auth_failures_total: IntCounterVec,
    /// Consumer credentials granted, revoked, restored and removed on Redis nodes.
    pub consumer_credentials_total: IntCounterVec,
    /// Consumer credentials on record (as the last sync saw them).
    pub consumer_users: IntGauge,
    pub replicas_live: IntGauge,
    pub tenants_owned: IntGauge,
    pub command_notifications_up: IntGauge,
    /// The hot path's series, resolved once (a `with_label_values` per message is a hash and
    /// a lock each time).
    hot: std::sync::Arc<Hot>,
}

/// Pre-resolved series of the ingest path.
struct Hot {
    /// `webhooks_total`, in [`WEBHOOK_RESULTS`] order.
    webhooks: Vec<IntCounter>,
    /// `messages_total{source,type}`: [webhook, queue] × [status, events].
    messages: [[IntCounter; 2]; 2],
    /// `stream_entries_total{stream}`: [status, events].
    entries: [IntCounter; 2],
    /// `stage_seconds` of verify, parse, redis_write, end_to_end.
    stages: [Histogram; 4],
}

/// A stage of the ingest path whose duration is recorded.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Verify = 0,
    Parse = 1,
    RedisWrite = 2,
    EndToEnd = 3,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

impl Metrics {
    /// Creates and registers every family in a fresh registry (with process metrics).
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                NAMESPACE,
            );
            registry
                .register(Box::new(pc))
                .expect("process collector registers once");
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let webhooks_total =
            counter_vec("webhooks_total", "Webhook requests by result.", &["result"]);
        let queue_polls_total = counter_vec(
            "queue_polls_total",
            "Queue long-polls by result.",
            &["result"],
        );
        let messages_total = counter_vec(
            "messages_total",
            "xAPI messages accepted, by source and type.",
            &["source", "type"],
        );
        let stream_entries_total = counter_vec(
            "stream_entries_total",
            "Entries appended to Redis streams, by stream.",
            &["stream"],
        );
        let token_refreshes_total = counter_vec(
            "token_refreshes_total",
            "OAuth refresh-token exchanges by result.",
            &["result"],
        );
        let actions_total = counter_vec(
            "actions_total",
            "Webex actions handled, by action and result.",
            &["action", "result"],
        );
        let activations_total = counter_vec(
            "activations_total",
            "Activations by result (started, completed, error, rejected).",
            &["result"],
        );
        let transport_switches_total = counter_vec(
            "transport_switches_total",
            "Transport switches between webhook and queue, by result (requested, completed, refused, failed, forced).",
            &["result"],
        );
        let jwt_rejections_total = counter_vec(
            "jwt_rejections_total",
            "JWTs rejected, by reason.",
            &["reason"],
        );
        let jwks_fetches_total =
            counter_vec("jwks_fetches_total", "JWKS fetches by result.", &["result"]);
        let actor_restarts_total = counter_vec(
            "actor_restarts_total",
            "Child actors restarted by their supervisor, by actor kind.",
            &["actor"],
        );
        let replication_waits_total = counter_vec(
            "replication_waits_total",
            "WAITs for redis.wait_replicas after a write batch: ok, or short (fewer replicas confirmed in time; the batch was answered 503).",
            &["result"],
        );
        for r in ["ok", "short"] {
            replication_waits_total.with_label_values(&[r]);
        }
        let token_exchanges_lost_total = IntCounter::with_opts(opts(
            "token_exchanges_lost_total",
            "Refresh tokens lost because an exchange stored no result (the replica died inside it, or no answer came) and Webex then refused the stored token; each leaves a tenant with tokens_state=invalid until an update action.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(token_exchanges_lost_total.clone()))
            .expect("metric registers once");
        let backpressure_rejections_total = IntCounter::with_opts(opts(
            "backpressure_rejections_total",
            "Requests or polls refused because ingest was saturated or Redis unreachable.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(backpressure_rejections_total.clone()))
            .expect("unique");
        let redis_master_switches = IntCounter::with_opts(opts(
            "redis_master_switches_total",
            "Times Redis Sentinel named a new master and the engine moved its connections there.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(redis_master_switches.clone()))
            .expect("unique");
        let redis_write_seconds = Histogram::with_opts(
            HistogramOpts::new("redis_write_seconds", "Time of one batched Redis write.")
                .namespace(NAMESPACE)
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(redis_write_seconds.clone()))
            .expect("unique");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "stage_seconds",
                "Latency of one pipeline stage (verify, parse, redis_write, end_to_end; token_exchange: call to stored result, token_store: the token endpoint's answer to the stored result, the window a crash loses a rotated refresh token in).",
            )
            .namespace(NAMESPACE)
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(stage_seconds.clone()))
            .expect("unique");
        let tenants = IntGaugeVec::new(
            opts("tenants", "Tenants by provisioning state."),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tenants.clone()))
            .expect("unique");
        let group_gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(opts(name, help), &["stream", "group"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let consumer_lag = group_gauge(
            "consumer_lag",
            "Firehose entries not yet delivered to a consumer group, summed over the shards (XINFO GROUPS lag).",
        );
        let consumer_pending = group_gauge(
            "consumer_pending",
            "Firehose entries delivered to a consumer group and not acknowledged, summed over the shards.",
        );
        let org_consumer_lag = group_gauge(
            "org_consumer_lag",
            "Entries of the organizations' streams not yet delivered to a group of streams.lag_groups, summed over the organizations this replica owns.",
        );
        let org_consumer_pending = group_gauge(
            "org_consumer_pending",
            "Entries of the organizations' streams delivered to a group of streams.lag_groups and not acknowledged, summed over the organizations this replica owns.",
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(name, help)).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let ingest_queue_depth = gauge(
            "ingest_queue_depth",
            "Messages accepted for writing but not yet durable in Redis.",
        );
        let redis_up = gauge("redis_up", "1 when the last Redis round trip succeeded.");
        let replicas_live = gauge(
            "replicas",
            "Live replicas (heartbeating in Redis) as this replica saw them last.",
        );
        let tenants_owned = gauge(
            "tenants_owned",
            "Tenants whose background work (token refresh, queue poller) this replica runs.",
        );
        let command_notifications_up = gauge(
            "command_notifications_up",
            "1 while Redis keyspace notifications wake command consumers (0: they read every devices.commands_poll_ms).",
        );
        let token_expiry_horizon_seconds = prometheus::Gauge::with_opts(opts(
            "token_expiry_horizon_seconds",
            "Seconds until the earliest access-token expiry of any active tenant (negative: expired).",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(token_expiry_horizon_seconds.clone()))
            .expect("unique");
        let queue_poll_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "queue_poll_lag_seconds",
                "Age of a queue message when polled (its timestamp to now).",
            )
            .namespace(NAMESPACE)
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_poll_lag_seconds.clone()))
            .expect("unique");
        let device_api_calls_total = counter_vec(
            "device_api_calls_total",
            "HTTP attempts of device-API calls to Webex, by kind and result.",
            &["kind", "result"],
        );
        let device_requests_total = counter_vec(
            "device_requests_total",
            "Device requests (xAPI status, commands, configurations) by source and result.",
            &["source", "result"],
        );
        let inventory_syncs_total = counter_vec(
            "inventory_syncs_total",
            "Inventory syncs (devices and workspaces of one tenant) by result.",
            &["result"],
        );
        let inventory_changes_total = counter_vec(
            "inventory_changes_total",
            "Inventory changes written, by kind (device, workspace) and op.",
            &["kind", "op"],
        );
        let device_api_seconds = HistogramVec::new(
            HistogramOpts::new(
                "device_api_seconds",
                "Duration of one HTTP attempt of a device-API call, by kind.",
            )
            .namespace(NAMESPACE)
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(device_api_seconds.clone()))
            .expect("unique");
        for k in DEVICE_CALL_KINDS {
            device_api_seconds.with_label_values(&[k]);
            for r in DEVICE_CALL_RESULTS {
                device_api_calls_total.with_label_values(&[k, r]);
            }
        }
        for s in DEVICE_REQUEST_SOURCES {
            for r in DEVICE_REQUEST_RESULTS {
                device_requests_total.with_label_values(&[s, r]);
            }
        }
        for r in INVENTORY_SYNC_RESULTS {
            inventory_syncs_total.with_label_values(&[r]);
        }
        for k in INVENTORY_KINDS {
            for o in INVENTORY_OPS {
                inventory_changes_total.with_label_values(&[k, o]);
            }
        }
        let lease_changes_total = counter_vec(
            "lease_changes_total",
            "Tenant leases of this replica: acquired, lost to another replica, lapsed without renewal, handed over.",
            &["result"],
        );
        for r in LEASE_RESULTS {
            lease_changes_total.with_label_values(&[r]);
        }
        let webhook_secret_rotations_total = counter_vec(
            "webhook_secret_rotations_total",
            "Webhook secret rotations (periodic and on demand): rotated, failed (the current secret stays in force), busy (another rotation in flight or its overlap running), not_applicable (no webhook, or not activated).",
            &["result"],
        );
        for r in ["rotated", "failed", "busy", "not_applicable"] {
            webhook_secret_rotations_total.with_label_values(&[r]);
        }
        let support_errors_total = counter_vec(
            "support_errors_total",
            "Errors answered with a trackingId, by what the support log did with them: recorded (findable by GET /admin/errors/<id>), dropped (this hour's support.errors_per_hour spent, or the queue full), failed (Redis refused the write).",
            &["result"],
        );
        for r in ["recorded", "dropped", "failed"] {
            support_errors_total.with_label_values(&[r]);
        }
        let setup_attempts_total = counter_vec(
            "setup_attempts_total",
            "Setup-page confirmations by result: completed (a valid invitation code), wrong_code, used, expired (refused, nothing changed), locked (the session had too many wrong codes), limited (too many wrong codes from the address this hour), decided (a valid code for an activation the operator decided meanwhile: the code is given back).",
            &["result"],
        );
        for r in [
            "completed",
            "wrong_code",
            "used",
            "expired",
            "locked",
            "limited",
            "decided",
        ] {
            setup_attempts_total.with_label_values(&[r]);
        }
        let admin_auth_failures_total = counter_vec(
            "admin_auth_failures_total",
            "Requests with a wrong or missing admin token (bearer or console sign-in), by what was answered: refused (401) or throttled (429: too many from the client's address within security.admin_failure_window_secs).",
            &["result"],
        );
        for r in ["refused", "throttled"] {
            admin_auth_failures_total.with_label_values(&[r]);
        }
        let consumer_credentials_total = counter_vec(
            "consumer_credentials_total",
            "Consumer credentials (Redis ACL users reading one organization) by action and result: grant and revoke (the admin API, the console, a deprovision: ok, exists, not_found, invalid, refused = Redis refused ACL, unavailable), restore (the sync set a recorded user on a node that lacked it: a node that joined or restarted) and remove (the sync deleted a user no record names).",
            &["action", "result"],
        );
        for a in ["grant", "revoke"] {
            for r in [
                "ok",
                "exists",
                "not_found",
                "invalid",
                "refused",
                "unavailable",
            ] {
                consumer_credentials_total.with_label_values(&[a, r]);
            }
        }
        for a in ["restore", "remove"] {
            for r in ["ok", "refused", "unavailable"] {
                consumer_credentials_total.with_label_values(&[a, r]);
            }
        }
        let consumer_users = gauge(
            "consumer_users",
            "Consumer credentials on record, as this replica's last sync of the Redis ACL users saw them.",
        );
        for r in WEBHOOK_RESULTS {
            webhooks_total.with_label_values(&[r]);
        }
        for r in JWT_REASONS {
            jwt_rejections_total.with_label_values(&[r]);
        }
        for r in QUEUE_POLL_RESULTS {
            queue_polls_total.with_label_values(&[r]);
        }
        for r in TOKEN_REFRESH_RESULTS {
            token_refreshes_total.with_label_values(&[r]);
        }
        for r in ACTIVATION_RESULTS {
            activations_total.with_label_values(&[r]);
        }
        for r in TRANSPORT_SWITCH_RESULTS {
            transport_switches_total.with_label_values(&[r]);
        }
        for a in ACTIONS {
            for r in ACTION_RESULTS {
                actions_total.with_label_values(&[a, r]);
            }
        }
        for src in SOURCES {
            for t in MESSAGE_TYPES {
                messages_total.with_label_values(&[src, t]);
            }
        }
        for st in STREAMS {
            stream_entries_total.with_label_values(&[st]);
        }
        for st in TENANT_STATES {
            tenants.with_label_values(&[st]);
        }
        let hot = std::sync::Arc::new(Hot {
            webhooks: WEBHOOK_RESULTS
                .iter()
                .map(|r| webhooks_total.with_label_values(&[r]))
                .collect(),
            messages: ["webhook", "queue"].map(|src| {
                ["status", "events"].map(|t| messages_total.with_label_values(&[src, t]))
            }),
            entries: ["status", "events"].map(|st| stream_entries_total.with_label_values(&[st])),
            stages: ["verify", "parse", "redis_write", "end_to_end"]
                .map(|st| stage_seconds.with_label_values(&[st])),
        });
        Self {
            hot,
            registry,
            webhooks_total,
            queue_polls_total,
            messages_total,
            stream_entries_total,
            redis_write_seconds,
            token_refreshes_total,
            actions_total,
            activations_total,
            transport_switches_total,
            jwt_rejections_total,
            jwks_fetches_total,
            backpressure_rejections_total,
            token_exchanges_lost_total,
            replication_waits_total,
            tenants,
            consumer_lag,
            consumer_pending,
            org_consumer_lag,
            org_consumer_pending,
            ingest_queue_depth,
            stage_seconds,
            actor_restarts_total,
            redis_up,
            redis_master_switches,
            token_expiry_horizon_seconds,
            queue_poll_lag_seconds,
            device_api_calls_total,
            device_api_seconds,
            device_requests_total,
            inventory_syncs_total,
            inventory_changes_total,
            lease_changes_total,
            webhook_secret_rotations_total,
            support_errors_total,
            setup_attempts_total,
            admin_auth_failures_total,
            consumer_credentials_total,
            consumer_users,
            replicas_live,
            tenants_owned,
            command_notifications_up,
        }
    }

    pub fn lease(&self, result: &str) {
        self.lease_changes_total.with_label_values(&[result]).inc();
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("exposition format is UTF-8")
    }

    pub fn jwt_rejected(&self, reason: &str) {
        self.jwt_rejections_total.with_label_values(&[reason]).inc();
    }

    pub fn consumer_credentials(&self, action: &str, result: &str) {
        self.consumer_credentials_total
            .with_label_values(&[action, result])
            .inc();
    }

    pub fn admin_auth_failure(&self, result: &str) {
        self.admin_auth_failures_total
            .with_label_values(&[result])
            .inc();
    }

    pub fn setup_attempt(&self, result: &str) {
        self.setup_attempts_total.with_label_values(&[result]).inc();
    }

    pub fn support_errors(&self, result: &str, n: u64) {
        self.support_errors_total
            .with_label_values(&[result])
            .inc_by(n);
    }

    pub fn secret_rotation(&self, result: &str) {
        self.webhook_secret_rotations_total
            .with_label_values(&[result])
            .inc();
    }

    /// One action of Webex answered (`action`: healthCheck, update…; `result`).
    pub fn action(&self, action: &str, result: &str) {
        self.actions_total
            .with_label_values(&[action, result])
            .inc();
    }

    pub fn activation(&self, result: &str) {
        self.activations_total.with_label_values(&[result]).inc();
    }

    pub fn transport_switch(&self, result: &str) {
        self.transport_switches_total
            .with_label_values(&[result])
            .inc();
    }

    pub fn token_refresh(&self, result: &str) {
        self.token_refreshes_total
            .with_label_values(&[result])
            .inc();
    }

    /// One `WAIT` for replicas after a write batch.
    pub fn replication_waits(&self, result: &str) {
        self.replication_waits_total
            .with_label_values(&[result])
            .inc();
    }

    /// A refresh token lost in an exchange that stored no result.
    pub fn token_exchange_lost(&self) {
        self.token_exchanges_lost_total.inc();
    }

    pub fn jwks_fetch(&self, result: &str) {
        self.jwks_fetches_total.with_label_values(&[result]).inc();
    }

    /// One HTTP attempt of a device-API call: its result and duration.
    pub fn device_call(&self, kind: &str, result: &str, started: std::time::Instant) {
        self.device_api_calls_total
            .with_label_values(&[kind, result])
            .inc();
        self.device_api_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
    }

    /// One device request finished (`source`: http or stream; `result`: ok, refused, error).
    pub fn device_request(&self, source: &str, result: &str) {
        self.device_requests_total
            .with_label_values(&[source, result])
            .inc();
    }

    /// One inventory sync finished, with the changes it wrote.
    pub fn inventory_sync(&self, result: &str, changes: &[(&str, &str, u64)]) {
        self.inventory_syncs_total
            .with_label_values(&[result])
            .inc();
        for (kind, op, n) in changes {
            self.inventory_changes_total
                .with_label_values(&[kind, op])
                .inc_by(*n);
        }
    }

    /// One webhook answered with `result` (one of [`WEBHOOK_RESULTS`]).
    pub fn webhook(&self, result: &str) {
        match WEBHOOK_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.hot.webhooks[i].inc(),
            None => self.webhooks_total.with_label_values(&[result]).inc(),
        }
    }

    /// One message written, by source (`webhook`/`queue`) and type (`status`/`events`).
    pub fn message_written(&self, source: &str, kind: &str) {
        let s = usize::from(source != "webhook");
        let t = usize::from(kind != "status");
        self.hot.messages[s][t].inc();
    }

    /// `n` entries appended to a `status` or `events` stream.
    pub fn entries_written(&self, stream: &str, n: u64) {
        self.hot.entries[usize::from(stream != "status")].inc_by(n);
    }

    /// Records the duration of an ingest stage.
    pub fn ingest_stage(&self, stage: Stage, started: std::time::Instant) {
        self.hot.stages[stage as usize].observe(started.elapsed().as_secs_f64());
    }

    /// Records the duration of one pipeline stage by name (the token stages, say).
    pub fn stage(&self, stage: &'static str, started: std::time::Instant) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_families() {
        let m = Metrics::new();
        m.jwt_rejected("signature");
        m.webhooks_total.with_label_values(&["accepted"]).inc();
        m.backpressure_rejections_total.inc();
        let text = m.render();
        for name in [
            "xapi_stream_jwt_rejections_total",
            "xapi_stream_webhooks_total",
            "xapi_stream_backpressure_rejections_total",
            "xapi_stream_ingest_queue_depth",
            "xapi_stream_redis_write_seconds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
