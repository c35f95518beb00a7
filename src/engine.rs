//! Wires the engine together and runs it: metrics, the Redis store, the HTTP edge. Start-up
//! binds only after the configuration validated; shutdown drains in order: readiness off →
//! HTTP intake stopped (in-flight requests finish) → background work stopped.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use actors::auth::JwtVerifier;
use actors::config::Config;
use actors::ownership::Coordinator;
use actors::registry::Registry;
use actors::shutdown::{self, ShutdownTrigger};
use actors::store::Store;
use actors::store::crypto::Sealer;
use actors::store::tenants::Tenants;
use actors::store::writer::{StreamWriter, WriterConfig};
use actors::telemetry::Metrics;
use actors::tenant::Deps;
use actors::tenant::tokens::ExchangeTasks;
use actors::webex::client::WebexClient;

use crate::http::{self, AppState};

/// Threads (actix arbiters) that tenant supervisors are spread over.
const SUPERVISOR_THREADS: usize = 2;
/// Pooled connections to Webex idle this long are closed by us, below the 5-s keep-alive of
/// common servers and load balancers: a request sent on a connection the server is closing at
/// that moment fails with "error sending request" (seen on a takeover's first poll).
const POOL_IDLE: Duration = Duration::from_secs(4);

/// Time allowed, after the HTTP timeout, for an exchange's result to be written to Redis.
const EXCHANGE_STORE_MARGIN: Duration = Duration::from_secs(3);

/// A running engine. Dropping it does not stop it; call [`RunningEngine::shutdown`].
pub struct RunningEngine {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: web::Data<AppState>,
    trigger: ShutdownTrigger,
    writer_trigger: ShutdownTrigger,
    coordinator: Arc<Coordinator>,
    /// Stops the ownership rounds: after the tenants' work stopped (leases are renewed while it
    /// finishes), before the leases are released.
    coordinator_trigger: ShutdownTrigger,
}

/// Starts the engine on `config.server.bind` (port 0 picks a free port).
pub async fn start(config: Config) -> anyhow::Result<RunningEngine> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let store = Store::new(&config.redis, metrics.clone())?;
    let (trigger, shutdown) = shutdown::channel();
    // The writer stops last: after HTTP intake and tenants, so accepted messages are flushed.
    let (writer_trigger, writer_stop) = shutdown::channel();
    let sealer = Sealer::new(&config.encryption_key()?);
    let http = reqwest::Client::builder()
        .timeout(config.webex.http_timeout())
        .connect_timeout(config.webex.http_timeout())
        .user_agent(concat!("xapi-stream/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let writer = StreamWriter::start(
        store.clone(),
        WriterConfig {
            queue_capacity: config.ingest.queue_capacity,
            writers: config.ingest.writers,
            stream_maxlen: config.redis.stream_maxlen,
            wait_replicas: config.redis.wait_replicas,
            wait_timeout: Duration::from_millis(config.redis.wait_timeout_ms),
        },
        writer_stop,
    );
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let oauth_http = reqwest::Client::builder()
        .timeout(config.webex.http_timeout())
        .connect_timeout(config.webex.http_timeout())
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("xapi-stream/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let deps = Arc::new(Deps {
        config: config.clone(),
        store: store.clone(),
        tenants: Tenants::new(store.clone(), sealer),
        webex: WebexClient::new(http.clone(), config.webex.allow_http),
        poll_http: reqwest::Client::builder()
            .connect_timeout(config.webex.http_timeout())
            .pool_idle_timeout(POOL_IDLE)
            .user_agent(concat!("xapi-stream/", env!("CARGO_PKG_VERSION")))
            .build()?,
        oauth: WebexClient::new(oauth_http, config.webex.allow_http),
        exchanges: ExchangeTasks::on_current_runtime(),
        metrics: metrics.clone(),
        writer: writer.clone(),
        shutdown: shutdown.clone(),
        gone: gone_tx,
    });
    let verifier = Arc::new(JwtVerifier::new(
        &config,
        http,
        store.clone(),
        metrics.clone(),
    ));
    let registry = Arc::new(Registry::new(deps, SUPERVISOR_THREADS));
    registry.spawn_gone_cleaner(gone_rx);
    let coordinator = Coordinator::new(registry.clone());
    let (coordinator_trigger, coordinator_stop) = shutdown::channel();

    let state = web::Data::new(AppState {
        config: config.clone(),
        metrics,
        store: store.clone(),
        registry: registry.clone(),
        verifier,
        writer,
        accepting: AtomicBool::new(true),
    });

    let max_body = config.server.max_body_bytes;
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .configure(http::routes)
    })
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_grace_secs);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server.bind(config.bind_addr())?;
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(%addr, public_url = %config.server.public_url, "http edge listening");

    let coord = coordinator.clone();
    tokio::spawn(async move {
        // Connect, then load every stored tenant (retrying while Redis is flaky), then follow
        // other replicas' changes and run the ownership rounds.
        if !store.connect(shutdown.wait()).await {
            return;
        }
        tokio::spawn(follow_changes(registry.clone(), shutdown.clone()));
        loop {
            match registry.resume_all().await {
                Ok(n) => {
                    tracing::info!(tenants = n, replica = %coord.replica(), "tenants loaded");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not load tenants yet; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tokio::spawn(resync_loop(registry.clone(), shutdown.clone()));
        coord.run(coordinator_stop).await;
    });

    Ok(RunningEngine {
        addr,
        server: handle,
        server_task,
        state,
        trigger,
        writer_trigger,
        coordinator,
        coordinator_trigger,
    })
}

/// Applies the changes other replicas announce on `<p>:changes` (one org per message). The
/// subscription reconnects by itself; after a gap every tenant is reloaded, since messages
/// published meanwhile are lost.
async fn follow_changes(registry: Arc<Registry>, stop: actors::shutdown::Shutdown) {
    use futures::StreamExt;
    let deps = registry.deps().clone();
    let channel = deps.store.keys().changes_channel();
    let mut gap = false;
    loop {
        let attempt = async {
            let mut pubsub = deps.store.pubsub_client().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(pubsub)) => {
                if gap {
                    tracing::info!("change announcements resubscribed; reloading every tenant");
                    let _ = registry.resync().await;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.wait() => return,
                        m = messages.next() => match m {
                            Some(m) => {
                                let Ok(org) = m.get_payload::<String>() else { continue };
                                let registry = registry.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = registry.refresh(&org).await {
                                        tracing::warn!(org, error = %e, "announced change not loaded; the next resync will");
                                    }
                                });
                            }
                            None => break,
                        }
                    }
                }
                tracing::warn!("change announcements: subscription lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "change announcements: cannot subscribe yet"),
            Err(_) => tracing::debug!("change announcements: subscribe timed out"),
        }
        gap = true;
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reloads every tenant every `scaling.resync_secs`: the safety net for missed announcements.
async fn resync_loop(registry: Arc<Registry>, stop: actors::shutdown::Shutdown) {
    let every = Duration::from_secs_f64(registry.deps().config.scaling.resync_secs);
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = registry.resync().await {
            tracing::warn!(error = %e, "tenant resync failed; next round");
        }
    }
}

impl RunningEngine {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.state.registry
    }

    /// Ordered drain: readiness off, intake stopped (in-flight requests complete within the
    /// grace), background loops stopped.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.state.config.server.shutdown_grace_secs);
        tracing::info!("shutting down: readiness off, draining in-flight requests");
        self.state.accepting.store(false, Ordering::Release);
        // Leave the replica set first: the others start taking this replica's tenants while
        // its in-flight work finishes; the leases are deleted once that work stopped.
        self.coordinator.leave().await;
        self.server.stop(true).await;
        self.trigger.fire();
        self.state.registry.stop_all().await;
        // A token exchange in flight finishes and stores the rotated refresh token before the
        // leases go (a successor would bump the epoch and fence that write off). Each is
        // bounded by the HTTP timeout, plus a moment for the write.
        let exchanges = &self.state.registry.deps().exchanges;
        let in_flight = exchanges.in_flight();
        let limit = self.state.config.webex.http_timeout() + EXCHANGE_STORE_MARGIN;
        if !exchanges.drain(limit).await {
            tracing::error!(
                in_flight,
                "token exchanges still unfinished after {limit:?}; their tenants may need an update action"
            );
        } else if in_flight > 0 {
            tracing::info!(in_flight, "token exchanges in flight finished and stored");
        }
        self.coordinator_trigger.fire();
        self.coordinator.release_all().await;
        self.writer_trigger.fire();
        let _ = tokio::time::timeout(grace, self.server_task).await;
        tracing::info!("shutdown complete");
    }
}

/// Resolves on SIGTERM or SIGINT (we own signal handling; actix-web's is disabled, because it
/// treats SIGINT as a forced stop).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
