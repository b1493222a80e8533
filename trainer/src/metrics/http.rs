//! A minimal HTTP/1.1 responder for Prometheus scrapes: `GET /metrics` returns the text
//! exposition format, `GET /` a pointer to it, anything else 404 (or 405 for other methods).
//! One connection at a time, closed after each response; a client that sends nothing is
//! dropped after [`READ_TIMEOUT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::{Result, TrainError};

/// How long a connection may take to send its request head.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Request heads longer than this are refused (431).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The registry's metrics in the text exposition format.
pub(super) fn render(registry: &Registry) -> Result<String> {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .map_err(|e| TrainError::Metrics(format!("encoding the metrics: {e}")))?;
    String::from_utf8(buffer).map_err(|e| TrainError::Metrics(format!("encoding the metrics: {e}")))
}

/// Binds `addr` and answers scrapes from a detached thread named `metrics-http`.
pub(super) fn serve(registry: Registry, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| TrainError::Metrics(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| TrainError::Metrics(format!("listening on {addr}: {e}")))?;
    std::thread::Builder::new()
        .name("metrics-http".to_string())
        .spawn(move || {
            // A failed connection (or response) only affects that scrape; keep serving.
            for stream in listener.incoming().flatten() {
                let _ = respond(&registry, stream);
            }
        })
        .map_err(|e| TrainError::Metrics(format!("cannot start the metrics thread: {e}")))?;
    Ok(bound)
}

/// Reads one request head and writes one response.
fn respond(registry: &Registry, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let head = match read_head(&mut stream)? {
        Some(head) => head,
        None => return write(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"request too large\n"),
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => match render(registry) {
            Ok(body) => write(&mut stream, "200 OK", prometheus::TEXT_FORMAT, body.as_bytes()),
            Err(e) => write(&mut stream, "500 Internal Server Error", "text/plain", format!("{e}\n").as_bytes()),
        },
        ("GET", "/") => write(&mut stream, "200 OK", "text/plain", b"clipfleet metrics: GET /metrics\n"),
        ("GET", _) => write(&mut stream, "404 Not Found", "text/plain", b"not found; metrics are at /metrics\n"),
        _ => write(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET is served\n"),
    }
}

/// The request head (up to the blank line), or `None` when it exceeds [`MAX_HEAD_BYTES`].
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

fn write(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
