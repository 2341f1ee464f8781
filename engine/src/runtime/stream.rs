//! Stream connections (TCP and TLS) of one worker.
//!
//! Each worker owns a `SO_REUSEPORT` listener on every `tcp:`/`tls:` listen
//! address (the kernel spreads new connections over the workers) and every
//! connection it accepts or opens; nothing here is shared but the
//! connection counts that the limits need ([`ConnLimits`]). The sockets
//! are non-blocking and watched by one epoll instance per worker
//! ([`Streams::fd`]), which the worker's loop waits on: directly on the
//! epoll path, with a multishot poll on the io_uring path. After a
//! readiness event, plain `read`/`write` (through rustls for TLS).
//!
//! Per connection:
//! - receive: bytes go to a buffer; [`siplb_parser::frame`] cuts whole
//!   messages (Content-Length framing) and RFC 5626 keep-alives off its
//!   front (a ping is answered with a pong); a partial message waits; a
//!   framing error or an oversized message closes the connection
//!   (`tcp_framing_errors`).
//! - send: written at once; what the kernel does not take waits in a
//!   buffer until the socket is writable.
//! - timers ([`Streams::sweep`], every 100 ms): no traffic for
//!   `idle_timeout` closes (`tcp_idle_closed`); a message (or a TLS
//!   handshake) not complete within `message_timeout` of its first byte
//!   closes (`tcp_slow_closed`); an outbound connection not up within
//!   `connect_timeout` fails (`tcp_connect_failed`).
//! - limits: `max_connections` in the process and `max_connections_per_ip`
//!   inbound from one address; a connection over a limit is accepted and
//!   closed at once (`tcp_refused_*`).
//!
//! Connection ids: slot index in the low 32 bits, slot generation above,
//! so a message for a connection that closed (and whose slot was reused)
//! never reaches the wrong peer.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::ClientConnectionData as ClientData;
use rustls::server::ServerConnectionData as ServerData;
use siplb_parser::{frame, Frame, Options};
use socket2::{Domain, Protocol, Socket, Type};

use super::tls::{self, TlsContext};
use super::udp::Epoll;
use crate::config::Tcp;
use crate::core::{msg, ConnId, Local, Stats, Transport};

/// Connection counts shared by the workers, for the limits.
#[derive(Debug, Default)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    /// Connections open now in the process.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Binds a non-blocking TCP listener that every worker can share;
/// `freebind` as in [`udp::bind_with`](super::udp::bind_with) (a virtual IP
/// held by the other node of a pair).
pub fn listen(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if freebind {
        super::udp::set_freebind(&s, addr)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Fails when another process listens on `addr` (`SO_REUSEPORT` would
/// otherwise let a second siplb share it silently).
pub fn check_free(addr: SocketAddr, freebind: bool) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if freebind {
        super::udp::set_freebind(&s, addr)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
}

/// A message that arrived on a connection.
pub struct Incoming {
    /// The connection, as the proxy sees it.
    pub local: Local,
    /// The peer.
    pub src: SocketAddr,
    /// One whole message.
    pub bytes: Vec<u8>,
}

/// What became of a stream transmit.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Written or queued (or dropped and counted).
    Done,
    /// The connection belongs to this other worker: hand the transmit over.
    Foreign(u16),
}

enum Tls {
    None,
    Server(Box<rustls::ServerConnection>),
    Client(Box<rustls::ClientConnection>),
}

struct Conn {
    sock: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    tls: Tls,
    inbound: bool,
    connecting: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    last_activity: Instant,
    /// When the message (or handshake) now being received began.
    partial_since: Option<Instant>,
    connect_deadline: Option<Instant>,
    writable_armed: bool,
}

impl Conn {
    fn handshaking(&self) -> bool {
        match &self.tls {
            Tls::None => false,
            Tls::Server(c) => c.is_handshaking(),
            Tls::Client(c) => c.is_handshaking(),
        }
    }

    fn wants_write(&self) -> bool {
        self.connecting
            || !self.wbuf.is_empty()
            || match &self.tls {
                Tls::None => false,
                Tls::Server(c) => c.wants_write(),
                Tls::Client(c) => c.wants_write(),
            }
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    Normal,
    Framing,
    Idle,
    Slow,
    ConnectFailed,
    Handshake,
}

const LISTENER: u64 = 1 << 63;
const READ_CHUNK: usize = 16 * 1024;

/// One worker's listeners and connections; see the module docs.
pub struct Streams {
    worker: u16,
    epoll: Epoll,
    listeners: Vec<(TcpListener, Transport)>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_peer: HashMap<(Transport, SocketAddr), u64>,
    tls: Option<TlsContext>,
    limits: Arc<ConnLimits>,
    cfg: Tcp,
    options: Options,
    stats: Arc<Stats>,
    events: Vec<libc::epoll_event>,
    scratch: Vec<u8>,
    next_sweep: Option<Instant>,
    /// The last [`Streams::poll`] stopped at a bound with work left.
    more: bool,
}

impl Streams {
    /// A worker's stream state over its listeners.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker: u16,
        listeners: Vec<(TcpListener, Transport)>,
        tls: Option<TlsContext>,
        limits: Arc<ConnLimits>,
        cfg: Tcp,
        max_message: usize,
        stats: Arc<Stats>,
    ) -> io::Result<Streams> {
        let epoll = Epoll::new()?;
        for (i, (l, _)) in listeners.iter().enumerate() {
            epoll.add(l.as_raw_fd(), LISTENER | i as u64)?;
        }
        let mut options = Options::default();
        options.limits.max_message_size = max_message;
        Ok(Streams {
            worker,
            epoll,
            listeners,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            tls,
            limits,
            cfg,
            options,
            stats,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
            scratch: vec![0u8; READ_CHUNK],
            next_sweep: None,
            more: false,
        })
    }

    /// The epoll descriptor to wait on: readable when a listener or a
    /// connection has something to do.
    pub fn fd(&self) -> RawFd {
        self.epoll.raw()
    }

    /// True when the last [`Streams::poll`] stopped at one of its bounds
    /// (events, reads per connection) with work possibly left: poll again
    /// without waiting for a new readiness notification.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Handles what is ready: accepts, reads (whole messages go to `out`),
    /// writes; then runs the timers when due.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Incoming>) {
        self.more = false;
        for round in 0..4 {
            let n = match self.epoll.wait(&mut self.events, Duration::ZERO) {
                Ok(n) => n,
                Err(_) => break,
            };
            for i in 0..n {
                let ev = self.events[i];
                let token = ev.u64;
                if token & LISTENER != 0 {
                    self.accept(now, (token & !LISTENER) as usize);
                    continue;
                }
                let flags = ev.events;
                if flags & (libc::EPOLLOUT as u32) != 0 {
                    self.on_writable(now, token);
                }
                if flags & (libc::EPOLLIN as u32 | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
                    self.on_readable(now, token, out);
                }
            }
            if n < self.events.len() {
                break;
            }
            if round == 3 {
                self.more = true;
            }
        }
        self.sweep(now);
    }

    /// Closes idle, slow and stuck connections (at most every 100 ms).
    pub fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_millis(100));
        let cfg = self.cfg;
        let mut doomed = Vec::new();
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            let why = if c.connect_deadline.is_some_and(|d| now >= d) {
                Some(Close::ConnectFailed)
            } else if c
                .partial_since
                .is_some_and(|t| now.saturating_duration_since(t) >= cfg.message_timeout)
            {
                Some(Close::Slow)
            } else if now.saturating_duration_since(c.last_activity) >= cfg.idle_timeout {
                Some(Close::Idle)
            } else {
                None
            };
            if let Some(why) = why {
                doomed.push((self.id_of(i), why));
            }
        }
        for (id, why) in doomed {
            self.close(id, why);
        }
    }

    /// Sends a message on a stream (`local` is [`Local::Conn`] or
    /// [`Local::Connect`]); see [`Local`] for what happens when the
    /// connection is gone.
    pub fn send(&mut self, now: Instant, local: Local, dst: SocketAddr, payload: &[u8]) -> Sent {
        let id = match local {
            Local::Conn(c) if c.worker != self.worker => return Sent::Foreign(c.worker),
            Local::Conn(c) => match self.get(c.id) {
                Some(_) => Some(c.id),
                None => {
                    Stats::inc(&self.stats.tcp_send_fallbacks);
                    // RFC 3261 §18.2.2: a response goes to a new connection
                    // to the received address and the sent-by port.
                    match msg::stream_fallback(payload) {
                        Some(addr) => self.connection_to(now, c.transport, addr),
                        None => None,
                    }
                }
            },
            Local::Connect(t) => self.connection_to(now, t, dst),
            Local::Public(_) | Local::Internal => None,
        };
        match id {
            Some(id) => self.write(now, id, payload),
            None => Stats::inc(&self.stats.tcp_drop_send),
        }
        Sent::Done
    }

    /// Closes every connection (at shutdown).
    pub fn close_all(&mut self) {
        let ids: Vec<u64> = (0..self.conns.len())
            .filter(|&i| self.conns[i].is_some())
            .map(|i| self.id_of(i))
            .collect();
        for id in ids {
            if let Some(c) = self.get_mut(id) {
                // Best effort: what is still queued goes out now or never.
                let _ = flush(c);
            }
            self.close(id, Close::Normal);
        }
    }

    // ---- internals -------------------------------------------------------

    fn id_of(&self, index: usize) -> u64 {
        u64::from(self.generations[index]) << 32 | index as u64
    }

    fn get(&self, id: u64) -> Option<&Conn> {
        let index = (id & 0xffff_ffff) as usize;
        if self.generations.get(index).copied() != Some((id >> 32) as u32) {
            return None;
        }
        self.conns.get(index)?.as_ref()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Conn> {
        let index = (id & 0xffff_ffff) as usize;
        if self.generations.get(index).copied() != Some((id >> 32) as u32) {
            return None;
        }
        self.conns.get_mut(index)?.as_mut()
    }

    /// Takes a place under the process-wide limit (and the per-IP one for
    /// inbound connections); false when refused (counted).
    fn admit(&self, ip: Option<IpAddr>) -> bool {
        if self.limits.total.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.limits.total.fetch_sub(1, Ordering::Relaxed);
            Stats::inc(&self.stats.tcp_refused_total_limit);
            return false;
        }
        if let Some(ip) = ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.cfg.max_connections_per_ip {
                drop(map);
                self.limits.total.fetch_sub(1, Ordering::Relaxed);
                Stats::inc(&self.stats.tcp_refused_per_ip_limit);
                return false;
            }
            *n += 1;
        }
        true
    }

    fn release(&self, ip: Option<IpAddr>) {
        let _ = self
            .limits
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        if let Some(ip) = ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }

    fn insert(&mut self, conn: Conn) -> Option<u64> {
        let fd = conn.sock.as_raw_fd();
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        self.generations[index] = self.generations[index].wrapping_add(1);
        let id = self.id_of(index);
        let events = if conn.connecting {
            libc::EPOLLIN | libc::EPOLLOUT
        } else {
            libc::EPOLLIN
        };
        let writable = conn.connecting;
        if self.epoll.add_events(fd, events as u32, id).is_err() {
            self.free.push(index as u32);
            return None;
        }
        let key = (conn.transport, conn.peer);
        self.conns[index] = Some(conn);
        if let Some(c) = self.conns[index].as_mut() {
            c.writable_armed = writable;
        }
        self.by_peer.entry(key).or_insert(id);
        Stats::inc(&self.stats.tcp_connections);
        Some(id)
    }

    fn accept(&mut self, now: Instant, index: usize) {
        for _ in 0..64 {
            let Some((listener, transport)) = self.listeners.get(index) else {
                return;
            };
            let transport = *transport;
            let (sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED, EMFILE...: try again on the next event.
                Err(_) => return,
            };
            if !self.admit(Some(peer.ip())) {
                drop(sock);
                continue;
            }
            let tls = match (transport, &self.tls) {
                (Transport::Tls, Some(ctx)) => match rustls::ServerConnection::new(ctx.server.clone()) {
                    Ok(c) => Tls::Server(Box::new(c)),
                    Err(_) => {
                        self.release(Some(peer.ip()));
                        continue;
                    }
                },
                (Transport::Tls, None) => {
                    self.release(Some(peer.ip()));
                    continue;
                }
                _ => Tls::None,
            };
            if sock.set_nonblocking(true).is_err() {
                self.release(Some(peer.ip()));
                continue;
            }
            let _ = sock.set_nodelay(true);
            let handshake = !matches!(tls, Tls::None);
            let conn = Conn {
                sock,
                peer,
                transport,
                tls,
                inbound: true,
                connecting: false,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                last_activity: now,
                partial_since: handshake.then_some(now),
                connect_deadline: None,
                writable_armed: false,
            };
            if self.insert(conn).is_none() {
                self.release(Some(peer.ip()));
                continue;
            }
            Stats::inc(&self.stats.tcp_accepted);
        }
    }

    /// A connection to `dst` over `transport`: an open one (inbound or
    /// outbound) to that address, else a new outbound one.
    fn connection_to(&mut self, now: Instant, transport: Transport, dst: SocketAddr) -> Option<u64> {
        if let Some(&id) = self.by_peer.get(&(transport, dst)) {
            if self.get(id).is_some() {
                return Some(id);
            }
            self.by_peer.remove(&(transport, dst));
        }
        if !self.admit(None) {
            return None;
        }
        let tls = match transport {
            Transport::Tls => {
                let ctx = self.tls.as_ref()?;
                match rustls::ClientConnection::new(ctx.client.clone(), tls::server_name(dst.ip())) {
                    Ok(c) => Tls::Client(Box::new(c)),
                    Err(_) => {
                        self.release(None);
                        Stats::inc(&self.stats.tcp_connect_failed);
                        return None;
                    }
                }
            }
            _ => Tls::None,
        };
        let sock = match start_connect(dst) {
            Ok(s) => s,
            Err(_) => {
                self.release(None);
                Stats::inc(&self.stats.tcp_connect_failed);
                return None;
            }
        };
        let conn = Conn {
            sock,
            peer: dst,
            transport,
            tls,
            inbound: false,
            connecting: true,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            last_activity: now,
            partial_since: None,
            connect_deadline: Some(now + self.cfg.connect_timeout),
            writable_armed: true,
        };
        match self.insert(conn) {
            Some(id) => {
                Stats::inc(&self.stats.tcp_connected);
                Some(id)
            }
            None => {
                self.release(None);
                Stats::inc(&self.stats.tcp_connect_failed);
                None
            }
        }
    }

    fn write(&mut self, now: Instant, id: u64, payload: &[u8]) {
        let Some(c) = self.get_mut(id) else { return };
        c.last_activity = now;
        let queued = match &mut c.tls {
            Tls::None => {
                c.wbuf.extend_from_slice(payload);
                Ok(())
            }
            Tls::Server(t) => t.writer().write_all(payload),
            Tls::Client(t) => t.writer().write_all(payload),
        };
        if queued.is_err() {
            self.close(id, Close::Normal);
            return;
        }
        self.pump_writes(id);
    }

    /// Writes what can be written now; arms or disarms writability.
    fn pump_writes(&mut self, id: u64) {
        let Some(c) = self.get_mut(id) else { return };
        if !c.connecting && flush(c).is_err() {
            self.close(id, Close::Normal);
            return;
        }
        let Some(c) = self.get_mut(id) else { return };
        let want = c.wants_write();
        if want != c.writable_armed {
            c.writable_armed = want;
            let fd = c.sock.as_raw_fd();
            let events = if want {
                libc::EPOLLIN | libc::EPOLLOUT
            } else {
                libc::EPOLLIN
            };
            let _ = self.epoll.modify(fd, events as u32, id);
        }
    }

    fn on_writable(&mut self, now: Instant, id: u64) {
        let Some(c) = self.get_mut(id) else { return };
        if c.connecting {
            match c.sock.take_error() {
                Ok(None) => {
                    c.connecting = false;
                    c.connect_deadline = if c.handshaking() {
                        // The TLS handshake must finish in time too.
                        c.connect_deadline
                    } else {
                        None
                    };
                    c.last_activity = now;
                }
                _ => {
                    self.close(id, Close::ConnectFailed);
                    return;
                }
            }
        }
        self.pump_writes(id);
    }

    fn on_readable(&mut self, now: Instant, id: u64, out: &mut Vec<Incoming>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.read_into(now, id, &mut scratch);
        self.scratch = scratch;
        // What arrived before the peer closed is delivered all the same.
        self.deliver(now, id, out);
        match result {
            Ok(true) => {}
            Ok(false) => {
                self.close(id, Close::Normal);
                return;
            }
            Err(why) => {
                self.close(id, why);
                return;
            }
        }
        // TLS may have something to say back (handshake, alerts).
        self.pump_writes(id);
    }

    /// Reads what is there into the connection's buffer. Ok(false): the
    /// peer closed.
    fn read_into(&mut self, now: Instant, id: u64, scratch: &mut [u8]) -> Result<bool, Close> {
        let max = self.options.limits.max_message_size;
        let Some(c) = self.get_mut(id) else { return Ok(true) };
        if c.connecting {
            // An error on a connection still connecting.
            return match c.sock.take_error() {
                Ok(None) => Ok(true),
                _ => Err(Close::ConnectFailed),
            };
        }
        let mut open = true;
        let mut bounded = true;
        for _ in 0..16 {
            match &mut c.tls {
                Tls::None => match c.sock.read(scratch) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => {
                        c.rbuf.extend_from_slice(&scratch[..n]);
                        c.last_activity = now;
                        if n < scratch.len() {
                            bounded = false;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        bounded = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open = false;
                        break;
                    }
                },
                tls => {
                    let (n, state) = match tls {
                        Tls::Server(t) => tls_read::<ServerData>(&mut **t, &mut c.sock, &mut c.rbuf, scratch),
                        Tls::Client(t) => tls_read::<ClientData>(&mut **t, &mut c.sock, &mut c.rbuf, scratch),
                        Tls::None => (0, TlsRead::Again),
                    };
                    if n > 0 {
                        c.last_activity = now;
                    }
                    match state {
                        TlsRead::Again => {}
                        TlsRead::Blocked => {
                            bounded = false;
                            break;
                        }
                        TlsRead::Closed => {
                            open = false;
                            break;
                        }
                        TlsRead::Failed => {
                            return Err(if c.inbound {
                                Close::Handshake
                            } else {
                                Close::ConnectFailed
                            })
                        }
                    }
                }
            }
            // More than a message's worth that does not frame: stop
            // reading; framing will reject it.
            if c.rbuf.len() > max + 4 {
                bounded = false;
                break;
            }
        }
        if !open {
            bounded = false;
        }
        if !matches!(c.tls, Tls::None) && !c.handshaking() && c.connect_deadline.is_some() && !c.connecting {
            c.connect_deadline = None;
        }
        self.more |= bounded;
        Ok(open)
    }

    /// Cuts whole messages and keep-alives off the front of the buffer.
    fn deliver(&mut self, now: Instant, id: u64, out: &mut Vec<Incoming>) {
        let options = self.options;
        let worker = self.worker;
        let mut pongs = 0;
        let mut failed = false;
        let Some(c) = self.get_mut(id) else { return };
        let mut off = 0;
        let mut messages = false;
        loop {
            match frame(&c.rbuf[off..], &options) {
                Ok(Frame::Partial) => break,
                Ok(f @ Frame::Message(_)) => {
                    let n = f.consumed();
                    out.push(Incoming {
                        local: Local::Conn(ConnId {
                            transport: c.transport,
                            worker,
                            id,
                        }),
                        src: c.peer,
                        bytes: c.rbuf[off..off + n].to_vec(),
                    });
                    off += n;
                    messages = true;
                }
                Ok(f @ Frame::Ping) => {
                    off += f.consumed();
                    pongs += 1;
                }
                Ok(f) => off += f.consumed(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.rbuf.drain(..off);
        let handshaking = c.handshaking();
        c.partial_since = if !c.rbuf.is_empty() || handshaking {
            // The clock restarts with each whole message.
            if messages || off > 0 {
                Some(now)
            } else {
                Some(c.partial_since.unwrap_or(now))
            }
        } else {
            None
        };
        if failed {
            self.close(id, Close::Framing);
            return;
        }
        for _ in 0..pongs {
            Stats::inc(&self.stats.tcp_keepalive_pings);
            self.write(now, id, b"\r\n");
        }
    }

    fn close(&mut self, id: u64, why: Close) {
        let index = (id & 0xffff_ffff) as usize;
        if self.get(id).is_none() {
            return;
        }
        let Some(c) = self.conns[index].take() else { return };
        self.free.push(index as u32);
        let _ = self.epoll.delete(c.sock.as_raw_fd());
        if self.by_peer.get(&(c.transport, c.peer)) == Some(&id) {
            self.by_peer.remove(&(c.transport, c.peer));
        }
        self.release(c.inbound.then_some(c.peer.ip()));
        Stats::dec(&self.stats.tcp_connections);
        let counter = match why {
            Close::Normal => None,
            Close::Framing => Some(&self.stats.tcp_framing_errors),
            Close::Idle => Some(&self.stats.tcp_idle_closed),
            Close::Slow => Some(&self.stats.tcp_slow_closed),
            Close::ConnectFailed => Some(&self.stats.tcp_connect_failed),
            Close::Handshake => Some(&self.stats.tls_handshake_failed),
        };
        if let Some(counter) = counter {
            Stats::inc(counter);
        }
        tracing::debug!(peer = %c.peer, transport = ?c.transport, why = ?why, "connection closed");
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.close_all();
    }
}

enum TlsRead {
    /// Read some; try again.
    Again,
    /// Nothing more for now.
    Blocked,
    /// The peer closed.
    Closed,
    /// A TLS error: the connection is unusable.
    Failed,
}

/// One round of TLS reading: socket → rustls → plaintext into `rbuf`.
fn tls_read<D>(
    t: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    rbuf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> (usize, TlsRead) {
    let n = match t.read_tls(sock) {
        Ok(0) => return (0, TlsRead::Closed),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (0, TlsRead::Blocked),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return (0, TlsRead::Again),
        Err(_) => return (0, TlsRead::Closed),
    };
    let state = match t.process_new_packets() {
        Ok(s) => s,
        Err(_) => {
            // Let the peer know why (an alert), best effort.
            let _ = t.write_tls(sock);
            return (n, TlsRead::Failed);
        }
    };
    let mut plain = state.plaintext_bytes_to_read();
    while plain > 0 {
        let want = plain.min(scratch.len());
        match t.reader().read(&mut scratch[..want]) {
            Ok(0) => break,
            Ok(k) => {
                rbuf.extend_from_slice(&scratch[..k]);
                plain -= k;
            }
            Err(_) => break,
        }
    }
    if state.peer_has_closed() {
        return (n, TlsRead::Closed);
    }
    (n, TlsRead::Again)
}

/// Writes queued bytes (plaintext buffer, or TLS records) without
/// blocking; Err when the connection is broken.
fn flush(c: &mut Conn) -> io::Result<()> {
    match &mut c.tls {
        Tls::None => {
            while !c.wbuf.is_empty() {
                match c.sock.write(&c.wbuf) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        c.wbuf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Tls::Server(t) => tls_flush::<ServerData>(&mut **t, &mut c.sock),
        Tls::Client(t) => tls_flush::<ClientData>(&mut **t, &mut c.sock),
    }
}

fn tls_flush<D>(t: &mut rustls::ConnectionCommon<D>, sock: &mut TcpStream) -> io::Result<()> {
    while t.wants_write() {
        match t.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A non-blocking connect in progress (or done).
fn start_connect(dst: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_nodelay(true);
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}
