//! The runtime: one pinned thread per core, each with its own UDP socket
//! and its own state machine, batched socket I/O, rate pacing, and
//! periodic sampling of the merged statistics.
//!
//! Threads share nothing on the data path. Each keeps its own
//! [`Stats`] and adds them into the shared copy four times per second;
//! the calling thread samples the shared copy once per period for the
//! progress line, the `-trace_stat` CSV and the HTML report.
//!
//! UAC threads each bind their own port, so the replies to a thread's
//! calls come back to that thread. UAS threads share one port with
//! SO_REUSEPORT; the kernel hashes each source address to one of them,
//! so a dialog from one source stays on one thread.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::{self, Socket, BATCH};
use crate::sip::Outbox;
use crate::stats::Stats;
use crate::uac::{Uac, UacConfig};
use crate::uas::{Uas, UasConfig};

static STOP: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.fetch_add(1, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM request a graceful stop (a second one stops
/// at once), as SIPp does.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Number of stop signals received so far.
pub fn stop_requests() -> usize {
    STOP.load(Ordering::Relaxed)
}

/// What the runtime needs from a state machine.
pub trait Engine: Send {
    /// See [`Uac::handle_datagram`].
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]);
    /// See [`Uac::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// See [`Uac::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Datagrams to send.
    fn outbox(&mut self) -> &mut Outbox;
    /// The engine's statistics.
    fn stats(&mut self) -> &mut Stats;
    /// Calls with live state.
    fn active_calls(&self) -> usize;
    /// Places a call (UAC only).
    fn start_call(&mut self, _now: Instant) {}
    /// Calls without outcome yet (UAC only).
    fn pending_outcomes(&self) -> u64 {
        0
    }
}

impl Engine for Uac {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        Uac::handle_datagram(self, now, src, data)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Uac::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Uac::poll_timeout(self)
    }
    fn outbox(&mut self) -> &mut Outbox {
        Uac::outbox(self)
    }
    fn stats(&mut self) -> &mut Stats {
        Uac::stats(self)
    }
    fn active_calls(&self) -> usize {
        Uac::active_calls(self)
    }
    fn start_call(&mut self, now: Instant) {
        Uac::start_call(self, now)
    }
    fn pending_outcomes(&self) -> u64 {
        Uac::pending_outcomes(self)
    }
}

impl Engine for Uas {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        Uas::handle_datagram(self, now, src, data)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Uas::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Uas::poll_timeout(self)
    }
    fn outbox(&mut self) -> &mut Outbox {
        Uas::outbox(self)
    }
    fn stats(&mut self) -> &mut Stats {
        Uas::stats(self)
    }
    fn active_calls(&self) -> usize {
        Uas::active_calls(self)
    }
}

/// Common runtime settings.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub threads: usize,
    /// Pin workers to cores.
    pub pin: bool,
    /// Cores to pin to (thread i → `cpus[i % len]`); empty = all cores in
    /// order. Lets a UAC and a UAS on one machine use different cores.
    pub cpus: Vec<usize>,
    /// Sampling period of the reports.
    pub period: Duration,
    /// Stop after this long (UAC: stop placing calls; UAS: stop).
    pub duration: Option<Duration>,
    /// Stop after this many calls (UAC: placed; UAS: ended).
    pub calls: Option<u64>,
    /// Log every datagram sent and received to `PATH.N` (thread N), as
    /// SIPp's `-trace_msg` does. Slow: for debugging only.
    pub trace_msg: Option<std::path::PathBuf>,
}

/// UAC pacing.
#[derive(Clone, Debug)]
pub struct UacRun {
    /// Template for every thread's engine (local address and instance
    /// are filled in per thread).
    pub config: UacConfig,
    /// Local IP to bind.
    pub local_ip: IpAddr,
    /// First local port (thread i binds port + i); 0 = any.
    pub local_port: u16,
    /// Calls per second over all threads.
    pub rate: f64,
    /// Most calls alive at once over all threads (0 = no limit).
    pub max_concurrent: usize,
}

/// One sampling period.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the start, at the end of the period.
    pub elapsed: f64,
    /// Length of the period in seconds.
    pub period: f64,
    /// What happened during the period.
    pub interval: Stats,
    /// Calls alive at the end of the period.
    pub current_calls: u64,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunResult {
    /// Everything, merged over threads.
    pub stats: Stats,
    /// Wall time from start to the last thread's exit.
    pub elapsed: Duration,
    /// Time during which calls were being placed (UAC), else `elapsed`.
    pub placing: Duration,
    /// CPU time of all worker threads.
    pub cpu: Duration,
    /// The periodic samples.
    pub samples: Vec<Sample>,
    /// Local addresses bound.
    pub local: Vec<SocketAddr>,
}

struct Shared {
    total: Mutex<Stats>,
    interval: Mutex<Stats>,
    active: Vec<AtomicU64>,
    ended: AtomicU64,
    stop: AtomicBool,
    placing_until: Mutex<Option<Instant>>,
}

impl Shared {
    fn new(threads: usize) -> Shared {
        Shared {
            total: Mutex::new(Stats::default()),
            interval: Mutex::new(Stats::default()),
            active: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            ended: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            placing_until: Mutex::new(None),
        }
    }

    fn publish(&self, local: &mut Stats) {
        if let Ok(mut t) = self.total.lock() {
            t.merge(local);
        }
        if let Ok(mut i) = self.interval.lock() {
            i.merge(local);
        }
        local.reset();
    }
}

struct Pacer {
    start: Instant,
    rate: f64,
    quota: Option<u64>,
    until: Option<Instant>,
    limit: usize,
    started: u64,
}

impl Pacer {
    fn due(&self, now: Instant) -> u64 {
        let n = (now.saturating_duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1;
        self.quota.map_or(n, |q| n.min(q))
    }

    fn next_at(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.started as f64 / self.rate)
    }

    fn finished(&self, now: Instant) -> bool {
        self.quota.is_some_and(|q| self.started >= q) || self.until.is_some_and(|u| now >= u)
    }
}

/// Timer and pacing granularity.
const TICK: Duration = Duration::from_millis(1);
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How long a UAC thread waits for cleanup (CANCEL/487 exchanges) after
/// the last outcome was counted.
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// The optional per-thread message log.
struct Trace {
    out: Option<std::io::BufWriter<std::fs::File>>,
    start: Instant,
}

impl Trace {
    fn open(path: Option<&std::path::Path>, index: usize) -> Trace {
        let out = path.and_then(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push(format!(".{index}"));
            std::fs::File::create(name).ok().map(std::io::BufWriter::new)
        });
        Trace {
            out,
            start: Instant::now(),
        }
    }

    fn log(&mut self, what: &str, peer: SocketAddr, data: &[u8]) {
        use std::io::Write;
        if let Some(out) = self.out.as_mut() {
            let t = self.start.elapsed().as_secs_f64();
            let _ = writeln!(out, "----- {t:.6} {what} {peer} ({} bytes)", data.len());
            let _ = out.write_all(data);
            let _ = writeln!(out);
        }
    }

    fn enabled(&self) -> bool {
        self.out.is_some()
    }
}

struct Worker<'a> {
    sock: Socket,
    pacer: Option<Pacer>,
    shared: &'a Shared,
    index: usize,
    calls_to_end: Option<u64>,
    trace: Trace,
}

fn worker<E: Engine>(w: Worker<'_>, engine: &mut E) -> Duration {
    let Worker {
        mut sock,
        mut pacer,
        shared,
        index,
        calls_to_end,
        mut trace,
    } = w;
    let mut last_publish = Instant::now();
    let mut busy = false;
    let mut outcomes_done_at: Option<Instant> = None;
    let mut placing = pacer.is_some();
    loop {
        let now = Instant::now();
        let stop = shared.stop.load(Ordering::Relaxed) || stop_requests() > 0;
        if let Some(p) = pacer.as_mut() {
            if placing && (stop || p.finished(now)) {
                placing = false;
                if let Ok(mut u) = shared.placing_until.lock() {
                    *u = Some(u.map_or(now, |u| u.max(now)));
                }
            }
            if placing {
                let due = p.due(now);
                let mut burst = 0;
                while p.started < due && (p.limit == 0 || engine.active_calls() < p.limit) && burst < 1024 {
                    engine.start_call(now);
                    p.started += 1;
                    burst += 1;
                }
            }
        }
        engine.handle_timeout(now);
        flush(&mut sock, engine, &mut trace);

        // Exit?
        if stop_requests() > 1 {
            break;
        }
        if pacer.is_some() {
            if !placing && engine.pending_outcomes() == 0 {
                let done = *outcomes_done_at.get_or_insert(now);
                if engine.active_calls() == 0 || now >= done + CLEANUP_GRACE {
                    break;
                }
            }
        } else if stop || calls_to_end.is_some_and(|m| shared.ended.load(Ordering::Relaxed) >= m) {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }

        // Sleep until something is due.
        if !busy {
            let mut wake = last_publish + PUBLISH_EVERY;
            if let Some(t) = engine.poll_timeout() {
                wake = wake.min(t);
            }
            if let Some(p) = pacer.as_ref().filter(|_| placing) {
                if p.limit == 0 || engine.active_calls() < p.limit {
                    wake = wake.min(p.next_at());
                }
            }
            // Coalesce wake-ups: timers and pacing run at most once per
            // TICK (a datagram still wakes us at once), which saves a
            // sleep/wake pair per call at high rates.
            let now = Instant::now();
            if wake > now {
                sock.wait((wake - now).clamp(TICK, Duration::from_millis(100)));
            }
        }
        busy = false;
        for _ in 0..8 {
            let n = sock.recv_batch().unwrap_or_default();
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for i in 0..n {
                if let Some((src, data)) = sock.datagram(i) {
                    if trace.enabled() {
                        trace.log("received from", src, data);
                    }
                    engine.handle_datagram(now, src, data);
                }
            }
            flush(&mut sock, engine, &mut trace);
            if n < BATCH {
                break;
            }
            busy = true;
        }

        let now = Instant::now();
        if now >= last_publish + PUBLISH_EVERY {
            last_publish = now;
            publish(shared, engine, index);
        }
    }
    publish(shared, engine, index);
    shared.active[index].store(0, Ordering::Relaxed);
    net::thread_cpu_time()
}

fn publish<E: Engine>(shared: &Shared, engine: &mut E, index: usize) {
    shared.active[index].store(engine.active_calls() as u64, Ordering::Relaxed);
    let st = engine.stats();
    shared.ended.fetch_add(st.calls_ended(), Ordering::Relaxed);
    shared.publish(st);
}

fn flush<E: Engine>(sock: &mut Socket, engine: &mut E, trace: &mut Trace) {
    let out = engine.outbox();
    if out.is_empty() {
        return;
    }
    if trace.enabled() {
        for (dst, data) in out.iter() {
            trace.log("sent to", dst, data);
        }
    }
    let (sent, failed) = sock.send_all(out);
    out.clear();
    let st = engine.stats();
    st.datagrams_sent += sent;
    st.send_errors += failed;
}

fn pin(index: usize, cpus: &[usize]) {
    let Some(cores) = core_affinity::get_core_ids() else {
        return;
    };
    let core = if cpus.is_empty() {
        cores.get(index % cores.len().max(1))
    } else {
        let want = cpus[index % cpus.len()];
        cores.iter().find(|c| c.id == want)
    };
    if let Some(c) = core {
        core_affinity::set_for_current(*c);
    }
}

/// Default number of threads: the cores available.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The local IP the kernel would use to reach `target`.
pub fn local_ip_for(target: SocketAddr) -> IpAddr {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    UdpSocket::bind(any)
        .and_then(|s| s.connect(target).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(any.ip())
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) & 0x0fff_ffff_ffff_ff00
}

/// Samples the shared statistics every `period` until `done` says so,
/// handing each sample to `observe`.
fn sample_loop(
    shared: &Shared,
    start: Instant,
    period: Duration,
    done: &dyn Fn() -> bool,
    observe: &mut dyn FnMut(&Sample, &Stats),
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut last = start;
    let mut next = start + period;
    loop {
        let finished = done();
        let now = Instant::now();
        if now >= next || finished {
            let interval = match shared.interval.lock() {
                Ok(mut i) => {
                    let copy = i.clone();
                    i.reset();
                    copy
                }
                Err(_) => Stats::default(),
            };
            let sample = Sample {
                elapsed: now.duration_since(start).as_secs_f64(),
                period: now.duration_since(last).as_secs_f64(),
                interval,
                current_calls: shared.active.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
            };
            if let Ok(total) = shared.total.lock() {
                observe(&sample, &total);
            }
            samples.push(sample);
            last = now;
            next += period;
            if next < now {
                next = now + period;
            }
        }
        if finished {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a UAC until its calls are placed and ended.
pub fn run_uac(
    run: &UacRun,
    opts: &RunOptions,
    observe: &mut dyn FnMut(&Sample, &Stats),
) -> std::io::Result<RunResult> {
    let threads = opts.threads.max(1);
    let mut socks = Vec::new();
    for i in 0..threads {
        let port = if run.local_port == 0 {
            0
        } else {
            run.local_port.saturating_add(i as u16)
        };
        socks.push(Socket::bind(SocketAddr::new(run.local_ip, port), false)?);
    }
    let locals: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr()).collect::<Result<_, _>>()?;
    let shared = Shared::new(threads);
    let start = Instant::now();
    let seed = seed();
    let per_thread = |total: u64, i: usize| total / threads as u64 + u64::from((i as u64) < total % threads as u64);
    let cpu = Mutex::new(Duration::ZERO);
    let mut samples = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, sock) in socks.into_iter().enumerate() {
            let mut config = run.config.clone();
            config.local = locals[i];
            config.instance = seed + i as u64;
            let rate = run.rate / threads as f64;
            let pacer = Pacer {
                // Spread the threads' first calls over one interval.
                start: start + Duration::from_secs_f64(i as f64 / run.rate.max(1e-9)),
                rate,
                quota: opts.calls.map(|m| per_thread(m, i)),
                until: opts.duration.map(|d| start + d),
                limit: if run.max_concurrent == 0 {
                    0
                } else {
                    (run.max_concurrent.div_ceil(threads)).max(1)
                },
                started: 0,
            };
            let shared = &shared;
            let cpu = &cpu;
            let pin_it = opts.pin;
            let cpus = &opts.cpus;
            let trace_path = opts.trace_msg.as_deref();
            handles.push(scope.spawn(move || {
                if pin_it {
                    pin(i, cpus);
                }
                let w = Worker {
                    sock,
                    pacer: Some(pacer),
                    shared,
                    index: i,
                    calls_to_end: None,
                    trace: Trace::open(trace_path, i),
                };
                let t = worker(w, &mut Uac::new(config));
                if let Ok(mut c) = cpu.lock() {
                    *c += t;
                }
            }));
        }
        let done = || handles.iter().all(|h| h.is_finished());
        samples = sample_loop(&shared, start, opts.period, &done, observe);
    });
    let elapsed = start.elapsed();
    let placing = shared
        .placing_until
        .lock()
        .ok()
        .and_then(|u| *u)
        .map_or(elapsed, |u| u.saturating_duration_since(start));
    let stats = shared.total.into_inner().unwrap_or_default();
    Ok(RunResult {
        stats,
        elapsed,
        placing,
        cpu: cpu.into_inner().unwrap_or_default(),
        samples,
        local: locals,
    })
}

/// Binds the UAS sockets (all threads on one port with SO_REUSEPORT; port
/// 0 picks a free one). Returns them with the bound address.
pub fn bind_uas(addr: SocketAddr, threads: usize) -> std::io::Result<(Vec<Socket>, SocketAddr)> {
    let first = Socket::bind(addr, true)?;
    let bound = first.local_addr()?;
    let mut socks = vec![first];
    for _ in 1..threads.max(1) {
        socks.push(Socket::bind(bound, true)?);
    }
    Ok((socks, bound))
}

/// Runs a UAS on bound sockets until stopped (signal, duration or
/// `opts.calls` calls ended).
pub fn run_uas(
    socks: Vec<Socket>,
    config: &UasConfig,
    opts: &RunOptions,
    observe: &mut dyn FnMut(&Sample, &Stats),
) -> std::io::Result<RunResult> {
    let threads = socks.len();
    let local = socks.first().map(|s| s.local_addr()).transpose()?.into_iter().collect();
    let shared = Shared::new(threads);
    let start = Instant::now();
    let seed = seed();
    let cpu = Mutex::new(Duration::ZERO);
    let mut samples = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, sock) in socks.into_iter().enumerate() {
            let mut config = config.clone();
            config.instance = seed + i as u64;
            let shared = &shared;
            let cpu = &cpu;
            let pin_it = opts.pin;
            let cpus = &opts.cpus;
            let trace_path = opts.trace_msg.as_deref();
            let calls = opts.calls;
            handles.push(scope.spawn(move || {
                if pin_it {
                    pin(i, cpus);
                }
                let w = Worker {
                    sock,
                    pacer: None,
                    shared,
                    index: i,
                    calls_to_end: calls,
                    trace: Trace::open(trace_path, i),
                };
                let t = worker(w, &mut Uas::new(config));
                if let Ok(mut c) = cpu.lock() {
                    *c += t;
                }
            }));
        }
        let deadline = opts.duration.map(|d| start + d);
        let done = || {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                shared.stop.store(true, Ordering::Relaxed);
            }
            handles.iter().all(|h| h.is_finished())
        };
        samples = sample_loop(&shared, start, opts.period, &done, observe);
    });
    let elapsed = start.elapsed();
    let stats = shared.total.into_inner().unwrap_or_default();
    Ok(RunResult {
        stats,
        elapsed,
        placing: elapsed,
        cpu: cpu.into_inner().unwrap_or_default(),
        samples,
        local,
    })
}
