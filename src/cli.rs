//! The `xapi-stream` command line: `serve`, `sim`, `demo`, `activate` and `manifest check`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{config, engine, logging};

#[derive(Parser, Debug)]
#[command(
    name = "xapi-stream",
    version,
    about = "Webex Workspace Integration engine: xAPI status and events into Redis Streams"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the engine.
    Serve {
        /// TOML configuration file (defaults: config/default.toml, built in).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the built-in Webex cloud simulator.
    #[cfg(feature = "devkit")]
    Sim(crate::devkit::cli::SimArgs),
    /// Run the end-to-end demo: private Redis, simulator and engine, with progress output.
    #[cfg(feature = "devkit")]
    Demo(crate::devkit::demo::DemoArgs),
    /// Activate an organization by hand: sends the activation JWT (copied from Control Hub) to a
    /// running engine's admin API.
    Activate {
        /// File holding the activation JWT.
        #[arg(long)]
        jwt_file: PathBuf,
        /// The engine's configuration (for its address and admin token).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Invite a customer: a one-time code and link for the customer's admin, who enters it on
    /// the setup page HTTPS activation leads to (never the operator's admin token).
    Invite {
        /// The partner's own id of the customer (goes into the activation's `customer`).
        #[arg(long)]
        customer_id: String,
        /// The customer's name.
        #[arg(long)]
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Rotate one tenant's webhook secret now, through a running engine's admin API (the old
    /// secret stays valid for security.webhook_secret_overlap_secs).
    RotateSecret {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// The engine's configuration (for its address and admin token).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Find the error a caller was answered with, by its trackingId (kept
    /// support.errors_retention_secs): time, endpoint, tenant, reason, description.
    Support {
        /// The trackingId (32 hex digits) the caller quotes.
        tracking_id: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
        #[arg(long)]
        url: Option<String>,
    },
    /// Read the streams with a consumer group and print records (a downstream example).
    Tail(crate::tail::TailArgs),
    /// Consumer credentials: Redis ACL users that read one organization's data only, through a
    /// running engine's admin API.
    Consumer {
        #[command(subcommand)]
        command: ConsumerCommand,
    },
    /// Move tenants between webhook and queue through a running engine's admin API: the new
    /// transport is enabled first, both are read for activation.transport_overlap_secs, then
    /// the old one is removed (make-before-break).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["tenant", "all"])))]
    SetIngest {
        /// One tenant id.
        #[arg(long)]
        tenant: Option<String>,
        /// Every completed tenant that does not read MODE yet.
        #[arg(long)]
        all: bool,
        /// webhook, queue or both.
        #[arg(value_parser = ["webhook", "queue", "both"])]
        mode: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Integration manifest tools.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConsumerCommand {
    /// Create a Redis user that reads this tenant's organization only (its status, events,
    /// command results, device state and inventory); prints its password once.
    Grant {
        #[arg(long)]
        tenant: String,
        /// A name for the consumer (lowercase letters, digits, '_' and '-').
        #[arg(long)]
        name: String,
        /// Also let it add commands to the organization's command stream.
        #[arg(long)]
        commands: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// List a tenant's consumers (never their passwords).
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Delete a consumer's Redis user on every node: its connections close at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// Where the running engine is.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// The engine's configuration (for its address and admin token).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Check a manifest against every rule of the protocol; prints each problem with its JSON path.
    Check { path: PathBuf },
    /// Ask Webex to offer a new manifest to one tenant's admin (PATCH of its appUrl with an
    /// `updateRequest`), through a running engine.
    RequestUpdate {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// The new manifest (checked locally first).
        path: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Engine base URL (default: http://<server.admin_bind>, else http://<server.bind>).
        #[arg(long)]
        url: Option<String>,
    },
}

/// Parses arguments and runs the command; the exit code is the process's.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        #[cfg(feature = "devkit")]
        Command::Sim(args) => crate::devkit::cli::sim(args),
        #[cfg(feature = "devkit")]
        Command::Demo(args) => crate::devkit::demo::run(args),
        Command::Tail(args) => crate::tail::run(args),
        Command::Activate {
            jwt_file,
            config,
            url,
        } => activate(&jwt_file, config.as_deref(), url),
        Command::Invite {
            customer_id,
            name,
            config,
            url,
        } => invite(&customer_id, &name, config.as_deref(), url),
        Command::Support {
            tracking_id,
            config,
            url,
        } => support(&tracking_id, config.as_deref(), url),
        Command::RotateSecret {
            tenant,
            config,
            url,
        } => rotate_secret(&tenant, config.as_deref(), url),
        Command::Consumer { command } => consumer(command),
        Command::SetIngest {
            tenant,
            all: _,
            mode,
            engine,
        } => set_ingest(tenant.as_deref(), &mode, &engine),
        Command::Manifest {
            command: ManifestCommand::Check { path },
        } => manifest_check(&path),
        Command::Manifest {
            command:
                ManifestCommand::RequestUpdate {
                    tenant,
                    path,
                    config,
                    url,
                },
        } => request_update(&tenant, &path, config.as_deref(), url),
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    // Validate everything before any port is bound; one line naming the key on failure.
    let cfg = match config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.log);
    let result = actix_web::rt::System::new().block_on(async move {
        let running = engine::start(cfg).await?;
        engine::termination_signal().await;
        running.shutdown().await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "engine failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn activate(
    jwt_file: &std::path::Path,
    config: Option<&std::path::Path>,
    url: Option<String>,
) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jwt = match std::fs::read_to_string(jwt_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", jwt_file.display());
            return ExitCode::from(2);
        }
    };
    let body = serde_json::json!({ "jwt": jwt }).to_string();
    match admin_post(&cfg, url, "/admin/activations", body) {
        Ok((status, body)) if status.is_success() => {
            println!(
                "activation started: tenant {} ({}), state {}",
                body["tenant_id"].as_str().unwrap_or("?"),
                body["org_name"].as_str().unwrap_or("?"),
                body["provisioning_state"].as_str().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        other => refused("activation", other),
    }
}

/// POSTs a JSON `body` to a running engine's admin API (bearer `server.admin_token`); the
/// engine is at `url`, else on its admin listener (`server.admin_bind`, else `server.bind`).
fn admin_post(
    cfg: &config::Config,
    url: Option<String>,
    path: &str,
    body: String,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    admin_request(cfg, url, reqwest::Method::POST, path, body)
}

/// One call to a running engine's admin API (see [`admin_post`]).
fn admin_request(
    cfg: &config::Config,
    url: Option<String>,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let base = url.unwrap_or_else(|| {
        let admin = &cfg.server.admin_bind;
        if !admin.is_empty() {
            format!("http://{admin}")
        } else if !cfg.server.tls_cert.is_empty() {
            format!("https://{}", cfg.server.bind)
        } else {
            format!("http://{}", cfg.server.bind)
        }
    });
    let target = format!("{}{path}", base.trim_end_matches('/'));
    let token = cfg.server.admin_token.clone();
    actix_web::rt::System::new().block_on(async move {
        let resp = reqwest::Client::new()
            .request(method, target)
            .bearer_auth(token.expose())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        Ok((status, body))
    })
}

/// Reports a refused or failed admin call with the engine's description and trackingId.
fn refused(
    what: &str,
    result: anyhow::Result<(reqwest::StatusCode, serde_json::Value)>,
) -> ExitCode {
    match result {
        Ok((status, body)) => eprintln!(
            "{what} refused ({status}): {} (trackingId {})",
            body["description"].as_str().unwrap_or("no description"),
            body["trackingId"].as_str().unwrap_or("-")
        ),
        Err(e) => eprintln!("error: {e:#}"),
    }
    ExitCode::FAILURE
}

fn invite(
    customer_id: &str,
    name: &str,
    config: Option<&std::path::Path>,
    url: Option<String>,
) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({ "customer_id": customer_id, "name": name }).to_string();
    match admin_post(&cfg, url, "/admin/invitations", body) {
        Ok((status, b)) if status.is_success() => {
            println!(
                "invitation for {name} ({customer_id}), valid until {}",
                b["expires_at"].as_str().unwrap_or("?")
            );
            println!("code: {}", b["code"].as_str().unwrap_or("?"));
            println!("link: {}", b["link"].as_str().unwrap_or("?"));
            println!("(shown once: send the link to the customer's Control Hub admin)");
            ExitCode::SUCCESS
        }
        other => refused("invitation", other),
    }
}

/// The configuration of a command, or exit code 2 with the reason on stderr.
fn load(config: Option<&std::path::Path>) -> Result<config::Config, ExitCode> {
    config::load(config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn support(tracking_id: &str, config: Option<&std::path::Path>, url: Option<String>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match admin_request(
        &cfg,
        url,
        reqwest::Method::GET,
        &format!("/admin/errors/{tracking_id}"),
        String::new(),
    ) {
        Ok((status, e)) if status.is_success() => {
            let field = |k: &str| match &e[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                v => v.to_string(),
            };
            println!("trackingId  {}", field("trackingId"));
            println!("time        {}", field("time"));
            println!("endpoint    {}", field("endpoint"));
            println!("status      {}", field("status"));
            println!("tenant      {}", field("tenant"));
            println!("reason      {}", field("reason"));
            println!("description {}", field("description"));
            ExitCode::SUCCESS
        }
        other => refused("lookup", other),
    }
}

fn rotate_secret(tenant: &str, config: Option<&std::path::Path>, url: Option<String>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = format!("/admin/tenants/{tenant}/webhook-secret/rotate");
    match admin_post(&cfg, url, &path, String::new()) {
        Ok((status, body)) if status.is_success() => {
            match body["previous_valid_until"].as_str() {
                Some(until) => println!(
                    "webhook secret of tenant {tenant} rotated ({}); the previous one is accepted until {until}",
                    body["scheme"].as_str().unwrap_or("?")
                ),
                None => println!("webhook secret of tenant {tenant} rotated"),
            }
            ExitCode::SUCCESS
        }
        other => refused("rotation", other),
    }
}

/// `set-ingest`: one tenant (`--tenant`), or every completed tenant not on `mode` (`--all`),
/// one PATCH each, a line per tenant.
fn set_ingest(tenant: Option<&str>, mode: &str, engine: &EngineArgs) -> ExitCode {
    let cfg = match load(engine.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({ "ingest": mode }).to_string();
    let patch = |id: &str| {
        admin_request(
            &cfg,
            engine.url.clone(),
            reqwest::Method::PATCH,
            &format!("/admin/tenants/{id}"),
            body.clone(),
        )
    };
    let ids: Vec<String> = match tenant {
        Some(id) => vec![id.to_string()],
        None => {
            let listed = admin_request(
                &cfg,
                engine.url.clone(),
                reqwest::Method::GET,
                "/admin/tenants",
                String::new(),
            );
            let tenants = match listed {
                Ok((status, serde_json::Value::Array(t))) if status.is_success() => t,
                other => return refused("listing the tenants", other),
            };
            let total = tenants.len();
            let ids: Vec<String> = tenants
                .iter()
                .filter(|t| {
                    t["provisioning_state"] == "completed"
                        && t["ingest"] != mode
                        && t["transport_switch"]["to"] != mode
                })
                .filter_map(|t| t["tenant_id"].as_str().map(str::to_string))
                .collect();
            println!(
                "{} of {total} tenants to move to {mode} (the others read it already, are moving there, or are not active)",
                ids.len()
            );
            ids
        }
    };
    let mut failed = 0;
    for (k, id) in ids.iter().enumerate() {
        let progress = if ids.len() > 1 {
            format!("[{}/{}] ", k + 1, ids.len())
        } else {
            String::new()
        };
        match patch(id) {
            Ok((status, t)) if status.is_success() => {
                let sw = &t["transport_switch"];
                if sw.is_null() {
                    println!(
                        "{progress}tenant {id} reads {}",
                        t["ingest"].as_str().unwrap_or("?")
                    );
                } else {
                    println!(
                        "{progress}tenant {id}: switching {} -> {} ({}; the old transport is removed after {})",
                        sw["from"].as_str().unwrap_or("?"),
                        sw["to"].as_str().unwrap_or("?"),
                        sw["phase"].as_str().unwrap_or("?"),
                        sw["overlap_until"].as_str().unwrap_or("the overlap"),
                    );
                }
            }
            other => {
                failed += 1;
                let _ = refused(&format!("{progress}tenant {id}: switch"), other);
            }
        }
    }
    if ids.len() > 1 {
        println!("{} switching, {failed} refused", ids.len() - failed);
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn consumer(command: ConsumerCommand) -> ExitCode {
    let engine = match &command {
        ConsumerCommand::Grant { engine, .. }
        | ConsumerCommand::List { engine, .. }
        | ConsumerCommand::Revoke { engine, .. } => engine,
    };
    let cfg = match load(engine.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let url = engine.url.clone();
    match &command {
        ConsumerCommand::Grant {
            tenant,
            name,
            commands,
            ..
        } => {
            let body = serde_json::json!({ "name": name, "commands": commands }).to_string();
            let path = format!("/admin/tenants/{tenant}/consumers");
            match admin_post(&cfg, url, &path, body) {
                Ok((status, g)) if status.is_success() => {
                    println!("consumer {name} of tenant {tenant} granted");
                    println!("user:     {}", g["user"].as_str().unwrap_or("?"));
                    println!("password: {}", g["password"].as_str().unwrap_or("?"));
                    println!(
                        "(shown once: the engine keeps no copy; revoke and grant again if it is lost)"
                    );
                    if let Some(keys) = g["keys"].as_object() {
                        for (kind, key) in keys {
                            println!("{kind:<16}{}", key.as_str().unwrap_or("?"));
                        }
                    }
                    println!(
                        "set on {} Redis node(s); trackingId {}",
                        g["nodes"].as_array().map_or(0, Vec::len),
                        g["trackingId"].as_str().unwrap_or("-")
                    );
                    ExitCode::SUCCESS
                }
                other => refused("grant", other),
            }
        }
        ConsumerCommand::List { tenant, .. } => {
            let path = format!("/admin/tenants/{tenant}/consumers");
            match admin_request(&cfg, url, reqwest::Method::GET, &path, String::new()) {
                Ok((status, list)) if status.is_success() => {
                    let list = list.as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        println!("tenant {tenant} has no consumers");
                    }
                    for c in list {
                        println!(
                            "{:<24} {:<60} commands={} since {}",
                            c["name"].as_str().unwrap_or("?"),
                            c["user"].as_str().unwrap_or("?"),
                            c["commands"],
                            c["created_at"].as_str().unwrap_or("?")
                        );
                    }
                    ExitCode::SUCCESS
                }
                other => refused("listing", other),
            }
        }
        ConsumerCommand::Revoke { tenant, name, .. } => {
            let path = format!("/admin/tenants/{tenant}/consumers/{name}");
            match admin_request(&cfg, url, reqwest::Method::DELETE, &path, String::new()) {
                Ok((status, _)) if status.is_success() => {
                    println!("consumer {name} of tenant {tenant} revoked: its Redis user is gone");
                    ExitCode::SUCCESS
                }
                other => refused("revocation", other),
            }
        }
    }
}

fn request_update(
    tenant: &str,
    path: &std::path::Path,
    config: Option<&std::path::Path>,
    url: Option<String>,
) -> ExitCode {
    if manifest_check(path) != ExitCode::SUCCESS {
        return ExitCode::from(1);
    }
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match admin_post(
        &cfg,
        url,
        &format!("/admin/tenants/{tenant}/manifest-update"),
        text,
    ) {
        Ok((status, _)) if status.is_success() => {
            println!("update request sent: the customer's admin can now approve the new manifest");
            ExitCode::SUCCESS
        }
        other => refused("update request", other),
    }
}

fn manifest_check(path: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let problems = actors::protocol::manifest::check_str(&text);
    if problems.is_empty() {
        println!("{}: manifest OK", path.display());
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("{}: {p}", path.display());
        }
        eprintln!("{} problem(s) found", problems.len());
        ExitCode::from(1)
    }
}
