//! The runtime: worker threads, sockets, timers and hand-off around the
//! sans-IO [`Proxy`].
//!
//! One worker per configured core, optionally pinned. Each owns:
//! - one `SO_REUSEPORT` socket on every public listen address,
//! - its private internal socket (`internal_address`, port base + index),
//!   named in the Via siplb adds, so backend replies reach it directly,
//! - a [`Proxy`] (its transactions, dialogs and timers),
//! - a bounded crossbeam queue plus an eventfd: datagrams that another
//!   worker received but this one owns (the Record-Route `did` or the Via
//!   branch says so) arrive there.
//!
//! The loop: `epoll_wait` until a socket is readable, the queue has work,
//! or the proxy's next timer; drain sockets with `recvmmsg`; feed the
//! proxy; fire timers; send everything with `sendmmsg`.
//!
//! Control: each worker also has a small bounded queue of [`Control`]
//! messages from the admin thread ([`Controller`]), woken through the same
//! eventfd as the hand-off queue. The worker answers each between two
//! batches on the reply channel the message carries, so the admin API sees
//! and ends dialogs without any lock on the data path.
//!
//! I/O: io_uring (multishot `recvmsg` into provided buffers, `sendmsg`;
//! see [`uring`]) when `io` is `"auto"` or `"io_uring"` and the kernel
//! allows it (checked once at start; Docker's default seccomp profile, for
//! one, does not), else epoll with `recvmmsg`/`sendmmsg` batches ([`udp`]).
//! Both paths feed the same [`Proxy`].
//!
//! Probing: one more thread ([`prober`]) with its own UDP socket sends the
//! health probes and updates the destinations' status.
//! Streams (TCP, TLS; [`stream`]): each worker also owns a `SO_REUSEPORT`
//! listener on every `tcp:`/`tls:` listen address and the connections it
//! accepts or opens, watched by an epoll instance of its own that the loop
//! waits on (on the io_uring path through a multishot poll of that epoll
//! descriptor). A message for a connection of another worker (a reply to
//! a request that was handed over) is passed to the owner like a datagram.
//!
//! Stop: set the stop flag; each worker leaves its loop within 100 ms,
//! ends its dialogs (releasing their load) and exits.

pub mod prober;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod uring;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::{Config, IoMode};
use crate::core::{Control, ControlReply, Disposition, Local, Proxy, Stats, Transmit, Transport};
use crate::lb::Table;
use crate::reload::Live;

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A socket could not be set up.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Another system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Work passed between workers.
enum HandOff {
    /// A message another worker received that this one owns.
    Message {
        local: Local,
        src: SocketAddr,
        bytes: Vec<u8>,
    },
    /// A message to send on a connection this worker owns.
    Send(Transmit),
}

/// A control message and where its answer goes.
struct ControlMsg {
    cmd: Control,
    reply: Sender<ControlReply>,
}

/// Depth of each worker's control queue (admin requests are rare).
const CONTROL_QUEUE: usize = 16;

/// Why a control request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A worker's control queue is full or it stopped.
    #[error("worker {0} is not accepting control requests")]
    Unavailable(usize),
    /// Not every worker answered in time.
    #[error("{0} worker(s) did not answer in time")]
    Timeout(usize),
}

/// The admin side of the workers' control queues; cheap to clone.
#[derive(Clone)]
pub struct Controller {
    senders: Vec<Sender<ControlMsg>>,
    wakers: Vec<Arc<udp::EventFd>>,
}

impl Controller {
    /// Sends `cmd` to every worker and collects their answers (one per worker).
    pub fn ask(&self, cmd: &Control, timeout: Duration) -> Result<Vec<ControlReply>, ControlError> {
        let (tx, rx) = crossbeam_channel::bounded(self.senders.len().max(1));
        for (i, s) in self.senders.iter().enumerate() {
            s.try_send(ControlMsg {
                cmd: cmd.clone(),
                reply: tx.clone(),
            })
            .map_err(|_| ControlError::Unavailable(i))?;
            self.wakers[i].notify();
        }
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::with_capacity(self.senders.len());
        while replies.len() < self.senders.len() {
            match rx.recv_deadline(deadline) {
                Ok(r) => replies.push(r),
                Err(_) => return Err(ControlError::Timeout(self.senders.len() - replies.len())),
            }
        }
        Ok(replies)
    }
}

/// A running set of workers.
pub struct Runtime {
    /// The destination table the workers started with; after a reload the
    /// current one is `live.table()`.
    pub table: Arc<Table>,
    /// The running configuration and table, swapped by reloads.
    pub live: Arc<Live>,
    /// Per-worker statistics.
    pub stats: Vec<Arc<Stats>>,
    /// Replication and shared-load state, when `[ha]` is configured.
    pub ha: Option<Arc<crate::ha::Status>>,
    ha_thread: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    prober: Option<JoinHandle<()>>,
    prober_addr: SocketAddr,
    io: &'static str,
    controller: Controller,
    connections: Arc<stream::ConnLimits>,
}

impl Runtime {
    /// The prober's local address (where health probes come from).
    pub fn prober_addr(&self) -> SocketAddr {
        self.prober_addr
    }

    /// The I/O path in use: `"io_uring"` or `"epoll"`.
    pub fn io(&self) -> &'static str {
        self.io
    }

    /// Stream connections open now (all workers).
    pub fn connections(&self) -> usize {
        self.connections.total()
    }

    /// Binds every socket, then starts the workers. Fails before any
    /// thread starts when a socket cannot be bound.
    pub fn start(cfg: Arc<Config>) -> Result<Runtime, RuntimeError> {
        Runtime::start_live(Arc::new(Live::new(cfg, None)))
    }

    /// [`Runtime::start`] on a [`Live`] state: the workers pick up each
    /// snapshot its reloads install.
    pub fn start_live(live: Arc<Live>) -> Result<Runtime, RuntimeError> {
        // Generation first: a reload in between is then picked up again.
        let generation = live.generation();
        let first = live.snapshot();
        let cfg = first.config.clone();
        let use_uring = match cfg.io {
            IoMode::Epoll => false,
            IoMode::Auto | IoMode::IoUring => match uring::available() {
                Ok(()) => true,
                Err(e) => {
                    let msg = "io_uring unavailable, using epoll with recvmmsg/sendmmsg";
                    if cfg.io == IoMode::IoUring {
                        tracing::warn!(error = %e, "{msg}");
                    } else {
                        tracing::info!(error = %e, "{msg}");
                    }
                    false
                }
            },
        };
        let table = first.table.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let n = cfg.workers;
        let epoch = epoch();
        for &addr in &cfg.listen {
            udp::check_free(addr, cfg.freebind).map_err(|source| RuntimeError::Bind { addr, source })?;
        }
        let probe_socket =
            udp::bind_blocking(cfg.probing.address, cfg.freebind).map_err(|source| RuntimeError::Bind {
                addr: cfg.probing.address,
                source,
            })?;
        let ha = crate::ha::Ha::new(&cfg);
        for &addr in cfg.listen_tcp.iter().chain(&cfg.listen_tls) {
            stream::check_free(addr, cfg.freebind).map_err(|source| RuntimeError::Bind { addr, source })?;
        }
        let tls = match &cfg.tls {
            Some(t) => {
                if t.backend_ca.is_none() {
                    tracing::warn!("tls.backend_ca is not set: backends' TLS certificates are not verified");
                }
                Some(tls::load(t)?)
            }
            None => None,
        };
        let connections = Arc::new(stream::ConnLimits::default());
        let mut sockets = Vec::new();
        for i in 0..n {
            let mut publics = Vec::new();
            for &addr in &cfg.listen {
                publics.push(
                    udp::bind_with(addr, true, cfg.socket_buffer, cfg.freebind)
                        .map_err(|source| RuntimeError::Bind { addr, source })?,
                );
            }
            let addr = SocketAddr::new(cfg.internal_ip, cfg.internal_port_base + i as u16);
            let internal = udp::bind_with(addr, false, cfg.socket_buffer, cfg.freebind)
                .map_err(|source| RuntimeError::Bind { addr, source })?;
            let mut listeners = Vec::new();
            for (list, transport) in [(&cfg.listen_tcp, Transport::Tcp), (&cfg.listen_tls, Transport::Tls)] {
                for &addr in list {
                    listeners.push((
                        stream::listen(addr, cfg.freebind).map_err(|source| RuntimeError::Bind { addr, source })?,
                        transport,
                    ));
                }
            }
            sockets.push((publics, internal, listeners));
        }
        let mut wakers = Vec::new();
        let mut queues: Vec<(Sender<HandOff>, Receiver<HandOff>)> = Vec::new();
        for _ in 0..n {
            wakers.push(Arc::new(udp::EventFd::new().map_err(|source| RuntimeError::Io {
                what: "eventfd",
                source,
            })?));
            queues.push(crossbeam_channel::bounded(cfg.limits.handoff_queue));
        }
        let senders: Vec<Sender<HandOff>> = queues.iter().map(|q| q.0.clone()).collect();
        let controls: Vec<(Sender<ControlMsg>, Receiver<ControlMsg>)> =
            (0..n).map(|_| crossbeam_channel::bounded(CONTROL_QUEUE)).collect();
        let controller = Controller {
            senders: controls.iter().map(|c| c.0.clone()).collect(),
            wakers: wakers.clone(),
        };
        let mut control_rx = controls.into_iter().map(|c| c.1);
        let cores = if cfg.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut workers = Vec::new();
        let mut all_stats = Vec::new();
        for (i, ((publics, internal, listeners), (_, rx))) in sockets.into_iter().zip(queues).enumerate() {
            let stats = Arc::new(Stats::default());
            all_stats.push(stats.clone());
            let streams = stream::Streams::new(
                i as u16,
                listeners,
                tls.clone(),
                connections.clone(),
                cfg.tcp,
                cfg.limits.max_message_size,
                stats.clone(),
            )
            .map_err(|source| RuntimeError::Io {
                what: "stream epoll",
                source,
            })?;
            let seed = u64::from(epoch) << 16 | i as u64;
            let proxy = Proxy::new(cfg.clone(), table.clone(), stats.clone(), i as u16, epoch, seed);
            let w = Worker {
                index: i,
                proxy,
                publics,
                internal,
                streams,
                incoming: Vec::new(),
                inbox: rx,
                control: control_rx.next().expect("one control queue per worker"),
                peers: senders.clone(),
                wakers: wakers.clone(),
                stop: stop.clone(),
                stats,
                max_message: cfg.limits.max_message_size,
                use_uring,
                live: live.clone(),
                generation,
                ha: ha.as_ref().map(|h| h.link(i)),
            };
            let core = cores.get(i % cores.len().max(1)).copied();
            let handle = std::thread::Builder::new()
                .name(format!("siplb-w{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(c) {
                            tracing::warn!(worker = i, "could not pin to a core");
                        }
                    }
                    w.run();
                })
                .map_err(|source| RuntimeError::Io {
                    what: "spawn worker",
                    source,
                })?;
            workers.push(handle);
        }
        let probe_live = live.clone();
        let (prober_addr, prober) = prober::start(
            probe_socket,
            cfg.advertised.ip(),
            crate::probe::Settings::from_config(&cfg),
            cfg.probing.clone(),
            move || probe_live.table(),
            stop.clone(),
        )
        .map_err(|source| RuntimeError::Io {
            what: "spawn prober",
            source,
        })?;
        let ha_status = ha.as_ref().map(|h| h.status());
        let ha_thread = match ha {
            Some(h) => {
                let ha_stop = Arc::new(AtomicBool::new(false));
                let t = h
                    .start(cfg.clone(), live.clone(), wakers.clone(), ha_stop.clone())
                    .map_err(|source| RuntimeError::Io {
                        what: "spawn HA thread",
                        source,
                    })?;
                Some((t, ha_stop))
            }
            None => None,
        };
        tracing::info!(
            io = if use_uring { "io_uring" } else { "epoll" },
            workers = n,
            listen = ?cfg.listen,
            listen_tcp = ?cfg.listen_tcp,
            listen_tls = ?cfg.listen_tls,
            internal = %SocketAddr::new(cfg.internal_ip, cfg.internal_port_base),
            "siplb running"
        );
        Ok(Runtime {
            table,
            live,
            stats: all_stats,
            ha: ha_status,
            ha_thread,
            stop,
            workers,
            prober: Some(prober),
            prober_addr,
            io: if use_uring { "io_uring" } else { "epoll" },
            controller,
            connections,
        })
    }

    /// The admin side of the workers' control queues.
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// The flag that stops the workers.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Asks the workers to stop and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
        if let Some(p) = self.prober {
            let _ = p.join();
        }
        if let Some((t, stop)) = self.ha_thread {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }

    /// Statistics summed over workers, in declaration order.
    pub fn statistics(&self) -> Vec<(&'static str, u64)> {
        sum_stats(&self.stats)
    }
}

/// Sums per-worker statistics.
pub fn sum_stats(stats: &[Arc<Stats>]) -> Vec<(&'static str, u64)> {
    let mut total: Vec<(&'static str, u64)> = Vec::new();
    for s in stats {
        for (i, (name, v)) in s.snapshot().into_iter().enumerate() {
            match total.get_mut(i) {
                Some(t) => t.1 += v,
                None => total.push((name, v)),
            }
        }
    }
    total
}

/// A per-process value that differs between restarts.
pub(crate) fn epoch() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_secs() as u32).wrapping_mul(2_654_435_761) ^ t.subsec_nanos() ^ std::process::id()
}

const INTERNAL_TOKEN: u64 = 1 << 32;
const WAKE_TOKEN: u64 = 2 << 32;
const STREAM_TOKEN: u64 = 3 << 32;
const BATCH: usize = 32;

struct Worker {
    index: usize,
    proxy: Proxy,
    publics: Vec<UdpSocket>,
    internal: UdpSocket,
    streams: stream::Streams,
    incoming: Vec<stream::Incoming>,
    inbox: Receiver<HandOff>,
    control: Receiver<ControlMsg>,
    peers: Vec<Sender<HandOff>>,
    wakers: Vec<Arc<udp::EventFd>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    max_message: usize,
    use_uring: bool,
    live: Arc<Live>,
    /// The generation of the snapshot the proxy holds.
    generation: u64,
    ha: Option<crate::ha::WorkerLink>,
}

impl Worker {
    /// Takes the newest snapshot when a reload installed one (one relaxed
    /// load per loop turn otherwise).
    fn pick_up(&mut self) {
        let g = self.live.generation();
        if g != self.generation {
            let s = self.live.snapshot();
            self.proxy.reload(s.config.clone(), s.table.clone());
            self.generation = g;
            tracing::debug!(worker = self.index, generation = g, "new configuration picked up");
        }
    }

    fn run(mut self) {
        let result = if self.use_uring {
            match self.setup_uring().and_then(|ring| self.run_uring(ring)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // The sockets and the proxy are intact: carry on with epoll.
                    tracing::warn!(worker = self.index, error = %e, "io_uring failed, using epoll");
                    self.run_loop()
                }
            }
        } else {
            self.run_loop()
        };
        if let Err(e) = result {
            tracing::error!(worker = self.index, error = %e, "worker failed");
        }
        self.proxy.shutdown();
        self.flush();
        self.streams.close_all();
        tracing::debug!(worker = self.index, "worker stopped");
    }

    fn run_loop(&mut self) -> std::io::Result<()> {
        let epoll = udp::Epoll::new()?;
        for (i, s) in self.publics.iter().enumerate() {
            epoll.add(s.as_raw_fd(), i as u64)?;
        }
        epoll.add(self.internal.as_raw_fd(), INTERNAL_TOKEN)?;
        let waker = self.wakers[self.index].clone();
        epoll.add(waker.raw(), WAKE_TOKEN)?;
        epoll.add(self.streams.fd(), STREAM_TOKEN)?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 16];
        // One byte more than the limit, so oversized datagrams are seen as such.
        let mut batch = udp::RecvBatch::new(BATCH, self.max_message + 1);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .proxy
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| {
                    // Round up so the timer is due when we wake.
                    t.saturating_duration_since(now) + Duration::from_micros(999)
                })
                .min(Duration::from_millis(100));
            let n = epoll.wait(&mut events, wait)?;
            // After the wait: what woke us is handled with the newest
            // snapshot (a reload acknowledged before it was sent applies).
            self.pick_up();
            for ev in &events[..n] {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    waker.drain();
                    continue;
                }
                if token == STREAM_TOKEN {
                    self.poll_streams(Instant::now());
                    self.flush();
                    continue;
                }
                let (fd, local) = if token == INTERNAL_TOKEN {
                    (self.internal.as_raw_fd(), Local::Internal)
                } else {
                    let i = token as usize;
                    (self.publics[i].as_raw_fd(), Local::Public(i as u8))
                };
                // Bounded so one busy socket cannot starve the rest.
                for _ in 0..8 {
                    let got = match batch.recv(fd) {
                        Ok(n) => n,
                        // ICMP feedback for an earlier send: try again.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e),
                    };
                    let now = Instant::now();
                    for i in 0..got {
                        if let Some((bytes, src, truncated)) = batch.get(i) {
                            if truncated {
                                Stats::inc(&self.stats.rx_datagrams);
                                Stats::inc(&self.stats.drop_too_big);
                                continue;
                            }
                            self.input(now, local, src, bytes);
                        }
                    }
                    self.flush();
                    if got < BATCH {
                        break;
                    }
                }
            }
            let now = Instant::now();
            self.drain_inbox(now);
            self.control(now);
            if let Some(ha) = &self.ha {
                ha.pump(&mut self.proxy, now);
            }
            if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
                self.proxy.handle_timeout(now);
            }
            self.streams.sweep(now);
            self.flush();
        }
        Ok(())
    }

    /// Feeds what other workers passed over.
    fn drain_inbox(&mut self, now: Instant) {
        while let Ok(h) = self.inbox.try_recv() {
            match h {
                HandOff::Message { local, src, bytes } => {
                    self.proxy.handle_datagram(now, local, src, &bytes, true);
                }
                HandOff::Send(t) => {
                    // Sent::Foreign cannot happen: it names this worker.
                    let _ = self.streams.send(now, t.local, t.dst, &t.payload);
                }
            }
        }
    }

    /// Reads the stream connections and feeds their messages to the proxy.
    fn poll_streams(&mut self, now: Instant) {
        let mut incoming = std::mem::take(&mut self.incoming);
        self.streams.poll(now, &mut incoming);
        for m in incoming.drain(..) {
            self.input(now, m.local, m.src, &m.bytes);
        }
        self.incoming = incoming;
    }

    /// Sends a stream transmit, or passes it to the worker that owns its
    /// connection.
    fn send_stream(&mut self, now: Instant, t: Transmit) {
        if let stream::Sent::Foreign(w) = self.streams.send(now, t.local, t.dst, &t.payload) {
            let w = usize::from(w);
            match self.peers.get(w).map(|p| p.try_send(HandOff::Send(t))) {
                Some(Ok(())) => self.wakers[w].notify(),
                _ => Stats::inc(&self.stats.drop_handoff),
            }
        }
    }

    fn setup_uring(&self) -> std::io::Result<uring::Uring> {
        // Room for the recvmsg header and the address before the payload.
        let mut ring = uring::Uring::new(128, self.max_message + 1 + 256)?;
        let mut fds: Vec<std::os::fd::RawFd> = self.publics.iter().map(|s| s.as_raw_fd()).collect();
        fds.push(self.internal.as_raw_fd());
        ring.arm(&fds, self.wakers[self.index].raw())?;
        ring.arm_streams(self.streams.fd())?;
        Ok(ring)
    }

    /// The io_uring loop: same steps as [`Worker::run_loop`].
    fn run_uring(&mut self, mut ring: uring::Uring) -> std::io::Result<()> {
        let internal_index = self.publics.len();
        let waker = self.wakers[self.index].clone();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .proxy
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(now) + Duration::from_micros(999)
                })
                .min(Duration::from_millis(100));
            ring.wait(wait)?;
            self.pick_up();
            let now = Instant::now();
            let mut streams_ready = false;
            let send_errors = ring.dispatch(|ev| match ev {
                uring::Event::Datagram {
                    socket,
                    src,
                    bytes,
                    truncated,
                } => {
                    if truncated || bytes.len() > self.max_message {
                        Stats::inc(&self.stats.rx_datagrams);
                        Stats::inc(&self.stats.drop_too_big);
                        return;
                    }
                    let local = if socket == internal_index {
                        Local::Internal
                    } else {
                        Local::Public(socket as u8)
                    };
                    self.input(now, local, src, bytes);
                }
                uring::Event::Wake => waker.drain(),
                uring::Event::Streams => streams_ready = true,
            })?;
            if send_errors > 0 {
                self.stats.drop_send.fetch_add(send_errors, Ordering::Relaxed);
            }
            // The ring's poll of the streams' epoll descriptor fires on
            // new readiness; connections still readable after a bounded
            // round (level-triggered inside) are picked up here.
            if streams_ready || self.streams.has_more() {
                self.poll_streams(now);
            }
            self.drain_inbox(now);
            self.control(now);
            if let Some(ha) = &self.ha {
                ha.pump(&mut self.proxy, now);
            }
            if self.proxy.poll_timeout().is_some_and(|t| t <= now) {
                self.proxy.handle_timeout(now);
            }
            self.streams.sweep(now);
            self.transmit_uring(&mut ring, now)?;
        }
        // Send what shutdown produces, then let the ring finish.
        self.proxy.shutdown();
        self.transmit_uring(&mut ring, Instant::now())?;
        ring.wait(Duration::from_millis(10))?;
        Ok(())
    }

    /// Sends what the proxy produced: datagrams through the ring, stream
    /// messages on their connections.
    fn transmit_uring(&mut self, ring: &mut uring::Uring, now: Instant) -> std::io::Result<()> {
        while let Some(t) = self.proxy.poll_transmit() {
            let fd = match t.local {
                Local::Internal => self.internal.as_raw_fd(),
                Local::Public(i) => match self.publics.get(usize::from(i)) {
                    Some(s) => s.as_raw_fd(),
                    None => continue,
                },
                Local::Conn(_) | Local::Connect(_) => {
                    self.send_stream(now, t);
                    continue;
                }
            };
            ring.send(fd, t.dst, t.payload)?;
        }
        Ok(())
    }

    /// Answers the pending control requests.
    fn control(&mut self, now: Instant) {
        while let Ok(c) = self.control.try_recv() {
            let r = self.proxy.handle_control(now, c.cmd);
            let _ = c.reply.try_send(r);
        }
    }

    fn input(&mut self, now: Instant, local: Local, src: SocketAddr, bytes: &[u8]) {
        if let Disposition::HandOff(w) = self.proxy.handle_datagram(now, local, src, bytes, false) {
            let w = usize::from(w);
            let Some(peer) = self.peers.get(w) else {
                // Not a worker of this process (a stale id): handle here.
                self.proxy.handle_datagram(now, local, src, bytes, true);
                return;
            };
            let h = HandOff::Message {
                local,
                src,
                bytes: bytes.to_vec(),
            };
            match peer.try_send(h) {
                Ok(()) => self.wakers[w].notify(),
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    Stats::inc(&self.stats.drop_handoff);
                }
            }
        }
    }

    fn flush(&mut self) {
        let mut internal: Vec<Transmit> = Vec::new();
        let mut public: Vec<Transmit> = Vec::new();
        let now = Instant::now();
        while let Some(t) = self.proxy.poll_transmit() {
            match t.local {
                Local::Internal => internal.push(t),
                Local::Public(_) => public.push(t),
                Local::Conn(_) | Local::Connect(_) => self.send_stream(now, t),
            }
        }
        let mut failed = 0;
        if !internal.is_empty() {
            let items: Vec<(SocketAddr, &[u8])> = internal.iter().map(|t| (t.dst, &t.payload[..])).collect();
            failed += items.len() - udp::send_batch(self.internal.as_raw_fd(), &items);
        }
        for (i, s) in self.publics.iter().enumerate() {
            let items: Vec<(SocketAddr, &[u8])> = public
                .iter()
                .filter(|t| t.local == Local::Public(i as u8))
                .map(|t| (t.dst, &t.payload[..]))
                .collect();
            if !items.is_empty() {
                failed += items.len() - udp::send_batch(s.as_raw_fd(), &items);
            }
        }
        if failed > 0 {
            self.stats.drop_send.fetch_add(failed as u64, Ordering::Relaxed);
        }
    }
}
