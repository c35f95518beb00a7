//! Loads the configuration in layers — built-in defaults (`config/default.toml`), then the
//! operator's file, then `XAPI_STREAM__<SECTION>__<KEY>` environment variables — and validates
//! it once, before anything binds a port. Errors name the offending key in one line.
use std::path::Path;

pub use actors::config::*;
use toml::{Table, Value};

/// The defaults shipped with the binary; the operator's file only needs what differs.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides; `__` separates the path segments.
pub const ENV_PREFIX: &str = "XAPI_STREAM__";

/// Why a configuration could not be loaded. `Display` is the one line printed to the operator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config error: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config error: {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config error: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError::Invalid {
            key: e.key,
            message: e.message,
        }
    }
}

/// Loads `path` (if given) over the defaults, applies environment overrides from the process
/// environment, and validates.
pub fn load(path: Option<&Path>) -> Result<Config, LoadError> {
    let text = match path {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| LoadError::Read {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let name = path.map(|p| p.display().to_string()).unwrap_or_default();
    load_from(text.as_deref(), &name, std::env::vars())
}

/// Layering on explicit inputs, so tests need not touch the process environment.
pub fn load_from(
    file_text: Option<&str>,
    file_name: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, LoadError> {
    let mut tree: Table = DEFAULT_TOML
        .parse()
        .expect("config/default.toml is valid TOML");
    if let Some(text) = file_text {
        let user: Table = text
            .parse()
            .map_err(|e: toml::de::Error| LoadError::Syntax {
                path: file_name.to_string(),
                message: e.message().to_string(),
            })?;
        merge(&mut tree, user);
    }
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    for (name, raw) in overrides {
        apply_env(&mut tree, &name, raw)?;
    }
    let mut config: Config = serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        let key = e.path().to_string();
        LoadError::Invalid {
            key: if key == "." { "<root>".into() } else { key },
            message: e.into_inner().message().to_string(),
        }
    })?;
    config.derive_public_url();
    config.validate()?;
    if !config.server.tls_cert.is_empty() {
        // Read now, so that a missing or broken file is a one-line config error like any other.
        let (cert, key) = (&config.server.tls_cert, &config.server.tls_key);
        crate::http::tls::CertStore::load(cert, key).map_err(|e| {
            let message = e.to_string();
            LoadError::Invalid {
                key: if message.starts_with(key.as_str()) {
                    "server.tls_key".into()
                } else {
                    "server.tls_cert".into()
                },
                message,
            }
        })?;
    }
    Ok(config)
}

/// Deep-merges `over` into `base`: tables merge key by key, everything else replaces.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies one `XAPI_STREAM__A__B=value` override. The value takes the type of the default it
/// replaces (so `XAPI_STREAM__SERVER__MAX_BODY_BYTES=1000` is a number and
/// `XAPI_STREAM__SERVER__ADMIN_TOKEN=1234` stays a string); unknown keys are kept as strings and
/// rejected by the unknown-field check like an unknown key in the file.
fn apply_env(tree: &mut Table, name: &str, raw: String) -> Result<(), LoadError> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let key = path.join(".");
    if path.iter().any(String::is_empty) {
        return Err(LoadError::Invalid {
            key: name.to_string(),
            message: "malformed environment override name".into(),
        });
    }
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut table = tree;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(LoadError::Invalid {
                    key: key.clone(),
                    message: format!("{p} is not a section"),
                });
            }
        };
    }
    let bad = |what: &str| LoadError::Invalid {
        key: key.clone(),
        message: format!("environment value {raw:?} is not {what}"),
    };
    let value = match table.get(last) {
        Some(Value::Integer(_)) => {
            Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        Some(Value::Float(_)) => Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
        Some(Value::Boolean(_)) => Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("a boolean")),
        }),
        // A list of strings: comma-separated ("" = empty).
        Some(Value::Array(_)) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(raw.clone()),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_key() -> Vec<(String, String)> {
        env(&[("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", KEY)])
    }

    #[test]
    fn default_toml_loads_and_validates_with_a_key() {
        let c = load_from(None, "", with_key()).expect("defaults are valid");
        assert_eq!(c.redis.key_prefix, "xapi");
        assert_eq!(c.server.max_body_bytes, 262_144);
        assert_eq!(c.webex.jwks.len(), 5);
        assert_eq!(c.integration.ingest, IngestMode::Webhook);
    }

    #[test]
    fn public_url_is_derived_from_bind_when_unset_and_must_be_https_when_set() {
        let mut vars = with_key();
        vars.extend(env(&[("XAPI_STREAM__SERVER__BIND", "0.0.0.0:9000")]));
        let c = load_from(None, "", vars.clone()).unwrap();
        assert_eq!(c.server.public_url, "http://127.0.0.1:9000");
        assert!(c.server.public_url_derived);
        let https = [(
            "XAPI_STREAM__SERVER__PUBLIC_URL",
            "https://xapi.example.com/",
        )];
        let mut v = vars.clone();
        v.extend(env(&https));
        let c = load_from(None, "", v).unwrap();
        assert_eq!(c.public_base(), "https://xapi.example.com");
        assert!(!c.server.public_url_derived);
        let http = [("XAPI_STREAM__SERVER__PUBLIC_URL", "http://xapi.example.com")];
        let mut v = vars.clone();
        v.extend(env(&http));
        let e = load_from(None, "", v.clone()).unwrap_err().to_string();
        assert!(
            e.starts_with("config error: server.public_url: must be https"),
            "{e}"
        );
        v.extend(env(&[("XAPI_STREAM__WEBEX__ALLOW_HTTP", "true")]));
        assert!(load_from(None, "", v).is_ok(), "http beside a simulator");
    }

    #[test]
    fn stream_settings_that_would_write_nowhere_or_lose_exactly_once_are_refused() {
        let refused = |pairs: &[(&str, &str)]| {
            let mut v = with_key();
            v.extend(env(pairs));
            load_from(None, "", v).unwrap_err().to_string()
        };
        let e = refused(&[("XAPI_STREAM__STREAMS__PER_ORG", "false")]);
        assert!(e.starts_with("config error: streams.per_org:"), "{e}");
        let e = refused(&[("XAPI_STREAM__STREAMS__SHARDS", "0")]);
        assert!(e.starts_with("config error: streams.shards:"), "{e}");
        let e = refused(&[("XAPI_STREAM__STREAMS__RETENTION_SECS", "5")]);
        assert!(
            e.starts_with("config error: streams.retention_secs:"),
            "{e}"
        );
        let e = refused(&[
            ("XAPI_STREAM__STREAMS__FIREHOSE", "true"),
            ("XAPI_STREAM__STREAMS__PER_ORG", "false"),
            ("XAPI_STREAM__REDIS__CLUSTER", "true"),
        ]);
        assert!(e.starts_with("config error: streams.per_org:"), "{e}");
        let mut v = with_key();
        v.extend(env(&[
            ("XAPI_STREAM__STREAMS__FIREHOSE", "true"),
            ("XAPI_STREAM__REDIS__CLUSTER", "true"),
        ]));
        load_from(None, "", v).expect("the firehose on a cluster (relayed)");
        let mut v = with_key();
        v.extend(env(&[
            ("XAPI_STREAM__STREAMS__FIREHOSE", "true"),
            ("XAPI_STREAM__STREAMS__PER_ORG", "false"),
            ("XAPI_STREAM__STREAMS__RETENTION_SECS", "0"),
        ]));
        let c = load_from(None, "", v).expect("firehose only, no retention");
        assert_eq!(c.streams.shards, 16);
        assert!(c.streams.lag_groups.is_empty());
        let mut v = with_key();
        v.extend(env(&[(
            "XAPI_STREAM__STREAMS__LAG_GROUPS",
            " warehouse, audit ,",
        )]));
        let c = load_from(None, "", v).expect("a list from the environment");
        assert_eq!(c.streams.lag_groups, ["warehouse", "audit"]);
        let many = (0..21)
            .map(|i| format!("g{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let e = refused(&[("XAPI_STREAM__STREAMS__LAG_GROUPS", many.as_str())]);
        assert!(e.starts_with("config error: streams.lag_groups:"), "{e}");
        let e = refused(&[
            ("XAPI_STREAM__STREAMS__LAG_GROUPS", "warehouse"),
            ("XAPI_STREAM__STREAMS__FIREHOSE", "true"),
            ("XAPI_STREAM__STREAMS__PER_ORG", "false"),
        ]);
        assert!(e.starts_with("config error: streams.lag_groups:"), "{e}");
        let e = refused(&[(
            "XAPI_STREAM__SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8, ingress",
        )]);
        assert!(
            e.starts_with("config error: server.trusted_proxies:"),
            "{e}"
        );
        let mut v = with_key();
        v.extend(env(&[(
            "XAPI_STREAM__SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8, ::1",
        )]));
        let c = load_from(None, "", v).expect("addresses and ranges");
        assert_eq!(c.server.trusted_proxy_nets().len(), 2);
    }

    #[test]
    fn shipped_default_file_parses_as_the_operator_file() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
                .unwrap();
        load_from(Some(&text), "config/default.toml", with_key()).unwrap();
    }

    #[test]
    fn missing_encryption_key_names_the_key() {
        let e = load_from(None, "", vec![]).unwrap_err().to_string();
        assert!(
            e.starts_with("config error: security.encryption_key:"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn unknown_key_in_file_names_it() {
        let e = load_from(Some("[redis]\nurll = \"x\"\n"), "f.toml", with_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.urll") || e.contains("urll"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_section_in_file_is_an_error() {
        let e = load_from(Some("[bogus]\nx = 1\n"), "f.toml", with_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn env_overrides_take_the_type_of_the_default() {
        let mut e = with_key();
        e.extend(env(&[
            ("XAPI_STREAM__REDIS__URL", "redis://10.0.0.1:6380"),
            ("XAPI_STREAM__SERVER__MAX_BODY_BYTES", "4096"),
            ("XAPI_STREAM__SERVER__ADMIN_TOKEN", "1234"),
            ("XAPI_STREAM__WEBEX__ALLOW_HTTP", "true"),
            ("XAPI_STREAM__INTEGRATION__INGEST", "both"),
            ("UNRELATED", "x"),
        ]));
        let c = load_from(None, "", e).unwrap();
        assert_eq!(c.redis.url.expose(), "redis://10.0.0.1:6380");
        assert_eq!(c.server.max_body_bytes, 4096);
        assert_eq!(c.server.admin_token.expose(), "1234");
        assert!(c.webex.allow_http);
        assert_eq!(c.integration.ingest, IngestMode::Both);
    }

    #[test]
    fn env_unknown_key_and_bad_type_are_errors() {
        let mut e = with_key();
        e.push(("XAPI_STREAM__REDIS__NOPE".into(), "1".into()));
        let msg = load_from(None, "", e).unwrap_err().to_string();
        assert!(msg.contains("nope"), "{msg}");
        let mut e = with_key();
        e.push(("XAPI_STREAM__SERVER__MAX_BODY_BYTES".into(), "lots".into()));
        let msg = load_from(None, "", e).unwrap_err().to_string();
        assert!(msg.contains("server.max_body_bytes"), "{msg}");
    }

    #[test]
    fn cross_field_rules() {
        let cases = [
            ("[server]\nbind = \"nope\"\n", "server.bind"),
            ("[integration]\napp_id = \"x\"\n", "integration.app_id"),
            (
                "[integration]\ningest = \"carrier-pigeon\"\n",
                "integration.ingest",
            ),
            ("[redis]\nurl = \"http://x\"\n", "redis.url"),
            (
                "[webex]\ndefault_region = \"mars-1\"\n",
                "webex.default_region",
            ),
            (
                "[webex.jwks]\n\"x\" = \"http://127.0.0.1/jwks\"\n",
                "webex.jwks.x",
            ),
            (
                "[security]\nencryption_key = \"c2hvcnQ=\"\n",
                "security.encryption_key",
            ),
        ];
        for (text, key) in cases {
            let e = load_from(
                Some(text),
                "f.toml",
                if key.starts_with("security") {
                    vec![]
                } else {
                    with_key()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{text:?} → {e}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let mut e = with_key();
        e.push((
            "XAPI_STREAM__INTEGRATION__CLIENT_SECRET".into(),
            "very-secret-value".into(),
        ));
        let c = load_from(None, "", e).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("very-secret-value"));
        assert!(!dbg.contains(KEY));
    }
}
