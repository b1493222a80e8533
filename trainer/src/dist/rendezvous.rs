//! A small TCP rendezvous for exchanging bytes before any collective library is up: rank 0
//! listens on `MASTER_ADDR:MASTER_PORT`, the other ranks connect (retrying with backoff until a
//! deadline), and rank 0 relays. It carries the NCCL unique id (128 bytes) and serves as a
//! barrier and a small all-gather of bytes.
//!
//! Wire format: every message is a little-endian `u64` length followed by that many bytes. A
//! client opens with `MAGIC`, its rank and the world size (three `u64`s).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use super::{DistError, WorldInfo};

const MAGIC: u64 = 0x636c_6970_666c_7431; // "clipflt1"
/// The largest message accepted, so that a stray client cannot make rank 0 allocate gigabytes.
const MAX_MESSAGE: u64 = 64 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long rank 0 waits for a new connection to identify itself.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Rank 0's listening socket, bound before the clients are accepted so that tests can learn
/// the port.
#[derive(Debug)]
pub struct RendezvousListener {
    listener: TcpListener,
    world_size: usize,
    addr: String,
}

impl RendezvousListener {
    /// Binds `0.0.0.0:port` (port 0 picks a free one) for a world of `world_size`.
    pub fn bind(port: u16, world_size: usize) -> Result<Self, DistError> {
        let addr = format!("0.0.0.0:{port}");
        let listener = TcpListener::bind(&addr).map_err(|e| DistError::Rendezvous {
            addr: addr.clone(),
            rank: 0,
            world_size,
            reason: format!("cannot listen: {e} (is MASTER_PORT in use?)"),
        })?;
        Ok(RendezvousListener { listener, world_size, addr })
    }

    /// The bound port.
    pub fn port(&self) -> Result<u16, DistError> {
        self.listener.local_addr().map(|a| a.port()).map_err(|e| self.error(format!("no local address: {e}")))
    }

    fn error(&self, reason: String) -> DistError {
        DistError::Rendezvous { addr: self.addr.clone(), rank: 0, world_size: self.world_size, reason }
    }

    /// Accepts ranks `1..world_size`, each once, until `timeout` has passed.
    pub fn accept(self, timeout: Duration) -> Result<Rendezvous, DistError> {
        let deadline = Instant::now() + timeout;
        let n = self.world_size;
        let mut peers: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        self.listener.set_nonblocking(true).map_err(|e| self.error(e.to_string()))?;
        let mut joined = 1;
        while joined < n {
            match self.listener.accept() {
                Ok((mut stream, from)) => {
                    stream.set_nonblocking(false).map_err(|e| self.error(e.to_string()))?;
                    // A stray connection (a port scan, a health probe) is dropped, not fatal: it
                    // gets a short handshake window and is skipped when it does not identify.
                    set_deadline(&stream, deadline.min(Instant::now() + HANDSHAKE_TIMEOUT))
                        .map_err(|e| self.error(e.to_string()))?;
                    let [_magic, rank, world] = match read_u64s::<3>(&mut stream) {
                        Ok(hello) if hello[0] == MAGIC => hello,
                        Ok(_) => {
                            tracing::warn!(%from, "rendezvous: ignoring a connection that is not a clipfleet worker");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(%from, "rendezvous: ignoring a connection without a handshake: {e}");
                            continue;
                        }
                    };
                    set_deadline(&stream, deadline).map_err(|e| self.error(e.to_string()))?;
                    if world as usize != n {
                        return Err(self.error(format!("rank {rank} at {from} has world size {world}, rank 0 has {n}")));
                    }
                    let rank = rank as usize;
                    if rank == 0 || rank >= n {
                        return Err(self.error(format!("{from} claims rank {rank}, outside 1..{n}")));
                    }
                    if peers[rank].is_some() {
                        return Err(self.error(format!("rank {rank} joined twice (second time from {from})")));
                    }
                    peers[rank] = Some(stream);
                    joined += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> = (1..n).filter(|r| peers[*r].is_none()).collect();
                        return Err(self.error(format!("timed out after {timeout:?} waiting for ranks {missing:?}")));
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(self.error(format!("accept: {e}"))),
            }
        }
        let peers = peers.into_iter().skip(1).flatten().collect();
        Ok(Rendezvous { rank: 0, world_size: n, addr: self.addr, link: Link::Root(peers), timeout })
    }
}

#[derive(Debug)]
enum Link {
    /// Rank 0: the streams of ranks 1.., in rank order.
    Root(Vec<TcpStream>),
    /// Another rank: the stream to rank 0.
    Leaf(TcpStream),
    /// World of one: nothing to talk to.
    Alone,
}

/// A joined rendezvous: every rank of the world is connected to rank 0.
#[derive(Debug)]
pub struct Rendezvous {
    rank: usize,
    world_size: usize,
    addr: String,
    link: Link,
    timeout: Duration,
}

impl Rendezvous {
    /// Joins the rendezvous of `world`: rank 0 listens on `world.master_port`, the others
    /// connect to `world.master_addr:world.master_port`; either waits at most `timeout`.
    pub fn join(world: &WorldInfo, timeout: Duration) -> Result<Self, DistError> {
        if world.world_size == 1 {
            return Ok(Rendezvous {
                rank: 0,
                world_size: 1,
                addr: format!("{}:{}", world.master_addr, world.master_port),
                link: Link::Alone,
                timeout,
            });
        }
        if world.rank == 0 {
            RendezvousListener::bind(world.master_port, world.world_size)?.accept(timeout)
        } else {
            Self::connect(&world.master_addr, world.master_port, world.rank, world.world_size, timeout)
        }
    }

    /// Connects rank `rank` (≥ 1) to rank 0 at `host:port`, retrying with exponential backoff
    /// (10 ms doubling to 1 s) while rank 0 is not listening yet, until `timeout` has passed.
    pub fn connect(
        host: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let addr = format!("{host}:{port}");
        let error = |reason: String| DistError::Rendezvous { addr: addr.clone(), rank, world_size, reason };
        let deadline = Instant::now() + timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        let mut stream = loop {
            attempts += 1;
            let last = match resolve(&addr) {
                Ok(targets) => {
                    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                    match targets.iter().find_map(|t| TcpStream::connect_timeout(t, left.min(MAX_BACKOFF)).ok()) {
                        Some(s) => break s,
                        None => "connection refused or timed out".to_owned(),
                    }
                }
                // The master's DNS name may appear only once its pod or node is up: retry too.
                Err(e) => e,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(error(format!("rank 0 not reachable after {attempts} attempts in {timeout:?}: {last}")));
            }
            thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        set_deadline(&stream, deadline).map_err(|e| error(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| error(e.to_string()))?;
        write_u64s(&mut stream, [MAGIC, rank as u64, world_size as u64])
            .map_err(|e| error(format!("handshake: {e}")))?;
        Ok(Rendezvous { rank, world_size, addr, link: Link::Leaf(stream), timeout })
    }

    /// This worker's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The world size.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    fn error(&self, reason: String) -> DistError {
        DistError::Rendezvous { addr: self.addr.clone(), rank: self.rank, world_size: self.world_size, reason }
    }

    /// Every rank's `bytes`, in rank order, on every rank.
    pub fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let deadline = Instant::now() + self.timeout;
        let result = match &mut self.link {
            Link::Alone => Ok(vec![bytes.to_vec()]),
            Link::Root(peers) => (|| {
                let mut all = vec![bytes.to_vec()];
                for (i, peer) in peers.iter_mut().enumerate() {
                    set_deadline(peer, deadline)?;
                    all.push(read_message(peer).map_err(|e| annotate(e, i + 1))?);
                }
                let mut packed = Vec::new();
                for part in &all {
                    packed.extend_from_slice(&(part.len() as u64).to_le_bytes());
                    packed.extend_from_slice(part);
                }
                for (i, peer) in peers.iter_mut().enumerate() {
                    write_message(peer, &packed).map_err(|e| annotate(e, i + 1))?;
                }
                Ok(all)
            })(),
            Link::Leaf(stream) => (|| {
                set_deadline(stream, deadline)?;
                write_message(stream, bytes)?;
                let packed = read_message(stream)?;
                unpack(&packed, self.world_size)
            })(),
        };
        result.map_err(|e: std::io::Error| self.error(e.to_string()))
    }

    /// Waits at most `timeout` in each later exchange (the join keeps its own).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Every rank's `bytes`, in rank order, on rank 0 (`None` on the other ranks).
    pub fn gather_bytes(&mut self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        let deadline = Instant::now() + self.timeout;
        let result = match &mut self.link {
            Link::Alone => Ok(Some(vec![bytes.to_vec()])),
            Link::Root(peers) => (|| {
                let mut all = vec![bytes.to_vec()];
                for (i, peer) in peers.iter_mut().enumerate() {
                    set_deadline(peer, deadline)?;
                    all.push(read_message(peer).map_err(|e| annotate(e, i + 1))?);
                }
                Ok(Some(all))
            })(),
            Link::Leaf(stream) => (|| {
                set_deadline(stream, deadline)?;
                write_message(stream, bytes)?;
                Ok(None)
            })(),
        };
        result.map_err(|e: std::io::Error| self.error(e.to_string()))
    }

    /// Rank 0's `bytes` on every rank (the other ranks' arguments are ignored).
    pub fn broadcast_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, DistError> {
        let deadline = Instant::now() + self.timeout;
        let result = match &mut self.link {
            Link::Alone => Ok(bytes.to_vec()),
            Link::Root(peers) => (|| {
                for (i, peer) in peers.iter_mut().enumerate() {
                    set_deadline(peer, deadline)?;
                    write_message(peer, bytes).map_err(|e| annotate(e, i + 1))?;
                }
                Ok(bytes.to_vec())
            })(),
            Link::Leaf(stream) => (|| {
                set_deadline(stream, deadline)?;
                read_message(stream)
            })(),
        };
        result.map_err(|e: std::io::Error| self.error(e.to_string()))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<(), DistError> {
        self.all_gather_bytes(&[]).map(|_| ())
    }
}

fn annotate(e: std::io::Error, peer: usize) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("with rank {peer}: {e}"))
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    addr.to_socket_addrs().map(Iterator::collect).map_err(|e| format!("cannot resolve: {e}"))
}

fn set_deadline(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

fn write_u64s<const N: usize>(stream: &mut TcpStream, values: [u64; N]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 * N);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    stream.write_all(&buf)
}

fn read_u64s<const N: usize>(stream: &mut TcpStream) -> std::io::Result<[u64; N]> {
    let mut out = [0u64; N];
    for v in &mut out {
        let mut b = [0u8; 8];
        stream.read_exact(&mut b)?;
        *v = u64::from_le_bytes(b);
    }
    Ok(out)
}

fn write_message(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    write_u64s(stream, [bytes.len() as u64])?;
    stream.write_all(bytes)?;
    stream.flush()
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let [len] = read_u64s::<1>(stream)?;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn unpack(mut packed: &[u8], n: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let bad = || std::io::Error::new(ErrorKind::InvalidData, "malformed all-gather reply from rank 0");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, rest) = packed.split_at_checked(8).ok_or_else(bad)?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
        let (part, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
        out.push(part.to_vec());
        packed = rest;
    }
    if !packed.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(20);

    /// Runs a world of `n` on loopback: rank 0 in this thread, the others in threads.
    fn world<R: Send + 'static>(n: usize, body: impl Fn(Rendezvous) -> R + Send + Sync + Clone + 'static) -> Vec<R> {
        let listener = RendezvousListener::bind(0, n).unwrap();
        let port = listener.port().unwrap();
        let handles: Vec<_> = (1..n)
            .map(|rank| {
                let body = body.clone();
                thread::spawn(move || body(Rendezvous::connect("127.0.0.1", port, rank, n, T).unwrap()))
            })
            .collect();
        let mut out = vec![body(listener.accept(T).unwrap())];
        out.extend(handles.into_iter().map(|h| h.join().unwrap()));
        out
    }

    #[test]
    fn broadcast_carries_a_unique_id() {
        let id: Vec<u8> = (0..128u8).collect();
        let out = world(4, move |mut r| {
            let mine = if r.rank() == 0 { id.clone() } else { vec![] };
            (r.rank(), r.broadcast_bytes(&mine).unwrap())
        });
        for (rank, got) in out {
            assert_eq!(got, (0..128u8).collect::<Vec<_>>(), "rank {rank}");
        }
    }

    #[test]
    fn all_gather_and_barrier_in_rank_order() {
        let out = world(3, |mut r| {
            r.barrier().unwrap();
            let mine = vec![r.rank() as u8; r.rank() + 1];
            let first = r.all_gather_bytes(&mine).unwrap();
            let second = r.all_gather_bytes(b"x").unwrap();
            r.barrier().unwrap();
            (first, second)
        });
        for (first, second) in out {
            assert_eq!(first, vec![vec![0u8], vec![1, 1], vec![2, 2, 2]]);
            assert_eq!(second, vec![b"x".to_vec(); 3]);
        }
    }

    #[test]
    fn a_world_of_one_needs_no_network() {
        let mut r = Rendezvous::join(&WorldInfo::single(), T).unwrap();
        assert_eq!(r.broadcast_bytes(b"id").unwrap(), b"id");
        assert_eq!(r.all_gather_bytes(b"a").unwrap(), vec![b"a".to_vec()]);
        r.barrier().unwrap();
    }

    #[test]
    fn a_client_retries_until_rank_0_listens() {
        // Reserve a free port, release it, and start the client before rank 0 listens.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = thread::spawn(move || {
            let mut r = Rendezvous::connect("127.0.0.1", port, 1, 2, T).unwrap();
            r.broadcast_bytes(&[]).unwrap()
        });
        thread::sleep(Duration::from_millis(50)); // a few refused attempts, not a timing assumption
        let mut root = RendezvousListener::bind(port, 2).unwrap().accept(T).unwrap();
        root.broadcast_bytes(b"late").unwrap();
        assert_eq!(client.join().unwrap(), b"late");
    }

    #[test]
    fn connect_gives_up_at_the_deadline() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = Rendezvous::connect("127.0.0.1", port, 1, 2, Duration::from_millis(100)).unwrap_err().to_string();
        assert!(err.contains("rank 0 not reachable") && err.contains("rank 1 of 2"), "{err}");
    }

    #[test]
    fn accept_names_the_missing_ranks() {
        let listener = RendezvousListener::bind(0, 3).unwrap();
        let port = listener.port().unwrap();
        let c = thread::spawn(move || Rendezvous::connect("127.0.0.1", port, 2, 3, T));
        let err = listener.accept(Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("waiting for ranks [1]"), "{err}");
        drop(c.join());
    }

    #[test]
    fn a_stray_connection_is_ignored() {
        let listener = RendezvousListener::bind(0, 2).unwrap();
        let port = listener.port().unwrap();
        let worker = thread::spawn(move || {
            // A probe that connects, says something else and leaves, before the real worker.
            let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
            probe.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            drop(probe);
            let mut r = Rendezvous::connect("127.0.0.1", port, 1, 2, T).unwrap();
            r.broadcast_bytes(&[]).unwrap()
        });
        let mut root = listener.accept(T).unwrap();
        root.broadcast_bytes(b"ok").unwrap();
        assert_eq!(worker.join().unwrap(), b"ok");
    }

    #[test]
    fn mismatched_world_sizes_are_refused() {
        let listener = RendezvousListener::bind(0, 2).unwrap();
        let port = listener.port().unwrap();
        let c = thread::spawn(move || Rendezvous::connect("127.0.0.1", port, 1, 3, T));
        let err = listener.accept(T).unwrap_err().to_string();
        assert!(err.contains("world size 3, rank 0 has 2"), "{err}");
        drop(c.join());
    }
}
