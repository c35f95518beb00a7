//! A private `redis-server` process on a free loopback port, for the demo, the tests and the
//! benchmarks. It can be killed, paused (SIGSTOP), resumed and restarted on the same port, which
//! is how the fault tests take Redis away from a running engine.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a started server to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server child process. Killed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Sentinel mode: these lines of `sentinel.conf` (which the sentinel rewrites as it learns).
    sentinel: Option<Vec<String>>,
}

/// Failure to start or control the process.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server not found on PATH (install it: apt-get install redis-server)")]
    NotInstalled,
    #[error("redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server on port {0} did not answer PING within {1:?}")]
    NoAnswer(u16, Duration),
    #[error("redis cluster: {0}")]
    Cluster(String),
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server with no persistence on a free port.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `["--cluster-enabled", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Result<Self, RedisServerError> {
        let dir = std::env::temp_dir().join(format!("xapi-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let mut s = Self {
                port: free_port()?,
                dir: dir.clone(),
                child: None,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                sentinel: None,
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Starts a Redis Sentinel (`redis-server sentinel.conf --sentinel`, the program Debian's
    /// `redis-sentinel` runs) on a free port with these `sentinel …` directives.
    pub fn start_sentinel(directives: &[String]) -> Result<Self, RedisServerError> {
        let dir = std::env::temp_dir().join(format!("xapi-sentinel-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..5 {
            let mut s = Self {
                port: free_port()?,
                dir: dir.clone(),
                child: None,
                extra_args: Vec::new(),
                sentinel: Some(directives.to_vec()),
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        if let Some(directives) = &self.sentinel {
            let conf = self.dir.join("sentinel.conf");
            // Written only the first time: on a restart the sentinel keeps what it learned.
            if !conf.exists() {
                let mut text = format!(
                    "port {}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n",
                    self.port,
                    self.dir.display()
                );
                for d in directives {
                    text.push_str(d);
                    text.push('\n');
                }
                std::fs::write(&conf, text)?;
            }
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = spawn_tied_to_process(cmd).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RedisServerError::NotInstalled,
                _ => RedisServerError::Io(e),
            })?;
            self.child = Some(child);
            return self.wait_ready();
        }
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied_to_process(cmd).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RedisServerError::NotInstalled,
            _ => RedisServerError::Io(e),
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return Err(RedisServerError::NoAnswer(self.port, START_TIMEOUT));
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RedisServerError::NoAnswer(self.port, START_TIMEOUT))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking client connection (for test assertions).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    /// SIGSTOP: the server stops answering but keeps its connections open (a hung Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL and reap; data is lost (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` from one long-lived thread with `PR_SET_PDEATHSIG`, so the child is killed when
/// this process dies, even without destructors running (a panicking test binary, a static
/// server shared by a test binary, a demo interrupted with SIGKILL). The signal is tied to the
/// spawning *thread*, hence the dedicated thread that lives as long as the process.
fn spawn_tied_to_process(cmd: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("redis-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    #[cfg(target_os = "linux")]
                    {
                        use std::os::unix::process::CommandExt;
                        // Its own process group: a Ctrl-C in the terminal reaches the process
                        // that owns it (the demo stops the engine first), not Redis too.
                        cmd.process_group(0);
                        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
                        unsafe {
                            cmd.pre_exec(|| {
                                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                                Ok(())
                            });
                        }
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread starts");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .expect("spawner lock")
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("redis spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("redis spawner thread is gone"))?
}

/// A raw RESP PING, so readiness does not depend on the client library's connection logic.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
