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
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// Closed loop: `connections` workers send back to back for `secs`; returns (ok/s, errors).
/// Open loop at `rate`/s for `secs`: latency from the scheduled send time.
pub async fn open_loop(reqs: Arc<Vec<Req>>, rate: f64, secs: f64) -> (f64, Vec<f64>, usize) {
    let http = client(512);
    let n = ((rate * secs) as usize).min(reqs.len());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (http, reqs) = (http.clone(), reqs.clone());
        tasks.push(tokio::spawn(async move {
            let ok = send(&http, &reqs[k]).await;
            (ok, at.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        let (ok, ms) = t.await.expect("task");
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (lat.len() as f64 / elapsed, lat, errors)
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
