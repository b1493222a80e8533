//! A fault-injecting HTTP proxy on loopback for an S3 server. Request by request (seeded), it
//! answers `503 Slow Down` without asking the server, or forwards the request but resets the
//! connection in the middle of the response, or forwards the response slowly; the rest pass
//! untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the proxy did, so far.
#[derive(Debug, Default)]
pub(crate) struct FaultCounts {
    /// Connections accepted.
    pub(crate) connections: AtomicU64,
    /// Requests received.
    pub(crate) requests: AtomicU64,
    /// Connections answered with a 503.
    pub(crate) errors: AtomicU64,
    /// Connections reset in the middle of a response.
    pub(crate) resets: AtomicU64,
    /// Connections forwarded slowly.
    pub(crate) slow: AtomicU64,
}

/// A running proxy; its threads end with the test process.
#[derive(Debug)]
pub(crate) struct FaultyProxy {
    /// The port to connect to instead of the upstream's.
    pub(crate) port: u16,
    /// What it did.
    pub(crate) counts: Arc<FaultCounts>,
}

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`. Of every 100 requests (by a hash of
/// `seed` and the request number), `errors_pct` get a 503, `resets_pct` are cut within the
/// first half of the response body, `slow_pct` are forwarded in 4 KiB pieces 2 ms apart.
pub(crate) fn start(upstream: u16, seed: u64, errors_pct: u64, resets_pct: u64, slow_pct: u64) -> FaultyProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let counts = Arc::new(FaultCounts::default());
    let c = Arc::clone(&counts);
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            thread::spawn(move || {
                serve_requests(client, upstream, || {
                    let n = c.requests.fetch_add(1, Ordering::SeqCst);
                    let roll = mix(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let pct = roll % 100;
                    if pct < errors_pct {
                        c.errors.fetch_add(1, Ordering::SeqCst);
                        Fault::Error
                    } else if pct < errors_pct + resets_pct {
                        c.resets.fetch_add(1, Ordering::SeqCst);
                        Fault::Reset(512 + (roll >> 8) % 8192)
                    } else if pct < errors_pct + resets_pct + slow_pct {
                        c.slow.fetch_add(1, Ordering::SeqCst);
                        Fault::Slow
                    } else {
                        Fault::None
                    }
                });
            });
        }
    });
    FaultyProxy { port, counts }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Error,
    Reset(u64),
    Slow,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The `Content-Length` of an HTTP message head (0 without one).
fn content_length(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Serves one client connection request by request (with a `Content-Length` body or none, as
/// object_store sends them), with one upstream connection; each request draws its own fault.
/// A request answered with a 503 never reaches the server; a reset cuts the response.
fn serve_requests(mut client: TcpStream, upstream: u16, mut draw: impl FnMut() -> Fault) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    while let Some(mut request) = read_head(&mut client) {
        let body = content_length(&request);
        if body > 0 {
            let start = request.len();
            request.resize(start + usize::try_from(body).unwrap_or(usize::MAX), 0);
            if client.read_exact(&mut request[start..]).is_err() {
                break;
            }
        }
        let fault = draw();
        if let Fault::Error = fault {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if client.write_all(response.as_bytes()).is_err() {
                break;
            }
            continue;
        }
        if server.write_all(&request).is_err() {
            break;
        }
        let Some(head) = read_head(&mut server) else { break };
        let head_only = String::from_utf8_lossy(&request).starts_with("HEAD ");
        let length: u64 = if head_only { 0 } else { content_length(&head) };
        let (limit, piece, pause) = match fault {
            Fault::Reset(after) => (head.len() as u64 + after.min(length / 2), 16 << 10, Duration::ZERO),
            Fault::Slow => (u64::MAX, 4 << 10, Duration::from_millis(2)),
            _ => (u64::MAX, 64 << 10, Duration::ZERO),
        };
        let mut sent = head.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
        if client.write_all(&head[..sent]).is_err() {
            break;
        }
        let mut left = length;
        let mut buf = vec![0u8; piece];
        while left > 0 && (sent as u64) < limit {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let Ok(n @ 1..) = server.read(&mut buf[..want]) else { return };
            let take = n.min(usize::try_from(limit - sent as u64).unwrap_or(usize::MAX));
            if client.write_all(&buf[..take]).is_err() {
                return;
            }
            sent += take;
            left -= n as u64;
            if !pause.is_zero() {
                thread::sleep(pause);
            }
        }
        if let Fault::Reset(_) = fault {
            // Cut mid-response: the client sees its connection drop.
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Reads an HTTP message head (through the blank line); `None` at the end of the stream.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 1 << 20 {
            return None;
        }
    }
    Some(head)
}
