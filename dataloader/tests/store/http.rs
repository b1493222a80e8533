//! A minimal HTTP/1.1 file server on loopback for the `http://` store tests: `HEAD` and `GET`
//! of the files in one folder, with single byte ranges, suffix ranges included (`206 Partial Content`), an ETag and a
//! Last-Modified, one request per connection, 404 for anything else.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;

/// A requested byte range: `a-[b]` or the suffix `-n`.
enum Bound {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// A running server; its threads end with the test process.
#[derive(Debug)]
pub(crate) struct FileServer {
    /// The port it listens on.
    pub(crate) port: u16,
}

impl FileServer {
    /// The URL of `name` in the served folder.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// Serves the files of `root` on a free port.
pub(crate) fn serve(root: &Path) -> FileServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind http server");
    let port = listener.local_addr().expect("addr").port();
    let root = root.to_path_buf();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let root = root.clone();
            thread::spawn(move || {
                let _ = answer(stream, &root);
            });
        }
    });
    FileServer { port }
}

fn answer(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range: bytes=") {
            let (a, b) = value.trim().split_once('-').unwrap_or(("0", ""));
            range = Some(match a {
                "" => Bound::Suffix(b.parse().unwrap_or(0)),
                _ => Bound::From(a.parse().unwrap_or(0), b.parse().ok()),
            });
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").trim_start_matches('/');
    let file = root.join(path);
    let Ok(data) = (if path.contains("..") { Err(std::io::ErrorKind::NotFound.into()) } else { std::fs::read(&file) })
    else {
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let len = data.len() as u64;
    let common = format!(
        "ETag: \"v1-{len}\"\r\nLast-Modified: Fri, 27 Nov 2026 00:00:00 GMT\r\nAccept-Ranges: bytes\r\nConnection: close\r\n"
    );
    let range = range.map(|r| match r {
        Bound::Suffix(n) => (len.saturating_sub(n), None),
        Bound::From(a, b) => (a, b),
    });
    let (status, body, extra) = match range {
        Some((start, end)) if start < len => {
            let end = end.unwrap_or(len - 1).min(len - 1);
            let slice = &data[start as usize..=end as usize];
            ("206 Partial Content", slice, format!("Content-Range: bytes {start}-{end}/{len}\r\n"))
        }
        Some(_) => {
            let head = format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n{common}Content-Length: 0\r\n\r\n");
            return stream.write_all(head.as_bytes());
        }
        None => ("200 OK", data.as_slice(), String::new()),
    };
    let head = format!("HTTP/1.1 {status}\r\n{common}{extra}Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body)?;
    }
    stream.flush()
}
