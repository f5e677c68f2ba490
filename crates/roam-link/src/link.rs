//! The link itself: a listener on loopback whose every connection is forwarded to one
//! target through the emulated link, with run-time control (a new spec, a cut) and byte
//! counts.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use thiserror::Error;

use crate::conn::{prepare_socket, queue_capacity, Conn};
use crate::spec::{Direction, InvalidSpecError, LinkSpec};

/// Receive buffer of the proxy's own sockets. Small, so that when the link's queue is
/// full the sender soon feels it rather than filling megabytes of kernel buffers.
const RECV_BUFFER: usize = 64 * 1024;
/// How long the proxy waits for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Link::start`] failed.
#[derive(Debug, Error)]
pub enum StartLinkError {
    /// the link spec is invalid
    #[error("the link spec is invalid")]
    InvalidSpec(#[from] InvalidSpecError),
    /// cannot listen on 127.0.0.1
    #[error("cannot listen on 127.0.0.1")]
    Listen(#[source] io::Error),
    /// cannot start the link's accept thread
    #[error("cannot start the link's accept thread")]
    Thread(#[source] io::Error),
}

/// [`Link::set_spec`] refused a spec.
#[derive(Debug, Error)]
pub enum SetSpecError {
    /// the link spec is invalid
    #[error("the link spec is invalid")]
    InvalidSpec(#[from] InvalidSpecError),
}

/// What went through a link since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Bytes delivered to the target (client → target).
    pub up_bytes: u64,
    /// Bytes delivered to clients (target → client).
    pub down_bytes: u64,
    /// Bytes read from clients that the link holds, not yet delivered to the target.
    pub up_queued: u64,
    /// Bytes read from the target that the link holds, not yet delivered to clients.
    pub down_queued: u64,
    /// Connections accepted while the link was up.
    pub connections: u64,
    /// Connections open now.
    pub open_connections: usize,
    /// Connections reset because the link was down (cut while open, or opened while down).
    pub resets: u64,
}

/// State shared by the link handle and its threads.
#[derive(Debug)]
pub(crate) struct Shared {
    spec: Mutex<LinkSpec>,
    target: SocketAddr,
    down: AtomicBool,
    stopping: AtomicBool,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    pub(crate) up_bytes: AtomicU64,
    pub(crate) down_bytes: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn spec(&self) -> LinkSpec {
        *lock(&self.spec)
    }

    fn close_all(&self, reset: bool) {
        let conns = lock(&self.conns);
        for conn in conns.values() {
            conn.close(reset);
        }
        if reset {
            self.resets.fetch_add(conns.len() as u64, Ordering::Relaxed);
        }
    }
}

/// An emulated link on loopback: connect to [`Link::addr`] and the bytes reach the
/// target as if they had crossed the link, both ways.
///
/// Each direction is a token bucket at the direction's bandwidth followed by a delay line
/// of half the round trip, applied to batches of bytes stamped when they were read; so
/// a bulk transfer runs at the bandwidth and a small message takes half the round trip
/// plus its time on the wire. Each direction holds at most its bandwidth-delay product
/// plus 64 KiB; beyond that the link stops reading and the sender blocks.
///
/// The link runs on its own threads (an accept thread, and four per connection), so it
/// works the same from synchronous code and from inside any async runtime. Dropping it
/// stops it: the listener closes, open connections end, and the threads are joined.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts a link that listens on `127.0.0.1` (a free port) and forwards every
    /// connection to `target` through `spec`.
    pub fn start(spec: LinkSpec, target: SocketAddr) -> Result<Link, StartLinkError> {
        spec.validate()?;
        let listener = listen().map_err(StartLinkError::Listen)?;
        let addr = listener.local_addr().map_err(StartLinkError::Listen)?;
        let shared = Arc::new(Shared {
            spec: Mutex::new(spec),
            target,
            down: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("roam-link-accept".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(StartLinkError::Thread)?
        };
        tracing::debug!(%addr, %target, ?spec, "link: started");
        Ok(Link {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` and the address, for WebSocket clients.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The target every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The spec in force.
    pub fn spec(&self) -> LinkSpec {
        self.shared.spec()
    }

    /// Changes the link while it runs (to replay a trace, say). The new bandwidth applies
    /// to bytes not yet on the wire, the new delay to bytes not yet off it; bytes already
    /// propagating keep their time, and a stream stays in order.
    pub fn set_spec(&self, spec: LinkSpec) -> Result<(), SetSpecError> {
        spec.validate()?;
        *lock(&self.shared.spec) = spec;
        // Readers waiting for room see the new queue size; pacers re-plan.
        for conn in lock(&self.shared.conns).values() {
            conn.up.poke();
            conn.down.poke();
        }
        tracing::debug!(addr = %self.addr, ?spec, "link: new spec");
        Ok(())
    }

    /// Cuts the link (`true`) or restores it (`false`). Cutting resets every open
    /// connection (both peers see a connection reset) and resets every connection opened
    /// while the link is down as soon as it is accepted, so a client's first read or
    /// write fails. Restoring lets new connections through; the reset ones stay closed.
    pub fn set_down(&self, down: bool) {
        // Under the connection lock, so a connection being set up either sees the flag
        // or is in the map when the cut closes them.
        let guard = lock(&self.shared.conns);
        let was_down = self.shared.down.swap(down, Ordering::SeqCst);
        drop(guard);
        if down && !was_down {
            self.shared.close_all(true);
        }
        tracing::debug!(addr = %self.addr, down, "link: set down");
    }

    /// Whether the link is cut.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Byte and connection counts so far.
    pub fn stats(&self) -> LinkStats {
        let conns = lock(&self.shared.conns);
        LinkStats {
            up_bytes: self.shared.up_bytes.load(Ordering::Relaxed),
            down_bytes: self.shared.down_bytes.load(Ordering::Relaxed),
            up_queued: conns.values().map(|conn| conn.up.queued()).sum(),
            down_queued: conns.values().map(|conn| conn.down.queued()).sum(),
            connections: self.shared.connections.load(Ordering::Relaxed),
            open_connections: conns.len(),
            resets: self.shared.resets.load(Ordering::Relaxed),
        }
    }

    /// The most bytes one connection's `direction` holds under the current spec.
    pub fn queue_capacity(&self, direction: Direction) -> u64 {
        queue_capacity(&self.spec(), direction)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own; if even that fails the
        // thread is left to end with the process rather than hang this drop.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take() {
            if woke {
                let _ = accept.join();
            } else {
                self.shared.close_all(false);
            }
        }
        tracing::debug!(addr = %self.addr, "link: stopped");
    }
}

fn listen() -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit it.
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    socket.connect_timeout(&target.into(), CONNECT_TIMEOUT)?;
    Ok(socket.into())
}

fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut serving: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!(%error, "link: accept failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        if shared.down.load(Ordering::SeqCst) {
            reset(&client);
            shared.resets.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        serving.retain(|handle| !handle.is_finished());
        let spawned = {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name("roam-link-conn".into())
                .spawn(move || serve(client, &shared))
        };
        match spawned {
            Ok(handle) => serving.push(handle),
            Err(error) => tracing::warn!(%error, "link: cannot start a connection"),
        }
    }
    shared.close_all(false);
    for handle in serving {
        let _ = handle.join();
    }
}

fn serve(client: TcpStream, shared: &Shared) {
    let target = match connect(shared.target) {
        Ok(target) => target,
        Err(error) => {
            tracing::debug!(%error, target = %shared.target, "link: target refused, resetting the client");
            reset(&client);
            return;
        }
    };
    if let Err(error) = prepare_socket(&client).and_then(|()| prepare_socket(&target)) {
        tracing::debug!(%error, "link: cannot set up the sockets");
        reset(&client);
        reset(&target);
        return;
    }
    let conn = Arc::new(Conn::new(client, target));
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = lock(&shared.conns);
        if shared.down.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst) {
            drop(conns);
            conn.close(true);
            shared.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        conns.insert(id, Arc::clone(&conn));
    }
    shared.connections.fetch_add(1, Ordering::Relaxed);
    conn.run(shared);
    lock(&shared.conns).remove(&id);
}
