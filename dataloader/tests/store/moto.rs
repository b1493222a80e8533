//! A `moto_server` (an S3-compatible server, from PyPI's `moto[server]`) on a free loopback
//! port, shared by the tests that run at the same time and killed when the last one ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use clipfleet_dataloader::store::ShardStore;
use object_store::{ObjectStoreExt, PutPayload};

/// The bucket the tests use (moto refuses invalid names such as `b`).
pub(crate) const BUCKET: &str = "shards";

/// A running `moto_server`, killed on drop.
#[derive(Debug)]
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// The port the server listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Builder settings that point the S3 store at this server, with dummy credentials.
    pub(crate) fn config(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".to_owned()),
            ("aws_access_key_id", "testing".to_owned()),
            ("aws_secret_access_key", "testing".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Uploads `data` to `s3://shards/<key>` with object_store.
    pub(crate) fn upload(&self, store: &ShardStore, key: &str, data: &[u8]) {
        let (s3, path) = store.resolve(&format!("s3://{BUCKET}/{key}")).expect("resolve");
        store.runtime().block_on(s3.put(&path, PutPayload::from(data.to_vec()))).expect("upload to moto");
    }
}

/// The shared server, started on first use.
pub(crate) fn server() -> Arc<Moto> {
    static SHARED: Mutex<Weak<Moto>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(running) = shared.upgrade() {
        return running;
    }
    let started = Arc::new(start());
    *shared = Arc::downgrade(&started);
    started
}

fn start() -> Moto {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: the S3 tests need moto[server]; run `scripts/setup.sh --test`",
        bin.display()
    );
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; run `scripts/setup.sh --test`", bin.display()));
    let mut moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!("moto_server exited with {status} before answering; run `scripts/setup.sh --test`");
        }
        if request(port, "GET / HTTP/1.1").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = request(port, &format!("PUT /{BUCKET} HTTP/1.1")).unwrap_or_default();
    assert!(status.starts_with("HTTP/1.1 200"), "creating bucket {BUCKET}: {status}");
    moto.port = port;
    moto
}

/// Sends one bodiless request and returns the status line, or `None` if nothing answers.
fn request(port: u16, line: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!("{line}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_owned).filter(|l| l.starts_with("HTTP/"))
}
