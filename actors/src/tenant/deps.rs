//! What every tenant component needs from the engine, built once from the configuration:
//! the Redis store and the sealed tenant records, the stream writer, the Webex clients, the
//! token-exchange tasks, metrics and the shutdown signal.
use std::sync::Arc;
use std::time::Duration;

use crate::auth::JwtVerifier;
use crate::config::{Config, ConfigError};
use crate::shutdown::Shutdown;
use crate::store::crypto::Sealer;
use crate::store::tenants::Tenants;
use crate::store::writer::{StreamWriter, WriterConfig};
use crate::store::{Store, StoreError};
use crate::support::ErrorLog;
use crate::telemetry::Metrics;
use crate::webex::client::WebexClient;

use super::tokens::ExchangeTasks;

/// Pooled connections to Webex idle this long are closed by us, below the 5-s keep-alive of
/// common servers and load balancers: a request sent on a connection the server is closing at
/// that moment fails with "error sending request" (seen on a takeover's first poll).
const POOL_IDLE: Duration = Duration::from_secs(4);
const USER_AGENT: &str = concat!("xapi-stream/", env!("CARGO_PKG_VERSION"));

/// What every tenant component needs from the engine.
pub struct Deps {
    pub(super) config: Arc<Config>,
    pub(super) store: Store,
    pub(super) tenants: Tenants,
    pub(super) webex: WebexClient,
    /// A separate HTTP client for queue long-polls. reqwest drives each pooled connection on
    /// the runtime that opened it; sharing the pool with calls made from HTTP workers would let
    /// a poller reuse a connection that dies when those workers stop during a drain — with a
    /// batch Webex already removed from its queue in flight. Pollers run on the supervisors'
    /// arbiters, which stop only after them.
    /// Polls are spread over several clients ([`crate::webex::polls`]).
    pub(super) poll_http: crate::webex::polls::PollClients,
    /// The lean HTTP/1.1 poll client, when `ingest.poll_client = "http1"` (else `poll_http`).
    pub(super) poll_http1: Option<crate::webex::http1::Http1Polls>,
    /// The client of token exchanges only: they run on [`Deps::exchanges`]' runtime, which
    /// drives these connections until the process exits (see `poll_http` for the pitfall).
    pub(super) oauth: WebexClient,
    /// Where token exchanges run, and what a drain waits for.
    pub(super) exchanges: ExchangeTasks,
    pub(super) metrics: Metrics,
    /// Wakes a tenant's command consumer when its stream gets an entry (listening is started
    /// by the registry once connected: `Registry::spawn_command_bell`).
    pub(super) bell: crate::store::bell::Bell,
    pub(super) writer: crate::store::writer::StreamWriter,
    pub(super) consumers: crate::consumers::Consumers,
    pub(super) shutdown: Shutdown,
    /// Tenants found removed on the Webex side (appUrl 404/410), for the registry to clean up.
    pub(super) gone: tokio::sync::mpsc::UnboundedSender<String>,
    /// Tenant ids with message counts not yet stored (the registry's flush takes them): a
    /// flush visits the tenants that received something, not all of them.
    pub(super) to_flush: std::sync::Mutex<Vec<String>>,
}

/// What the rooms outside `tenant/` are handed: each reads the parts it uses, none can
/// replace one (the fields are private to `tenant/`).
impl Deps {
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The engine's stop signal.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The Redis store (for the rooms that own a repository of their own: registry,
    /// ownership, onboarding, the console's sessions, the device API).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The sealed tenant records.
    pub(crate) fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// The Webex client of appUrl and device-API calls.
    pub(crate) fn webex(&self) -> &WebexClient {
        &self.webex
    }

    /// Consumer credentials (a deprovision revokes them; the registry syncs them).
    pub(crate) fn consumers(&self) -> &crate::consumers::Consumers {
        &self.consumers
    }

    /// The stream writer.
    pub(crate) fn writer(&self) -> &StreamWriter {
        &self.writer
    }

    /// The queue poller's clients: the lean HTTP/1.1 one when configured, else reqwest's.
    pub(crate) fn poll_clients(
        &self,
    ) -> (
        Option<&crate::webex::http1::Http1Polls>,
        &crate::webex::polls::PollClients,
    ) {
        (self.poll_http1.as_ref(), &self.poll_http)
    }

    /// Where token exchanges run (what a drain waits for).
    pub(crate) fn exchanges(&self) -> &ExchangeTasks {
        &self.exchanges
    }

    /// The command bell.
    pub(crate) fn bell(&self) -> &crate::store::bell::Bell {
        &self.bell
    }

    /// The tenant ids whose message counts wait for the registry's flush (taken all at once).
    pub(crate) fn take_to_flush(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .to_flush
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// `<public_url>/tenants/<id>/actions`.
    pub fn actions_url(&self, tenant_id: &str) -> String {
        format!("{}/tenants/{tenant_id}/actions", self.config.public_base())
    }

    /// `<public_url>/tenants/<id>/webhook`.
    pub fn webhook_url(&self, tenant_id: &str) -> String {
        format!("{}/tenants/{tenant_id}/webhook", self.config.public_base())
    }
}

/// Why the dependencies could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The built dependencies and the pieces the process wires beside them.
pub struct Built {
    pub deps: Arc<Deps>,
    /// Tenants found removed on the Webex side, for the registry's cleaner.
    pub gone: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The JWT verifier of activations and actions (the HTTP edge's).
    pub verifier: Arc<JwtVerifier>,
    /// The stream writer (the ingest pipeline's).
    pub writer: StreamWriter,
    /// The support log (error answers, found again by trackingId).
    pub errors: Arc<ErrorLog>,
    /// Consumer credentials (the admin API's and the console's).
    pub consumers: crate::consumers::Consumers,
}

impl Deps {
    /// Builds everything from `config` (nothing connects yet: see `Registry::connect`). The
    /// stream writer drains and stops on `writer_stop`; everything else follows `shutdown`.
    pub fn build(
        config: Arc<Config>,
        metrics: Metrics,
        shutdown: Shutdown,
        writer_stop: Shutdown,
    ) -> Result<Built, BuildError> {
        let store = Store::new(&config.redis, metrics.clone())?;
        let sealer = Sealer::new(&config.encryption_key()?);
        let timeout = config.webex.http_timeout();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(USER_AGENT)
            .build()?;
        let oauth_http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(USER_AGENT)
            .build()?;
        let poll_http = crate::webex::polls::PollClients::new(
            config.ingest.polls_per_connection,
            timeout,
            POOL_IDLE,
            USER_AGENT,
            config.webex.allow_http && config.webex.plain_http2,
        )?;
        let mut lean = config.ingest.poll_client == crate::config::PollClient::Http1;
        if let Some(var) = lean.then(proxy_variable).flatten() {
            // The lean client connects directly; reqwest honours the proxy (and NO_PROXY).
            tracing::warn!(
                variable = var,
                "an HTTP proxy is configured: queue polls use the negotiated client, which goes through it"
            );
            lean = false;
        }
        let poll_http1 =
            lean.then(|| crate::webex::http1::Http1Polls::new(timeout, POOL_IDLE, USER_AGENT));
        let writer = StreamWriter::start(
            store.clone(),
            WriterConfig {
                queue_capacity: config.ingest.queue_capacity,
                writers: config.ingest.writers,
                stream_maxlen: config.redis.stream_maxlen,
                streams: crate::store::writer::Streams::from_config(&config.streams),
                wait_replicas: config.redis.wait_replicas,
                wait_timeout: Duration::from_millis(config.redis.wait_timeout_ms),
            },
            writer_stop,
        );
        let (gone_tx, gone) = tokio::sync::mpsc::unbounded_channel();
        let verifier = Arc::new(JwtVerifier::new(
            &config,
            http.clone(),
            store.clone(),
            metrics.clone(),
        ));
        let errors = Arc::new(ErrorLog::start(
            store.clone(),
            &config.support,
            metrics.clone(),
        ));
        let consumers = crate::consumers::Consumers::new(
            store.clone(),
            sealer.clone(),
            metrics.clone(),
            errors.clone(),
        );
        let deps = Arc::new(Deps {
            consumers: consumers.clone(),
            tenants: Tenants::new(store.clone(), sealer),
            webex: WebexClient::new(http, config.webex.allow_http),
            oauth: WebexClient::new(oauth_http, config.webex.allow_http),
            poll_http,
            poll_http1,
            exchanges: ExchangeTasks::on_current_runtime(),
            bell: Default::default(),
            store,
            metrics,
            writer: writer.clone(),
            shutdown,
            gone: gone_tx,
            to_flush: Default::default(),
            config,
        });
        Ok(Built {
            deps,
            gone,
            verifier,
            writer,
            errors,
            consumers,
        })
    }
}

/// The proxy variable set in the environment, if any (reqwest's clients go through it).
fn proxy_variable() -> Option<&'static str> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}
