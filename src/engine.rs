//! Wires the engine together and runs it: metrics, the Redis store, the HTTP edge. Start-up
//! binds only after the configuration validated; shutdown drains in order: readiness off →
//! HTTP intake stopped (in-flight requests finish) → background work stopped.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use actors::config::Config;
use actors::ingest::Ingest;
use actors::ownership::Coordinator;
use actors::registry::Registry;
use actors::shutdown::{self, ShutdownTrigger};
use actors::telemetry::Metrics;
use actors::tenant::{Built, Deps};

use crate::http::{self, AppState};

/// Threads (actix arbiters) that tenant supervisors are spread over.
const SUPERVISOR_THREADS: usize = 2;

/// Time allowed, after the HTTP timeout, for an exchange's result to be written to Redis.
const EXCHANGE_STORE_MARGIN: Duration = Duration::from_secs(3);

/// A running engine. Dropping it does not stop it; call [`RunningEngine::shutdown`].
pub struct RunningEngine {
    addr: SocketAddr,
    /// Whether the public listener speaks HTTPS (`server.tls_cert`).
    tls: bool,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The private admin listener (`server.admin_bind`), stopped last: probes and metrics
    /// answer through the drain.
    admin: Option<(
        SocketAddr,
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
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
    let (trigger, shutdown) = shutdown::channel();
    // The writer stops last: after HTTP intake and tenants, so accepted messages are flushed.
    let (writer_trigger, writer_stop) = shutdown::channel();
    let Built {
        deps,
        gone,
        verifier,
        writer,
        errors,
        consumers,
    } = Deps::build(
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
        writer_stop,
    )?;
    let bell_on = config.devices.command_notifications;
    let registry = Arc::new(Registry::new(deps, SUPERVISOR_THREADS));
    registry.spawn_gone_cleaner(gone);
    let coordinator = Coordinator::new(registry.clone());
    let (coordinator_trigger, coordinator_stop) = shutdown::channel();

    let state = web::Data::new(AppState {
        config: config.clone(),
        metrics: metrics.clone(),
        registry: registry.clone(),
        verifier,
        ingest: Ingest::new(registry.clone(), writer, metrics),
        errors,
        throttle: http::admin::Throttle::new(&config.security),
        onboarding: actors::onboarding::Onboarding::new(registry.clone()),
        sessions: actors::console::Sessions::new(&registry),
        consumers,
        accepting: AtomicBool::new(true),
    });

    let max_body = config.server.max_body_bytes;
    let app_state = state.clone();
    if config.admin_addr().is_none() && !config.server.admin_token.is_empty() {
        tracing::warn!(
            bind = %config.server.bind,
            "the admin API and the console share the public listener (server.admin_bind is empty): \
             anyone who can reach server.bind can try the admin token, and wrong tokens throttle \
             their address (behind a proxy without server.trusted_proxies: every client's); set \
             server.admin_bind to a private address"
        );
    }
    let routes = if config.admin_addr().is_some() {
        http::public_routes
    } else {
        http::routes
    };
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(http::record_errors))
            .wrap(http::nosniff())
            .configure(|c| http::mount(c, app_state.clone(), max_body, routes))
    })
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_grace_secs);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let tls = !config.server.tls_cert.is_empty();
    let server = if tls {
        let certs = Arc::new(
            http::tls::CertStore::load(&config.server.tls_cert, &config.server.tls_key)
                .map_err(|e| anyhow::anyhow!("server.tls_cert/tls_key: {e}"))?,
        );
        // Installed before anything is served: a SIGHUP never finds the default action.
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = signal(SignalKind::hangup())?;
            let certs = certs.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match certs.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: TLS certificate not reloaded; the previous one stays in use"
                        ),
                    }
                }
            });
        }
        server.bind_rustls_0_23(config.bind_addr(), certs.server_config()?)?
    } else {
        server.bind(config.bind_addr())?
    };
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("server bound no address"))?;
    // Both listeners are bound before either serves (a clash fails the start, not half of it).
    let admin = match config.admin_addr() {
        None => None,
        Some(bind) => {
            let admin_state = state.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(actix_web::middleware::from_fn(http::record_errors))
                    .wrap(http::nosniff())
                    .configure(|c| {
                        http::mount(c, admin_state.clone(), max_body, http::admin_routes)
                    })
            })
            .disable_signals()
            .shutdown_timeout(config.server.shutdown_grace_secs)
            .workers(1)
            .bind(bind)?;
            let admin_addr = *server
                .addrs()
                .first()
                .ok_or_else(|| anyhow::anyhow!("admin listener bound no address"))?;
            let server = server.run();
            let handle = server.handle();
            tracing::info!(addr = %admin_addr, "admin listener (admin API, metrics, probes)");
            Some((admin_addr, handle, tokio::spawn(server)))
        }
    };
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(%addr, public_url = %config.server.public_url, "http edge listening");
    if config.server.admin_bind.is_empty() {
        tracing::warn!(
            bind = %config.server.bind,
            "server.admin_bind is not set: the admin API, the operator console and /metrics are served on the public port beside the Webex endpoints (each behind the admin token); set server.admin_bind to a private address to keep them off the internet"
        );
    }
    if config.server.public_url_derived {
        tracing::warn!(
            public_url = %config.server.public_url,
            "server.public_url is not set: Webex cannot reach this address; set the engine's public HTTPS URL"
        );
    }

    let coord = coordinator.clone();
    tokio::spawn(async move {
        // Connect, then load every stored tenant (retrying while Redis is flaky), then follow
        // other replicas' changes and run the ownership rounds.
        if !registry.connect(shutdown.wait()).await {
            return;
        }
        tokio::spawn(actors::registry::follow_changes(
            registry.clone(),
            shutdown.clone(),
        ));
        if bell_on {
            registry.spawn_command_bell(shutdown.clone());
        } else {
            tracing::info!(
                "devices.command_notifications is off: command streams are read every devices.commands_poll_ms"
            );
        }
        loop {
            match registry.resume_all().await {
                Ok(n) => {
                    tracing::info!(tenants = n, replica = %coord.replica(), "tenants loaded");
                    let (differing, some) = registry.transports_differing();
                    if differing > 0 {
                        let wanted = config.integration.ingest.as_str();
                        tracing::warn!(
                            tenants = differing,
                            examples = %some.join(","),
                            "{differing} tenant(s) read another transport than integration.ingest = \"{wanted}\" (which applies to activations only); to move them: xapi-stream set-ingest --all {wanted} (or --tenant ID {wanted}, or PATCH /admin/tenants/<id> {{\"ingest\": \"{wanted}\"}})"
                        );
                    }
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
        tokio::spawn(actors::registry::resync_loop(
            registry.clone(),
            shutdown.clone(),
        ));
        registry.spawn_lag_sampling(shutdown.clone());
        registry.spawn_consumer_sync(shutdown.clone());
        tokio::spawn(actors::registry::flush_counters_loop(
            registry.clone(),
            shutdown.clone(),
        ));
        coord.run(coordinator_stop).await;
    });

    Ok(RunningEngine {
        addr,
        tls,
        server: handle,
        server_task,
        admin,
        state,
        trigger,
        writer_trigger,
        coordinator,
        coordinator_trigger,
    })
}

impl RunningEngine {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, or `https://` with `server.tls_cert`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Where the admin API, metrics and probes answer: the admin listener when
    /// `server.admin_bind` is set, else [`Self::base_url`].
    pub fn admin_url(&self) -> String {
        match &self.admin {
            Some((addr, ..)) => format!("http://{addr}"),
            None => self.base_url(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
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
        let limit = self.state.config.webex.http_timeout() + EXCHANGE_STORE_MARGIN;
        let (in_flight, all_done) = self.state.registry.drain_exchanges(limit).await;
        if !all_done {
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
        let writer_done = tokio::time::timeout(grace, self.state.registry.writer_stopped()).await;
        // The last counts (the periodic flush stopped with the engine's signal).
        self.state.registry.flush_counters().await;
        if writer_done.is_err() {
            tracing::error!("the stream writer did not finish within the grace");
        }
        let _ = tokio::time::timeout(grace, self.server_task).await;
        if let Some((_, handle, task)) = self.admin {
            handle.stop(true).await;
            let _ = tokio::time::timeout(grace, task).await;
        }
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
