//! One engine process (the real binary) of a multi-replica test. Its log goes to a file that is
//! deleted when the test passes and kept — its path and last lines printed — when it fails, so
//! a red CI run leaves the evidence behind.
use std::process::{Child, Command, Stdio};

use xapi_stream::devkit::redis_server::free_port;

/// Lines of a failed test's replica log printed to the test output.
const TAIL_ON_FAILURE: usize = 60;

/// The engine binary the tests run: this build's, or `XAPI_STREAM_TEST_BIN` (to run these
/// black-box tests against another build, e.g. to see a new test fail on an older one).
pub fn engine_binary() -> String {
    std::env::var("XAPI_STREAM_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_xapi-stream").to_string())
}

/// One engine process.
pub struct Replica {
    pub id: String,
    pub base: String,
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Replica {
    /// Starts `xapi-stream serve` with `env` on a free port, named `id`.
    pub fn spawn(id: &str, env: &[(String, String)]) -> Replica {
        Self::spawn_on(id, env, free_port().unwrap())
    }

    /// The same on `port` (a restarted pod keeps its address: Webex's webhook target).
    pub fn spawn_on(id: &str, env: &[(String, String)], port: u16) -> Replica {
        let log = std::env::temp_dir().join(format!(
            "xapi-replica-{}-{id}-{port}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(engine_binary())
            .arg("serve")
            .envs(env.iter().cloned())
            .env("XAPI_STREAM__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env(
                "XAPI_STREAM__SERVER__PUBLIC_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env("XAPI_STREAM__SCALING__REPLICA_ID", id)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Replica {
            id: id.to_string(),
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap()
    }

    /// The last `n` lines of its log.
    pub fn log_lines(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The last lines of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        self.log_lines(15)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM (the ordered drain); returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- replica {} log kept at {} (last {TAIL_ON_FAILURE} lines) ---\n{}\n---",
                self.id,
                self.log.display(),
                self.log_lines(TAIL_ON_FAILURE)
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
