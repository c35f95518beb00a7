//! Pieces the benchmark tools share: the sibling binaries, an engine process, `/proc` CPU.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use xapi_stream::devkit::redis_server::free_port;

/// A binary built next to this one (`target/release/<name>`).
pub fn exe(name: &str) -> std::path::PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name(name)
}

/// The value after `name` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::args().skip_while(|a| a != name).nth(1) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}: {v:?} is not a valid value");
            std::process::exit(2)
        }),
    }
}

/// Refuses what the command line does not know (exit 2, naming it, with `usage`); `--help`
/// prints `usage`. `valued` are the options followed by a value, `flags` those without.
pub fn check_args(valued: &[&str], flags: &[&str], usage: &str) {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--help" || a == "-h" {
            println!("{usage}");
            std::process::exit(0);
        }
        if flags.contains(&a.as_str()) {
            continue;
        }
        if valued.contains(&a.as_str()) {
            if args.next().is_none() {
                eprintln!("{a} needs a value\n{usage}");
                std::process::exit(2);
            }
            continue;
        }
        eprintln!("unknown argument {a:?}\n{usage}");
        std::process::exit(2);
    }
}

/// Spawns an engine process with `env` on its own port; returns it and its base URL once ready.
pub async fn spawn_engine(
    env: &[(String, String)],
    replica: &str,
) -> anyhow::Result<(std::process::Child, String)> {
    let port = free_port()?;
    // Engine settings to try, e.g. XAPI_BENCH_ENGINE="INGEST__WRITERS=2 SERVER__WORKERS=1".
    let tried: Vec<(String, String)> = std::env::var("XAPI_BENCH_ENGINE")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("XAPI_STREAM__{k}"), v.to_string()))
        .collect();
    for (k, v) in &tried {
        println!("engine setting {k}={v}");
    }
    let child = std::process::Command::new(exe("xapi-stream"))
        .arg("serve")
        .envs(env.iter().cloned())
        // As deployed: one HTTP worker per core, errors only in the log.
        .env("XAPI_STREAM__SERVER__WORKERS", "0")
        .env("XAPI_STREAM__LOG__LEVEL", "error")
        .envs(tried)
        .env("XAPI_STREAM__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "XAPI_STREAM__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("XAPI_STREAM__SCALING__REPLICA_ID", replica)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/readyz"), Duration::from_secs(30)).await?;
    Ok((child, base))
}

/// Polls `url` until it answers 2xx.
pub async fn wait_http(url: &str, limit: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    while !http
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(start.elapsed() < limit, "{url} not up within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; after the name, indexes 11 and 12.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(total * 1_000_000 / hz)
}

/// The value of a sample in a Prometheus text exposition.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The `p` quantile of sorted figures.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The median of some figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    pct(&v, 0.5)
}

/// A signed request: (url, body, signature).
pub type Req = (Arc<str>, Vec<u8>, String);

/// An HTTP/1 client keeping up to `connections` connections.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Open loop at `rate`/s for `secs` over at most `connections` connections (like wrk2's
/// constant-throughput mode): request k is due at k / rate whatever the answers before it, and
/// its latency counts from then, so time spent waiting for a free connection is counted (no
/// coordinated omission). The connections are bounded because a client that opens one more
/// for every request it cannot place at once turns any pause of a few ms into a storm of
/// thousands of new connections that it and the server then spend their CPU on (measured
/// 2026-12-04: up to 18,190 connections and p99 of up to seconds from such a client, in 6 of 10
/// runs; benches/README.md).
pub async fn open_loop(reqs: Arc<Vec<Req>>, rate: f64, secs: f64, connections: usize) -> OpenLoop {
    let http = client(connections);
    let free = Arc::new(tokio::sync::Semaphore::new(connections));
    let n = ((rate * secs) as usize).min(reqs.len());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (http, reqs, free) = (http.clone(), reqs.clone(), free.clone());
        tasks.push(tokio::spawn(async move {
            // The semaphore is fair: requests take the connections in the order they are due.
            let _connection = free.acquire_owned().await.expect("never closed");
            let ok = send(&http, &reqs[k]).await;
            (ok, at.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut trace = Vec::with_capacity(n);
    let mut errors = 0;
    for (k, t) in tasks.into_iter().enumerate() {
        let (ok, ms) = t.await.expect("task");
        trace.push((k as f64 / rate, ms));
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    OpenLoop {
        achieved: lat.len() as f64 / elapsed,
        sorted: lat,
        trace,
        errors,
    }
}

/// What an open loop measured.
pub struct OpenLoop {
    /// Requests answered 2xx per second.
    pub achieved: f64,
    /// The 2xx requests' latencies (ms, from the scheduled send time), sorted.
    pub sorted: Vec<f64>,
    /// Every request in send order: (scheduled send time in s from the start, latency in ms).
    pub trace: Vec<(f64, f64)>,
    /// Requests not answered 2xx.
    pub errors: usize,
}

/// The `top` windows of `width` seconds (of scheduled send time) with the largest latency:
/// (window start in s, requests in it, their maximum latency in ms, requests above `slow_ms`).
pub fn worst_windows(
    trace: &[(f64, f64)],
    width: f64,
    slow_ms: f64,
    top: usize,
) -> Vec<(f64, usize, f64, usize)> {
    let mut windows: std::collections::BTreeMap<u64, (usize, f64, usize)> = Default::default();
    for &(at, ms) in trace {
        let w = windows.entry((at / width) as u64).or_default();
        w.0 += 1;
        w.1 = w.1.max(ms);
        w.2 += usize::from(ms > slow_ms);
    }
    let mut v: Vec<_> = windows
        .into_iter()
        .map(|(i, (n, max, slow))| (i as f64 * width, n, max, slow))
        .collect();
    v.sort_by(|a, b| b.2.partial_cmp(&a.2).expect("finite"));
    v.truncate(top);
    v
}

/// The machine's CPU time (all cores, in clock ticks) from `/proc/stat`: (steal, idle, total).
pub fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal …
    (at(7), at(3) + at(4), f.iter().take(8).sum())
}

/// Sends one signed request; true when answered 2xx.
pub async fn send(http: &reqwest::Client, (url, body, sig): &Req) -> bool {
    http.post(&**url)
        .header("X-Spark-Signature", sig)
        .body(body.clone())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// TCP sockets whose local port is `port` (the server's side of its connections), from
/// `/proc/net/tcp` and `tcp6`: (established, closing — TIME_WAIT and the other states after
/// a close).
pub fn server_sockets(port: u16) -> (usize, usize) {
    let (mut open, mut closing) = (0, 0);
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport != Some(port) {
                continue;
            }
            match *state {
                "0A" => {} // listening
                "01" => open += 1,
                _ => closing += 1,
            }
        }
    }
    (open, closing)
}
