//! A TCP proxy on loopback that drops one connection after forwarding a set number of
//! response bytes: a real mid-stream connection loss, as the HTTP client sees it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// A running proxy; its threads end with the test process.
#[derive(Debug)]
pub(crate) struct DroppingProxy {
    /// The port to connect to instead of the upstream's.
    pub(crate) port: u16,
    /// Connections accepted so far.
    pub(crate) connections: Arc<AtomicU64>,
}

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`, cutting the `cut`-th connection
/// (1-based) after `cut_after` response bytes.
pub(crate) fn start(upstream: u16, cut: u64, cut_after: u64) -> DroppingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&connections);
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let limit = if n == cut { cut_after } else { u64::MAX };
            thread::spawn(move || forward(client, upstream, limit));
        }
    });
    DroppingProxy { port, connections }
}

fn forward(client: TcpStream, upstream: u16, limit: u64) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else { return };
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n @ 1..) = server_in.read(&mut buf) {
        let take = n.min(usize::try_from(limit - sent).unwrap_or(usize::MAX));
        if client_out.write_all(&buf[..take]).is_err() {
            break;
        }
        sent += take as u64;
        if sent >= limit {
            break;
        }
    }
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = server_in.shutdown(Shutdown::Both);
}
