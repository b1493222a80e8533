//! The Prometheus exporter against a real Prometheus server (Debian's `prometheus` package,
//! installed by `scripts/setup.sh --test`): the server scrapes `/metrics` every second and its
//! query API must return the values set here, with the `job`, `rank` and `reason` labels.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clipfleet_dataloader::skip::{SkipCounts, SkipReason};
use clipfleet_trainer::metrics::{Metrics, StepObservation};

/// How long Prometheus may take to start and scrape a value.
const DEADLINE: Duration = Duration::from_secs(60);

/// The `prometheus` binary: `$CLIPFLEET_PROMETHEUS`, else the first on `PATH`.
fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CLIPFLEET_PROMETHEUS").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "CLIPFLEET_PROMETHEUS={} is not a file", path.display());
        return path;
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("prometheus")).find(|p| p.is_file()));
    found.flatten().unwrap_or_else(|| {
        panic!(
            "the `prometheus` server binary is not installed: run `scripts/setup.sh --test` (it installs \
             Debian's prometheus package), or set CLIPFLEET_PROMETHEUS=/path/to/prometheus"
        )
    })
}

/// A Prometheus server started for one test, stopped (and reaped) on drop.
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target` every second, storing into `dir`.
    fn start(target: SocketAddr, dir: &Path) -> PrometheusServer {
        // `honor_labels` keeps the exporter's own `job` label (Prometheus would otherwise rename
        // it `exported_job` and put the scrape job's name in `job`).
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: clipfleet-scrape\n    honor_labels: true\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_local_addr();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        PrometheusServer { child, addr, log }
    }

    /// The first sample of an instant query, as (labels, value), once it exists. Panics with
    /// the server's log after [`DEADLINE`], or if the server exits.
    fn wait_for(&mut self, query: &str, want_value: &str) -> serde_json::Map<String, serde_json::Value> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < DEADLINE {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if let Some(body) = http_get(self.addr, &format!("/api/v1/query?query={}", percent_encode(query))) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
                    if let Some(sample) = json["data"]["result"].as_array().and_then(|r| r.first()) {
                        if sample["value"][1] == want_value {
                            return sample["metric"].as_object().cloned().unwrap_or_default();
                        }
                    }
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "prometheus did not return {query} = {want_value} within {DEADLINE:?}; last answer: {last}\nlog:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_local_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// The body of `GET path` over HTTP/1.0, or `None` when the server is not answering (yet).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string()).filter(|_| head.contains(" 200 "))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn step(step: u64) -> StepObservation {
    StepObservation {
        step,
        steps: 1,
        samples: 256,
        seconds: 0.25,
        loss: 3.5,
        logit_scale: 14.285,
        learning_rate: 5e-4,
        grad_norm: Some(1.25),
    }
}

#[test]
fn the_exporter_serves_metrics_over_http() {
    let metrics = Metrics::new("http-test", 1).expect("metrics");
    metrics.observe_step(&step(5));
    let addr = metrics.serve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("serve");
    assert_ne!(addr.port(), 0, "port 0 gives the bound port");
    let body = http_get(addr, "/metrics").expect("GET /metrics answers 200");
    assert!(body.contains("clipfleet_step{job=\"http-test\",rank=\"1\"} 5"), "{body}");
    assert!(body.contains("# TYPE clipfleet_step_seconds histogram"), "{body}");
    assert!(http_get(addr, "/nope").is_none(), "other paths are not 200");
    // A second exporter on the same port is a clear error.
    let err = metrics.serve(addr).expect_err("port in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn a_real_prometheus_scrapes_step_skips_and_labels() {
    let metrics = Metrics::new("clipfleet-it", 3).expect("metrics");
    metrics.observe_step(&step(41));
    metrics.observe_step(&step(42));
    metrics.observe_data_wait(0.002);
    let counts = SkipCounts::default();
    for _ in 0..5 {
        counts.record(SkipReason::CorruptImage);
    }
    counts.record(SkipReason::MissingCaption);
    metrics.sync_skips(&counts);
    metrics.add_bytes_read(12_345);
    let target = metrics.serve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("serve");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = PrometheusServer::start(target, dir.path());
    let labels = server.wait_for("clipfleet_step", "42");
    assert_eq!(labels.get("job").and_then(|v| v.as_str()), Some("clipfleet-it"), "{labels:?}");
    assert_eq!(labels.get("rank").and_then(|v| v.as_str()), Some("3"), "{labels:?}");
    let labels = server.wait_for(r#"clipfleet_data_samples_skipped_total{reason="corrupt_image"}"#, "5");
    assert_eq!(labels.get("reason").and_then(|v| v.as_str()), Some("corrupt_image"));
    assert_eq!(labels.get("job").and_then(|v| v.as_str()), Some("clipfleet-it"));
    server.wait_for(r#"clipfleet_data_samples_skipped_total{reason="missing_caption",rank="3"}"#, "1");
    server.wait_for("clipfleet_samples_total", "512");
    server.wait_for("clipfleet_shard_bytes_read_total", "12345");

    // Later values reach Prometheus too: the exporter is live, not a snapshot.
    metrics.observe_step(&step(43));
    counts.record(SkipReason::CorruptImage);
    metrics.sync_skips(&counts);
    server.wait_for("clipfleet_step", "43");
    server.wait_for(r#"clipfleet_data_samples_skipped_total{reason="corrupt_image"}"#, "6");
}
