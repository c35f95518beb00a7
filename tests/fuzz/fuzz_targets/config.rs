//! The configuration loader, `xapi_stream::config::load_from`, on explicit inputs (it never
//! reads the process environment): the fuzz input is the operator's TOML file, optionally
//! followed by a NUL byte and environment overrides, one `NAME=value` a line. A NAME without
//! the `XAPI_STREAM__` prefix gets it (so `REDIS__URL=x` is `XAPI_STREAM__REDIS__URL=x`); a
//! line starting with `!` is passed as it is (unprefixed names must be ignored).
//!
//! Two things are held fixed, and said so in docs/fuzzing.md:
//! - `security.encryption_key` is set to a valid key through the environment unless the input
//!   names `encryption_key` itself, so that most inputs get past that required key;
//! - `server.tls_cert`/`tls_key` stay empty: with a certificate path the loader reads that
//!   file, and a fuzzer choosing paths on this machine (`/dev/zero`, ...) tests the machine,
//!   not the loader. Overrides naming `tls` are dropped and empty ones are added.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xapi_stream::config::{ENV_PREFIX, LoadError, load_from};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fuzz_target!(|data: &[u8]| {
    let (file, env_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // A file that is not UTF-8 cannot be read by `load` (read_to_string); skip it.
    let Ok(file) = std::str::from_utf8(file) else {
        return;
    };
    let env_text = env_part.map(String::from_utf8_lossy).unwrap_or_default();

    let mut env: Vec<(String, String)> = Vec::new();
    for line in env_text.lines() {
        let (verbatim, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        if name.to_ascii_lowercase().contains("tls") {
            continue;
        }
        let name = if verbatim || name.starts_with(ENV_PREFIX) {
            name.to_string()
        } else {
            format!("{ENV_PREFIX}{name}")
        };
        env.push((name, value.to_string()));
    }
    let names_key = |s: &str| s.to_ascii_lowercase().contains("encryption_key");
    if !names_key(file) && !names_key(&env_text) {
        env.push((format!("{ENV_PREFIX}SECURITY__ENCRYPTION_KEY"), KEY.into()));
    }
    if file.to_ascii_lowercase().contains("tls") {
        env.push((format!("{ENV_PREFIX}SERVER__TLS_CERT"), String::new()));
        env.push((format!("{ENV_PREFIX}SERVER__TLS_KEY"), String::new()));
    }

    match load_from(Some(file), "fuzz.toml", env) {
        Ok(config) => {
            assert!(config.server.tls_cert.is_empty());
            let _ = format!("{config:?}");
            let _ = config.public_base();
        }
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("config error: "), "{line}");
            if let LoadError::Read { .. } = e {
                panic!("load_from read a file: {line}");
            }
        }
    }
});
