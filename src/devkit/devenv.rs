//! A local environment for the demo, the tests and the benchmarks: the configuration that points
//! an engine at a private Redis and at the Webex simulator. One place, so all three agree.
use base64::Engine as _;

use crate::config::{self, Config, LoadError};
use crate::devkit::sim::Sim;

/// Admin bearer token used by the local environment.
pub const ADMIN_TOKEN: &str = "dev-admin-token";

/// The environment overrides (`XAPI_STREAM__…`) for an engine on a free port (bind and
/// public URL), writing under
/// `prefix` in the Redis at `redis_url`, trusting `sim`'s JWKS and OAuth client.
pub fn engine_env(sim: &Sim, redis_url: &str, prefix: &str) -> Vec<(String, String)> {
    let cfg = sim.config();
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    // A known port, so public_url (where the simulator sends webhooks) is right from the start.
    let port = crate::devkit::redis_server::free_port().expect("a free loopback port");
    let mut env: Vec<(String, String)> = [
        ("SERVER__BIND", format!("127.0.0.1:{port}")),
        ("SERVER__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("SERVER__ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("SERVER__SHUTDOWN_GRACE_SECS", "5".to_string()),
        ("SERVER__WORKERS", "2".to_string()),
        ("REDIS__URL", redis_url.to_string()),
        ("REDIS__KEY_PREFIX", prefix.to_string()),
        ("SECURITY__ENCRYPTION_KEY", key),
        ("WEBEX__ALLOW_HTTP", "true".to_string()),
        ("INTEGRATION__APP_ID", cfg.app_id.clone()),
        ("INTEGRATION__CLIENT_ID", cfg.client_id.clone()),
        ("INTEGRATION__CLIENT_SECRET", cfg.client_secret.clone()),
        ("LOG__LEVEL", "warn".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{}{k}", config::ENV_PREFIX), v))
    .collect();
    for (region, url) in sim.jwks_table() {
        env.push((format!("{}WEBEX__JWKS__{region}", config::ENV_PREFIX), url));
    }
    env
}

/// [`engine_env`] plus `extra` overrides (later entries win), loaded and validated.
pub fn engine_config(
    sim: &Sim,
    redis_url: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Result<Config, LoadError> {
    let mut env = engine_env(sim, redis_url, prefix);
    for (k, v) in extra {
        let name = if k.starts_with(config::ENV_PREFIX) {
            k.to_string()
        } else {
            format!("{}{k}", config::ENV_PREFIX)
        };
        env.retain(|(n, _)| *n != name);
        env.push((name, v.to_string()));
    }
    config::load_from(None, "", env)
}
