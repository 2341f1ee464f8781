//! The sans-IO proxy core: transactions, dialogs, failover.
//!
//! No sockets, no clock, no threads. A [`Proxy`] is one worker's state; the
//! runtime (or a test) drives it:
//!
//! ```text
//! loop {
//!     for each datagram:  proxy.handle_datagram(now, local, remote, bytes)
//!                         (may answer HandOff(w): give the bytes to worker w)
//!     if now >= proxy.poll_timeout():  proxy.handle_timeout(now)
//!     while let Some(t) = proxy.poll_transmit():  send t.payload to t.dst from t.local
//! }
//! ```
//!
//! Load counters live in the shared [`Table`]; everything else belongs to
//! the worker. What siplb writes into messages makes them come back to the
//! owner: the Via branch (`z9hG4bKslb` + epoch, worker, slot, generation,
//! attempt; see [`msg::BranchId`]) and the `did` parameter of its
//! Record-Route URI ([`msg::DialogId`]).
//!
//! # Proxy transaction (one per request relayed statefully)
//! Server side (towards the sender of the request):
//! ```text
//! Proceeding --final non-2xx sent--> Completed --ACK--> Confirmed --T4--> gone
//!     |                                  |  retransmit final (T1 doubling to T2)
//!     |                                  +--64*T1 without ACK--> gone
//!     +--2xx sent--> Accepted --64*T1--> gone   (INVITE retransmissions absorbed)
//! ```
//! (non-INVITE: Proceeding --final--> Completed --64*T1--> gone.) A
//! retransmitted request is answered with the last response sent, if any.
//! INVITE gets 100 Trying at once.
//!
//! Client side (towards the destination), one attempt at a time:
//! ```text
//! Calling --1xx--> Proceeding --final--> Done
//!    | retransmit (T1 doubling; non-INVITE capped at T2)
//!    +--fr_timeout--> Done (local 408)      Proceeding --fr_inv_timeout--> CANCEL, Done (local 408)
//! ```
//! A non-2xx final to INVITE is ACKed hop by hop (again for each
//! retransmission). A final in the failover set, or a local 408, moves a
//! load-balanced call, or a request dispatched with flag `f` (INVITE or
//! not), to the next destination with a new branch (the attempt number
//! grows) while attempts and eligible destinations remain; otherwise the
//! final (or a 503) goes upstream. How the next one is chosen is the
//! transaction's `Selection`: again by load (the dialog's reservation moves
//! with it), or the next enabled, untried destination of the dispatcher's
//! order computed when the request arrived.
//!
//! # Dialog (one per load-balanced or dispatched INVITE, and per counted inbound call)
//! ```text
//! Early --2xx--> Confirmed --BYE (either side) / lifetime--> ended
//!   +--final failure / CANCEL / timeout / BYE / lifetime--> ended
//! ```
//! A dialog holds the load reservation ([`Hold`]) of its destination; the
//! transition to *ended* gives it back, exactly once (`Option::take`).
//! Counters: early, active (confirmed), processed, expired, failed.
//!
//! # Control (admin API)
//! [`Proxy::handle_control`] answers [`Control`] messages that the runtime
//! passes from the admin thread (the admin never touches a worker's
//! tables): list the dialogs (`dlg_list`), end the dialogs of a Call-ID
//! (`dlg_end`). Ending a confirmed dialog releases its load at once and
//! sends a BYE to each side, as siplb's own transactions (retransmitted
//! until answered or `fr_timeout`); an early dialog is CANCELled downstream
//! and ends with the 487 as a caller's CANCEL would.
//! # Replication (optional, `[ha]`)
//! With replication on, confirmed dialogs and their end are queued as
//! [`replica::DialogEvent`]s (drain with [`Proxy::poll_event`]); dialogs
//! loaded from another node come in with [`Proxy::adopt`] and are found by
//! Call-ID when the `did` in the Route does not name a live slot of this
//! process. [`Proxy::release_all`] drops every dialog without events (a
//! node that lost the virtual IP).
//!
//! # Timers
//! One [`timer::TimerWheel`] per proxy (10 ms ticks, 40.96 s span, a heap
//! beyond): a timer fires at most one tick late, never early. Entries are
//! cancelled lazily: a fired entry whose transaction or dialog moved on is
//! ignored.
//!
//! # Transports
//! A message arrives on a UDP socket or on a stream connection
//! ([`Local::Conn`], named by the runtime with a [`ConnId`]); the runtime
//! frames streams and passes one whole message at a time. Replies and
//! relayed responses go back on the [`Local`] the request came on. Requests
//! go to a destination over the transport its URI names ([`Local::Connect`]:
//! the runtime reuses a connection to that address or opens one). On a
//! stream siplb's Via says `TCP`/`TLS` with `;alias` (RFC 5923) and no
//! retransmission timers run (Timers A, E and G are for UDP only); Timers
//! B/F (`fr_timeout`, `fr_inv_timeout`) still do. When the two sides of a
//! call use different transports, siplb records two routes (RFC 5658): the
//! top one names its address for the destination's side, the second its
//! address for the caller's side, each with its `;transport=`; an in-dialog
//! request that carries both loses both, and goes out over the transport of
//! the second (unless the next URI names one).
//!
//! # Contract
//! No input panics the core. Every datagram is relayed, answered, absorbed
//! or dropped and counted in [`Stats`].

#![forbid(unsafe_code)]

mod dialog_info;
pub mod msg;
pub mod replica;
pub mod slab;
pub mod stats;
pub mod timer;
pub mod transport;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use siplb_parser::rewrite::{rewrite, Edit};
use siplb_parser::{scan_datagram, HeaderKind, Message, Method};

use crate::config::{Action, Config};
use crate::dispatch::{Algorithm, Candidate, DispatchFlags, MAX_CANDIDATES};
use crate::lb::{Flags, Hold, LbError, ResourceSet, Table, Tried, MAX_TRIES};
use dialog_info::{DialogInfo, Field};
use msg::{BranchId, DialogId};
use replica::{Adopted, Confirmed, DialogEvent};
use slab::{Key, Slab};
pub use stats::Stats;
use timer::TimerWheel;
pub use transport::{ConnId, Transport};

/// Granularity of the timer wheel: timers fire at most this much late.
const TICK: Duration = Duration::from_millis(10);

/// The most transaction-index entries reserved at start (32 bytes each
/// once used; see `Proxy::new`).
const MAX_INDEX_RESERVE: usize = 1 << 21;

/// Dead far timer entries tolerated beyond twice the live owners before
/// they are swept (see `Proxy::compact_timers`).
const FAR_SLACK: usize = 1024;

/// How the To tags of siplb's local replies start.
const LOCAL_TAG_PREFIX: &[u8] = b"slb";

/// RFC 3261 T4: how long a confirmed INVITE server transaction lingers.
const T4: Duration = Duration::from_secs(5);

/// The socket or connection a message came in on or goes out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// A public UDP listen address (index into `Config::listen`).
    Public(u8),
    /// The worker's private backend-facing UDP socket.
    Internal,
    /// A stream connection. On a [`Transmit`]: send on it; when it has
    /// closed meanwhile, the runtime handles a response as RFC 3261
    /// §18.2.2 says (a new connection to the `received` address and the
    /// sent-by port of its top Via, see [`msg::stream_fallback`]) and drops
    /// a request.
    Conn(ConnId),
    /// On a [`Transmit`] only: to `dst` over this stream transport, on a
    /// connection the worker already has to that address, else a new one.
    Connect(Transport),
}

impl Local {
    /// The transport of this socket or connection.
    pub fn transport(self) -> Transport {
        match self {
            Local::Public(_) | Local::Internal => Transport::Udp,
            Local::Conn(c) => c.transport,
            Local::Connect(t) => t,
        }
    }

    /// Where to send requests over `transport`: the internal UDP socket,
    /// or a (reused) connection.
    pub fn outbound(transport: Transport) -> Local {
        match transport {
            Transport::Udp => Local::Internal,
            t => Local::Connect(t),
        }
    }
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// From which socket.
    pub local: Local,
    /// To where.
    pub dst: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// An order or a question from the control plane (admin API) to one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// The worker's live dialogs, or only those with this Call-ID.
    ListDialogs {
        /// Only this Call-ID.
        call_id: Option<Vec<u8>>,
    },
    /// Ends the dialogs with this Call-ID (see the module docs).
    EndDialogs {
        /// The Call-ID.
        call_id: Vec<u8>,
    },
}

/// A worker's answer to a [`Control`].
#[derive(Clone, Debug)]
pub enum ControlReply {
    /// Answer to [`Control::ListDialogs`].
    Dialogs(Vec<DialogView>),
    /// Answer to [`Control::EndDialogs`]: how many were ended.
    Ended(usize),
}

/// A live dialog as `dlg_list` shows it.
#[derive(Clone, Debug)]
pub struct DialogView {
    /// The worker that owns it.
    pub worker: u16,
    /// Its slot.
    pub index: u32,
    /// The slot's generation.
    pub generation: u32,
    /// Confirmed (2xx seen), else early.
    pub confirmed: bool,
    /// Call-ID.
    pub call_id: String,
    /// The From URI.
    pub from_uri: String,
    /// The To URI.
    pub to_uri: String,
    /// The caller's tag.
    pub from_tag: String,
    /// The callee's tag (empty while early).
    pub to_tag: String,
    /// The caller's Contact URI.
    pub caller_contact: String,
    /// The callee's Contact URI (empty while early).
    pub callee_contact: String,
    /// The load the dialog holds (destination index and resources).
    pub hold: Option<Hold>,
    /// Where the call was sent.
    pub destination: Option<SocketAddr>,
    /// Time since the INVITE.
    pub age: Duration,
    /// Time left before the lifetime expires it.
    pub expires_in: Duration,
}

/// What became of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Processed here.
    Handled,
    /// It belongs to another worker: pass it there (and call
    /// `handle_datagram` on that worker with `handed_off = true`).
    HandOff(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Calling,
    Proceeding,
    Done,
}

/// A transaction's origin: relayed on behalf of a peer, or siplb's own
/// request (a BYE of `dlg_end`), which has no server side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Relayed,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancel {
    No,
    Pending,
    Sent,
}

/// How a request's destination was chosen, and is chosen again when it
/// fails (failover).
#[derive(Clone, Copy, Debug)]
enum Selection {
    /// A fixed next hop (relay, in-dialog, no failover): the failure goes
    /// upstream as it is.
    Fixed,
    /// `load_balance`: the next destination is chosen again by load and
    /// the dialog's reservation moves to it.
    Load {
        group: u32,
        resources: ResourceSet,
        flags: Flags,
    },
    /// `dispatch` with failover: the destinations in the algorithm's order,
    /// computed when the request arrived (the first is the one tried first).
    Dispatch(Order),
}

/// A dispatcher's failover order (destination indices, best first).
#[derive(Clone, Copy, Debug)]
struct Order {
    dests: [u16; MAX_TRIES],
    len: u8,
}

/// A proxy transaction: server side, current client attempt, call routing.
#[derive(Debug)]
struct Txn {
    origin: Origin,
    invite: bool,
    key: u64,
    src: SocketAddr,
    local: Local,
    /// The request as received.
    request: Vec<u8>,
    server: Server,
    last_response: Option<Vec<u8>>,
    g_interval: Duration,
    g_next: Option<Instant>,
    remove_at: Option<Instant>,
    client: Client,
    attempt: u8,
    dest: SocketAddr,
    /// Transport towards `dest`.
    dest_transport: Transport,
    /// The request as last sent downstream.
    out: Vec<u8>,
    a_interval: Duration,
    a_next: Option<Instant>,
    deadline: Option<Instant>,
    cancel: Cancel,
    dialog: Option<Key>,
    sel: Selection,
    tried: Tried,
    record_route: bool,
    /// How many of siplb's own Route values to remove (0, 1, or 2 after a
    /// double Record-Route).
    remove_routes: u8,
    scheduled: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialogState {
    Early,
    Confirmed,
}

/// Why a dialog ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Bye,
    Failed,
    Expired,
    Shutdown,
    Admin,
}

/// Bytes of one tracked dialog record (its slab slot included).
pub const DIALOG_SIZE: usize = std::mem::size_of::<Dialog>() + 8;

/// A tracked dialog. Small and fixed-size (see [`DIALOG_SIZE`]), plus the
/// boxed [`DialogInfo`] (what `dlg_list` shows and `dlg_end` needs).
#[derive(Debug)]
struct Dialog {
    state: DialogState,
    hold: Option<Hold>,
    call_id: u64,
    expires: Instant,
    info: Box<DialogInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Txn(u32, u32),
    Dialog(u32, u32),
}

/// One worker's proxy state; see the module docs for the call protocol.
#[derive(Debug)]
pub struct Proxy {
    cfg: Arc<Config>,
    table: Arc<Table>,
    stats: Arc<Stats>,
    worker: u16,
    epoch: u32,
    /// `SIP/2.0/<T> host:port` of siplb's Via towards backends, per transport.
    via_hosts: [Vec<u8>; 3],
    /// Sent-by of the Via of siplb's own UDP requests towards callers.
    public_via: Vec<u8>,
    /// `<sip:host:port[;transport=t];lr` of siplb's Record-Route, per transport.
    record_route_hosts: [Vec<u8>; 3],
    ours: Vec<SocketAddr>,
    txns: Slab<Txn>,
    index: HashMap<u64, Key>,
    dialogs: Slab<Dialog>,
    timers: TimerWheel<TimerRef>,
    expired: Vec<TimerRef>,
    out: VecDeque<Transmit>,
    rng: u64,
    /// Round-robin position per dispatcher set.
    ticks: HashMap<u32, u64>,
    /// Queue dialog events for replication.
    replicate: bool,
    events: VecDeque<DialogEvent>,
    /// Dialogs adopted from another process, by Call-ID hash.
    adopted: HashMap<u64, Key>,
}

impl Proxy {
    /// A worker's proxy. `epoch` must be the same for all workers of a
    /// process and differ between restarts; `seed` feeds the `s` flag's
    /// random choice.
    pub fn new(cfg: Arc<Config>, table: Arc<Table>, stats: Arc<Stats>, worker: u16, epoch: u32, seed: u64) -> Proxy {
        let internal = SocketAddr::new(cfg.internal_ip, cfg.internal_port_base.wrapping_add(worker));
        // The address siplb gives for each stream transport: the first
        // listen address of that transport (with the advertised IP when it
        // listens on all addresses), else the advertised IP with the
        // transport's default port.
        let stream_addr = |list: &[SocketAddr], t: Transport| {
            let a = list
                .first()
                .copied()
                .unwrap_or(SocketAddr::new(cfg.advertised.ip(), t.default_port()));
            if a.ip().is_unspecified() {
                SocketAddr::new(cfg.advertised.ip(), a.port())
            } else {
                a
            }
        };
        let tcp = stream_addr(&cfg.listen_tcp, Transport::Tcp);
        let tls = stream_addr(&cfg.listen_tls, Transport::Tls);
        let mut ours = cfg.listen.clone();
        ours.extend_from_slice(&cfg.listen_tcp);
        ours.extend_from_slice(&cfg.listen_tls);
        ours.extend([cfg.advertised, tcp, tls]);
        Proxy {
            via_hosts: [
                format!("SIP/2.0/UDP {internal}").into_bytes(),
                format!("SIP/2.0/TCP {tcp}").into_bytes(),
                format!("SIP/2.0/TLS {tls}").into_bytes(),
            ],
            public_via: format!("SIP/2.0/UDP {}", cfg.advertised).into_bytes(),
            record_route_hosts: [
                format!("<sip:{};lr", cfg.advertised).into_bytes(),
                format!("<sip:{tcp};transport=tcp;lr").into_bytes(),
                format!("<sip:{tls};transport=tls;lr").into_bytes(),
            ],
            ours,
            txns: Slab::new(cfg.limits.max_transactions, 0),
            // Sized once for the transaction limit: growing it rehashes
            // every entry at once, a 10-40 ms stall of the worker past a few
            // hundred thousand entries, long enough to overflow the socket
            // buffers at 15,000 calls/s (drops, then 500 ms retransmissions).
            index: HashMap::with_capacity(cfg.limits.max_transactions.min(MAX_INDEX_RESERVE)),
            dialogs: Slab::new(cfg.limits.max_dialogs, 0),
            timers: TimerWheel::new(TICK),
            expired: Vec::new(),
            out: VecDeque::new(),
            rng: seed | 1,
            ticks: HashMap::new(),
            replicate: cfg.ha.is_some(),
            events: VecDeque::new(),
            adopted: HashMap::new(),
            cfg,
            table,
            stats,
            worker,
            epoch,
        }
    }

    /// Takes a new configuration and destination table (a reload, see
    /// `reload`). Transactions and dialogs in progress carry on: their holds
    /// stay valid in `table`. Settings that size or bind things (listen
    /// addresses, workers, limits) must be the ones this proxy was built with.
    pub fn reload(&mut self, cfg: Arc<Config>, table: Arc<Table>) {
        self.cfg = cfg;
        self.table = table;
    }

    /// This worker's statistics.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Live transactions.
    pub fn transactions(&self) -> usize {
        self.txns.len()
    }

    /// Live dialogs.
    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    /// Pending timer entries, stale ones included (cancellation is lazy;
    /// see `compact_timers`).
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// The load reservations held by live dialogs.
    pub fn holds(&self) -> impl Iterator<Item = Hold> + '_ {
        self.dialogs.iter().filter_map(|(_, d)| d.hold)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next dialog event for replication (only with `[ha]` on).
    pub fn poll_event(&mut self) -> Option<DialogEvent> {
        self.events.pop_front()
    }

    /// Takes over a dialog replicated by another process: counts its load
    /// again and tracks it as confirmed until BYE or expiry. False when it
    /// is known already or the dialog table is full.
    pub fn adopt(&mut self, now: Instant, a: Adopted) -> bool {
        self.timers.observe(now);
        if let Some(&k) = self.adopted.get(&a.call_id_hash) {
            if self.dialogs.get(k).is_some() {
                return false;
            }
        }
        let Some(hold) = self.table.count_call(a.hold.dest, a.hold.resources) else {
            return false;
        };
        // What dlg_list shows of an adopted call: only what the replica
        // record carries (its Call-ID hash, load and lifetime); the caller
        // and callee of siplb's own BYEs are unknown (dlg_end releases the
        // load and sends nothing).
        let info = DialogInfo::new(now, (Local::Internal, SocketAddr::from(([0, 0, 0, 0], 0))), 0);
        let dialog = Dialog {
            state: DialogState::Confirmed,
            hold: Some(hold),
            call_id: a.call_id_hash,
            expires: a.expires,
            info: Box::new(info),
        };
        let Some(k) = self.dialogs.insert(dialog) else {
            self.table.release(hold);
            Stats::inc(&self.stats.table_full);
            return false;
        };
        self.adopted.insert(a.call_id_hash, k);
        Stats::inc(&self.stats.active_dialogs);
        self.schedule(a.expires.max(now), TimerRef::Dialog(k.index, k.generation));
        true
    }

    /// Ends every dialog, releasing its load, without replication events
    /// (another node owns them now).
    pub fn release_all(&mut self) {
        let keys: Vec<Key> = self.dialogs.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.end_dialog(k, End::Shutdown);
        }
        self.adopted.clear();
    }

    /// When [`Proxy::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Ends every dialog (releasing its load) and forgets all transactions.
    pub fn shutdown(&mut self) {
        let keys: Vec<Key> = self.dialogs.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.end_dialog(k, End::Shutdown);
        }
        let keys: Vec<Key> = self.txns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.remove_txn(k);
        }
        self.timers = TimerWheel::new(TICK);
    }

    /// Processes one datagram received on `local` from `remote`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: Local,
        remote: SocketAddr,
        bytes: &[u8],
        handed_off: bool,
    ) -> Disposition {
        self.timers.observe(now);
        if !handed_off {
            Stats::inc(&self.stats.rx_datagrams);
        }
        if bytes.len() > self.cfg.limits.max_message_size {
            Stats::inc(&self.stats.drop_too_big);
            return Disposition::Handled;
        }
        // Borrowed from the scan's result rather than moved out of it: the
        // view is ~1.2 KB.
        let scanned = scan_datagram(bytes);
        let msg = match &scanned {
            Ok(m) => m,
            Err(e) => {
                let why = e.kind.to_string();
                match msg::bad_request(bytes, remote, &why) {
                    Some(reply) => {
                        Stats::inc(&self.stats.bad_requests);
                        self.send(local, remote, reply);
                    }
                    None => Stats::inc(&self.stats.drop_malformed),
                }
                return Disposition::Handled;
            }
        };
        // siplb's own marks, parsed once: a request's first Route (its
        // owner, then where an in-dialog request goes), a response's branch.
        let (route, branch) = if msg.is_request() {
            (msg.route_values().next().and_then(msg::RouteMark::parse), None)
        } else {
            (None, msg.top_via().branch.and_then(BranchId::decode))
        };
        if !handed_off {
            if let Some(w) = self.owner(msg, route.as_ref(), branch) {
                if w != self.worker {
                    Stats::inc(&self.stats.handoffs);
                    return Disposition::HandOff(w);
                }
            }
        }
        if msg.is_request() {
            Stats::inc(&self.stats.rx_requests);
            self.on_request(now, local, remote, msg, route);
        } else {
            Stats::inc(&self.stats.rx_responses);
            self.on_response(now, local, remote, msg, branch);
        }
        Disposition::Handled
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timers.observe(now);
        let mut due = std::mem::take(&mut self.expired);
        self.timers.expire(now, &mut due);
        for r in due.drain(..) {
            match r {
                TimerRef::Txn(index, generation) => self.txn_timeout(now, Key { index, generation }),
                TimerRef::Dialog(index, generation) => {
                    let k = Key { index, generation };
                    match self.dialogs.get(k).map(|d| d.expires) {
                        Some(expires) if expires <= now => self.end_dialog(k, End::Expired),
                        Some(expires) => self.schedule(expires, TimerRef::Dialog(index, generation)),
                        None => {}
                    }
                }
            }
        }
        self.expired = due;
        self.compact_timers();
    }

    /// Drops the far timer entries (beyond the wheel's span) whose dialog
    /// or transaction is gone. Timers are cancelled lazily, and a dialog's
    /// lifetime timer (12 h by default) would otherwise stay queued for the
    /// whole lifetime after a call of a few seconds: 32 bytes per call,
    /// 0.6 GB per hour at 5,000 calls/s, in a heap that grows by copying.
    /// Runs when dead entries may outnumber live owners, so the cost is
    /// O(1) amortised per entry.
    fn compact_timers(&mut self) {
        let live = self.dialogs.len() + self.txns.len();
        if self.timers.far_len() <= 2 * live + FAR_SLACK {
            return;
        }
        let (dialogs, txns) = (&self.dialogs, &self.txns);
        self.timers.retain_far(|r| match *r {
            TimerRef::Dialog(index, generation) => dialogs.get(Key { index, generation }).is_some(),
            TimerRef::Txn(index, generation) => txns.get(Key { index, generation }).is_some(),
        });
    }

    /// Answers a control-plane message (see the module docs).
    pub fn handle_control(&mut self, now: Instant, cmd: Control) -> ControlReply {
        self.timers.observe(now);
        match cmd {
            Control::ListDialogs { call_id } => {
                let want = call_id.as_deref().map(|c| (msg::hash(&[c]), c));
                let list = self
                    .dialogs
                    .iter()
                    .filter(|(_, d)| want.map_or(true, |(h, c)| d.call_id == h && d.info.text(Field::CallId) == c))
                    .map(|(k, d)| self.view(now, k, d))
                    .collect();
                ControlReply::Dialogs(list)
            }
            Control::EndDialogs { call_id } => {
                let h = msg::hash(&[&call_id]);
                let keys: Vec<Key> = self
                    .dialogs
                    .iter()
                    .filter(|(_, d)| d.call_id == h && d.info.text(Field::CallId) == call_id)
                    .map(|(k, _)| k)
                    .collect();
                for &k in &keys {
                    self.end_by_admin(now, k);
                }
                ControlReply::Ended(keys.len())
            }
        }
    }

    fn view(&self, now: Instant, k: Key, d: &Dialog) -> DialogView {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let uri = |v: &[u8]| {
            siplb_parser::NameAddr::parse(v)
                .map(|na| text(na.uri))
                .unwrap_or_else(|_| text(v))
        };
        let i = &d.info;
        DialogView {
            worker: self.worker,
            index: k.index,
            generation: k.generation,
            confirmed: d.state == DialogState::Confirmed,
            call_id: text(i.text(Field::CallId)),
            from_uri: uri(i.text(Field::From)),
            to_uri: uri(i.text(Field::To)),
            from_tag: text(i.text(Field::FromTag)),
            to_tag: text(i.text(Field::ToTag)),
            caller_contact: text(i.text(Field::CallerContact)),
            callee_contact: text(i.text(Field::CalleeContact)),
            hold: d.hold,
            destination: i.callee.map(|(addr, _)| addr),
            age: now.saturating_duration_since(i.start),
            expires_in: d.expires.saturating_duration_since(now),
        }
    }

    /// `dlg_end` of one dialog: a confirmed one gets a BYE on each side and
    /// ends now; an early one is CANCELled downstream (and ends with the 487).
    fn end_by_admin(&mut self, now: Instant, k: Key) {
        let Some(d) = self.dialogs.get(k) else { return };
        if d.state == DialogState::Early {
            let txn = self
                .txns
                .iter()
                .find(|(_, t)| t.dialog == Some(k) && t.invite && t.server == Server::Proceeding)
                .map(|(tk, t)| (tk, t.client, t.cancel));
            match txn {
                Some((tk, Client::Proceeding, Cancel::No)) => {
                    if let Some(t) = self.txns.get_mut(tk) {
                        t.cancel = Cancel::Sent;
                    }
                    self.send_cancel(now, tk);
                }
                Some((tk, Client::Calling, Cancel::No)) => {
                    if let Some(t) = self.txns.get_mut(tk) {
                        t.cancel = Cancel::Pending;
                    }
                }
                Some(_) => {}
                // No transaction left to cancel: just end it.
                None => self.end_dialog(k, End::Admin),
            }
            return;
        }
        // The admin path only: a copy, since ending the dialog frees it.
        let i = d.info.clone();
        self.end_dialog(k, End::Admin);
        use Field::{CallId, CalleeContact, CalleeRoutes, CallerContact, CallerRoutes, From, To};
        let callee = i.callee.map(|(dst, transport)| {
            let cseq = i.caller_cseq.saturating_add(1);
            (
                Local::outbound(transport),
                dst,
                CalleeContact,
                CalleeRoutes,
                From,
                To,
                cseq,
            )
        });
        let caller = (
            i.caller.0,
            i.caller.1,
            CallerContact,
            CallerRoutes,
            To,
            From,
            i.callee_cseq.saturating_add(1),
        );
        for (local, dst, ruri, routes, from, to, cseq) in callee.into_iter().chain([caller]) {
            let ruri = i.text(ruri);
            if ruri.is_empty() {
                continue;
            }
            let parts = msg::ByeParts {
                ruri,
                routes: i.text(routes),
                from: i.text(from),
                to: i.text(to),
                call_id: i.text(CallId),
                cseq,
            };
            self.send_local_bye(now, local, dst, &parts);
        }
    }

    /// Sends a BYE of siplb's own as a client transaction of its own
    /// (retransmitted until answered or `fr_timeout`).
    fn send_local_bye(&mut self, now: Instant, local: Local, dst: SocketAddr, parts: &msg::ByeParts<'_>) {
        let timers = self.cfg.timers;
        let t = Txn {
            origin: Origin::Local,
            invite: false,
            key: 0,
            src: dst,
            local,
            request: Vec::new(),
            server: Server::Proceeding,
            last_response: None,
            g_interval: timers.t1,
            g_next: None,
            remove_at: None,
            client: Client::Calling,
            attempt: 0,
            dest: dst,
            dest_transport: local.transport(),
            out: Vec::new(),
            a_interval: timers.t1,
            // No retransmissions over a stream (RFC 3261 §17.1.2.2).
            a_next: (!local.transport().is_stream()).then_some(now + timers.t1),
            deadline: Some(now + timers.fr_timeout),
            cancel: Cancel::No,
            dialog: None,
            sel: Selection::Fixed,
            tried: Tried::default(),
            record_route: false,
            remove_routes: 0,
            scheduled: None,
        };
        let Some(k) = self.txns.insert(t) else {
            Stats::inc(&self.stats.table_full);
            return;
        };
        let branch = BranchId {
            epoch: self.epoch,
            worker: self.worker,
            index: k.index,
            generation: k.generation,
            attempt: 0,
        }
        .encode();
        // Towards a caller, the Via names the public address (answers may
        // reach any worker; the branch brings them to this one).
        let via = match local {
            Local::Public(_) => self.public_via.clone(),
            other => self.via_hosts[other.transport() as usize].clone(),
        };
        let bye = msg::bye(&via, &branch, parts);
        if let Some(t) = self.txns.get_mut(k) {
            t.out = bye.clone();
        }
        Stats::inc(&self.stats.relayed_requests);
        self.send(local, dst, bye);
        self.schedule_txn(k);
    }

    /// The worker that owns a message, when siplb's own marks say so:
    /// `route` is a request's first Route, `branch` a response's.
    fn owner(&self, msg: &Message<'_>, route: Option<&msg::RouteMark>, branch: Option<BranchId>) -> Option<u16> {
        if msg.is_request() {
            let did = route.and_then(|r| r.dialog);
            match did {
                Some(d) if d.epoch == self.epoch => Some(d.worker),
                // Written by another process (before a takeover): adopted
                // dialogs live on the worker their Call-ID hashes to.
                Some(_) if self.cfg.workers > 1 => Some((msg::hash(&[msg.call_id()]) % self.cfg.workers as u64) as u16),
                Some(_) => None,
                // Everything about a call that carries no mark of ours
                // (INVITE, its retransmissions, CANCEL, the ACK of a
                // failure) goes to the same worker.
                None if self.cfg.spread_by_call_id && self.cfg.workers > 1 => {
                    Some((msg::hash(&[msg.call_id()]) % self.cfg.workers as u64) as u16)
                }
                None => None,
            }
        } else {
            let b = branch?;
            (b.epoch == self.epoch).then_some(b.worker)
        }
    }

    fn send(&mut self, local: Local, dst: SocketAddr, payload: Vec<u8>) {
        Stats::inc(&self.stats.tx_datagrams);
        if let Some(class) = payload.strip_prefix(b"SIP/2.0 ").and_then(|r| r.first()) {
            let counter = match class {
                b'1' => &self.stats.replies_1xx,
                b'2' => &self.stats.replies_2xx,
                b'3' => &self.stats.replies_3xx,
                b'4' => &self.stats.replies_4xx,
                b'5' => &self.stats.replies_5xx,
                _ => &self.stats.replies_6xx,
            };
            Stats::inc(counter);
        }
        self.out.push_back(Transmit { local, dst, payload });
    }

    fn to_tag(&self, msg: &Message<'_>) -> Vec<u8> {
        let mut tag = Vec::with_capacity(16);
        tag.extend_from_slice(LOCAL_TAG_PREFIX);
        msg::push_hex(
            &mut tag,
            msg::hash(&[msg.call_id(), msg.from_tag().unwrap_or_default()]) >> 16,
        );
        tag
    }

    /// A stateless local reply.
    fn reply(&mut self, local: Local, src: SocketAddr, req: &Message<'_>, code: u16, reason: &str, extra: &[u8]) {
        let tag = self.to_tag(req);
        let r = msg::reply(req, src, code, reason, &tag, extra);
        Stats::inc(&self.stats.local_replies);
        self.send(local, src, r);
    }

    // ---- requests ------------------------------------------------------

    /// `route`: the request's first Route value, parsed.
    fn on_request(
        &mut self,
        now: Instant,
        local: Local,
        src: SocketAddr,
        m: &Message<'_>,
        route: Option<msg::RouteMark>,
    ) {
        let Some(method) = m.method() else { return };
        // The To tag is looked up once (each lookup walks its parameters).
        let to_tag = m.to_tag();
        match method {
            Method::Ack => {
                let key = txn_key(m, b"INVITE");
                if let Some(&k) = self.index.get(&key) {
                    if let Some(t) = self.txns.get_mut(k) {
                        match t.server {
                            Server::Completed => {
                                t.server = Server::Confirmed;
                                t.g_next = None;
                                t.remove_at = Some(now + T4);
                                Stats::inc(&self.stats.absorbed);
                                self.schedule_txn(k);
                                return;
                            }
                            Server::Confirmed => {
                                Stats::inc(&self.stats.absorbed);
                                return;
                            }
                            _ => {}
                        }
                    }
                }
                // Only a tag that starts as siplb's local ones can be one:
                // the hash is not computed for the others.
                if to_tag.is_some_and(|t| t.starts_with(LOCAL_TAG_PREFIX) && t == self.to_tag(m).as_slice()) {
                    // The ACK of a stateless local reply (503, 483, rules).
                    Stats::inc(&self.stats.absorbed);
                } else if to_tag.is_some() {
                    self.in_dialog(now, local, src, m, method, key, route);
                } else {
                    Stats::inc(&self.stats.drop_stray_ack);
                }
            }
            Method::Cancel => self.on_cancel(now, local, src, m),
            _ => {
                let key = txn_key(m, class(method));
                if let Some(&k) = self.index.get(&key) {
                    if let Some(t) = self.txns.get(k) {
                        let resend = t.last_response.clone().map(|r| (t.local, t.src, r));
                        Stats::inc(&self.stats.absorbed);
                        if let Some((l, dst, r)) = resend {
                            Stats::inc(&self.stats.retransmissions);
                            self.send(l, dst, r);
                        }
                        return;
                    }
                }
                if to_tag.is_some() {
                    self.in_dialog(now, local, src, m, method, key, route);
                } else {
                    self.initial(now, local, src, m, method, key);
                }
            }
        }
    }

    fn initial(&mut self, now: Instant, local: Local, src: SocketAddr, m: &Message<'_>, method: Method<'_>, key: u64) {
        let Some(action) = self.route(m, method, src).cloned() else {
            self.reply(local, src, m, 404, "Not Found", b"");
            return;
        };
        match action {
            Action::Reply { code, reason } => self.reply(local, src, m, code, &reason, b""),
            Action::Relay { addr, transport, count } => {
                if self.hops_exhausted(local, src, m) {
                    return;
                }
                let invite = method == Method::Invite;
                // lb_count_call: a call from one of our destinations counts
                // as load on it while its dialog lives.
                let hold = (invite && !count.is_empty())
                    .then(|| self.source_destination(src))
                    .flatten()
                    .and_then(|d| self.table.count_call(d, count));
                let dialog = match hold {
                    Some(h) => match self.new_dialog(now, m, Some(h), (local, src)) {
                        Some(dk) => Some(dk),
                        None => {
                            self.reply(local, src, m, 503, "Service Unavailable", b"Retry-After: 5\r\n");
                            return;
                        }
                    },
                    None => None,
                };
                if self
                    .start_txn(
                        now,
                        local,
                        src,
                        m,
                        key,
                        (addr, transport),
                        dialog,
                        Selection::Fixed,
                        None,
                        invite,
                        0,
                    )
                    .is_none()
                {
                    if let Some(dk) = dialog {
                        self.end_dialog(dk, End::Failed);
                    }
                }
            }
            Action::LoadBalance {
                group,
                resources,
                flags,
            } => {
                if self.hops_exhausted(local, src, m) {
                    return;
                }
                let table = self.table.clone();
                let chosen = self.select(group, resources, flags, &Tried::default());
                let hold = match chosen {
                    Ok(h) => h,
                    Err(e) => return self.no_capacity(local, src, m, e),
                };
                let Some(dest) = table.dest(hold.dest).map(|d| (d.addr(), d.config.transport())) else {
                    table.release(hold);
                    return;
                };
                if method != Method::Invite {
                    // Load is counted for calls only; other requests just
                    // go where a call would go.
                    table.release(hold);
                    self.start_txn(now, local, src, m, key, dest, None, Selection::Fixed, None, false, 0);
                    return;
                }
                let Some(dk) = self.new_dialog(now, m, Some(hold), (local, src)) else {
                    self.reply(local, src, m, 503, "Service Unavailable", b"Retry-After: 5\r\n");
                    return;
                };
                let sel = Selection::Load {
                    group,
                    resources,
                    flags,
                };
                if self
                    .start_txn(now, local, src, m, key, dest, Some(dk), sel, Some(hold.dest), true, 0)
                    .is_none()
                {
                    self.end_dialog(dk, End::Failed);
                }
            }
            Action::Dispatch { set, algorithm, flags } => {
                if self.hops_exhausted(local, src, m) {
                    return;
                }
                let mut order = [0u16; MAX_CANDIDATES];
                let n = self.dispatch_order(m, set, algorithm, flags, &mut order);
                let Some(dest) = order[..n]
                    .first()
                    .and_then(|&i| self.table.dest(i))
                    .map(|d| (d.addr(), d.config.transport()))
                else {
                    return self.no_capacity(local, src, m, LbError::NoDestination);
                };
                let first = order[0];
                if let Some(d) = self.table.dest(first) {
                    d.count_attempt();
                }
                let sel = if flags.failover {
                    let len = n.min(MAX_TRIES);
                    let mut o = Order {
                        dests: [0; MAX_TRIES],
                        len: len as u8,
                    };
                    o.dests[..len].copy_from_slice(&order[..len]);
                    Selection::Dispatch(o)
                } else {
                    Selection::Fixed
                };
                let invite = method == Method::Invite;
                // A dispatched call is tracked as a dialog (no load held),
                // so that dlg_list shows it and dlg_end can end it.
                let dialog = if invite {
                    match self.new_dialog(now, m, None, (local, src)) {
                        Some(dk) => Some(dk),
                        None => {
                            self.reply(local, src, m, 503, "Service Unavailable", b"Retry-After: 5\r\n");
                            return;
                        }
                    }
                } else {
                    None
                };
                if self
                    .start_txn(now, local, src, m, key, dest, dialog, sel, Some(first), invite, 0)
                    .is_none()
                {
                    if let Some(dk) = dialog {
                        self.end_dialog(dk, End::Failed);
                    }
                }
            }
        }
    }

    /// Writes the dispatcher order of `set` for request `m` into `out`
    /// (enabled destinations only, best first); returns how many.
    fn dispatch_order(
        &mut self,
        m: &Message<'_>,
        set: u32,
        algorithm: Algorithm,
        flags: DispatchFlags,
        out: &mut [u16; MAX_CANDIDATES],
    ) -> usize {
        let mut candidates = [Candidate {
            index: 0,
            id: 0,
            weight: 0,
            priority: 0,
            up: false,
        }; MAX_CANDIDATES];
        let mut n = 0;
        // Table order, configured destinations only (a reload's removed
        // ones are draining, not candidates).
        for (i, d) in self.table.configured() {
            if d.config.group != set || n == MAX_CANDIDATES {
                continue;
            }
            candidates[n] = Candidate {
                index: i,
                id: d.config.id,
                weight: d.config.weight,
                priority: d.config.priority,
                up: d.enabled(),
            };
            n += 1;
        }
        let key_hash = match algorithm {
            Algorithm::Hash(k) => {
                crate::dispatch::key_hash(crate::dispatch::key_of(m, k, flags.user_only).unwrap_or_default())
            }
            _ => 0,
        };
        let random = self.next_random();
        let tick = match algorithm {
            Algorithm::RoundRobin => {
                let t = self.ticks.entry(set).or_insert(0);
                let now = *t;
                *t = t.wrapping_add(1);
                now
            }
            _ => 0,
        };
        crate::dispatch::order(algorithm, &candidates[..n], key_hash, random, tick, out)
    }

    /// The next value of this worker's random source (xorshift64).
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Creates an early dialog holding `hold`; on a full table releases
    /// the hold and returns `None`.
    fn new_dialog(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        hold: Option<Hold>,
        caller: (Local, SocketAddr),
    ) -> Option<Key> {
        let lifetime = self.cfg.timers.dialog_lifetime;
        let header = |kind| m.headers_of(kind).next().map_or(&b""[..], |h| h.value);
        let (call_id, from, to) = (m.call_id(), header(HeaderKind::From), header(HeaderKind::To));
        let from_tag = m.from_tag().unwrap_or_default();
        let contact = msg::first_contact(m);
        let routes = m
            .headers_of(HeaderKind::RecordRoute)
            .next()
            .map_or(0, |h| h.value.len() * 2);
        let room = call_id.len() + from.len() + to.len() + from_tag.len() + contact.len() + routes;
        let mut info = DialogInfo::new(now, caller, room);
        info.set(Field::CallId, call_id);
        info.set(Field::From, from);
        info.set(Field::To, to);
        info.set(Field::FromTag, from_tag);
        info.set(Field::CallerContact, contact);
        info.set_routes(Field::CallerRoutes, m.record_route_values());
        info.caller_cseq = m.cseq().seq;
        let dialog = Dialog {
            state: DialogState::Early,
            hold,
            call_id: msg::hash(&[m.call_id()]),
            expires: now + lifetime,
            info: Box::new(info),
        };
        let Some(dk) = self.dialogs.insert(dialog) else {
            if let Some(hold) = hold {
                self.table.release(hold);
            }
            Stats::inc(&self.stats.table_full);
            return None;
        };
        Stats::inc(&self.stats.processed_dialogs);
        Stats::inc(&self.stats.early_dialogs);
        self.schedule(now + lifetime, TimerRef::Dialog(dk.index, dk.generation));
        Some(dk)
    }

    /// The destination a request comes from: same address, else same IP.
    fn source_destination(&self, src: SocketAddr) -> Option<u16> {
        let t = &self.table;
        t.configured()
            .find(|(_, d)| d.addr() == src)
            .or_else(|| t.configured().find(|(_, d)| d.addr().ip() == src.ip()))
            .map(|(i, _)| i)
    }

    fn no_capacity(&mut self, local: Local, src: SocketAddr, m: &Message<'_>, e: LbError) {
        match e {
            LbError::Full => {
                Stats::inc(&self.stats.full);
                let extra = format!("Retry-After: {}\r\n", self.cfg.failover.retry_after);
                self.reply(local, src, m, 503, "Service Unavailable", extra.as_bytes());
            }
            LbError::NoDestination => {
                Stats::inc(&self.stats.no_destination);
                let code = self.cfg.failover.no_destination_code;
                self.reply(local, src, m, code, crate::config::reason_phrase(code), b"");
            }
        }
    }

    /// First matching rule's action.
    fn route(&self, m: &Message<'_>, method: Method<'_>, src: SocketAddr) -> Option<&Action> {
        // The Request-URI's user, parsed only when a rule asks for it.
        let mut user: Option<Option<&[u8]>> = None;
        self.cfg.rules.iter().find_map(|r| {
            if !r.methods.is_empty() && !r.methods.iter().any(|x| x.as_bytes() == method.as_bytes()) {
                return None;
            }
            if let Some(re) = &r.ruri_user {
                let user = *user.get_or_insert_with(|| {
                    m.request_uri()
                        .and_then(|u| siplb_parser::Uri::parse(u).ok())
                        .and_then(|u| u.user)
                });
                if !user.is_some_and(|u| re.is_match(u)) {
                    return None;
                }
            }
            if !r.sources.is_empty() || r.from_destinations {
                let net = r.sources.iter().any(|n| n.contains(src.ip()));
                let dest = r.from_destinations && self.table.configured().any(|(_, d)| d.addr().ip() == src.ip());
                if !net && !dest {
                    return None;
                }
            }
            Some(&r.action)
        })
    }

    /// Answers 483 (or drops an ACK) when Max-Forwards is zero.
    fn hops_exhausted(&mut self, local: Local, src: SocketAddr, m: &Message<'_>) -> bool {
        if m.max_forwards() != Some(0) {
            return false;
        }
        Stats::inc(&self.stats.too_many_hops);
        if m.method() != Some(Method::Ack) {
            self.reply(local, src, m, 483, "Too Many Hops", b"");
        }
        true
    }

    /// `key`: the request's server transaction key; `first`: its first
    /// Route value, parsed.
    #[allow(clippy::too_many_arguments)]
    fn in_dialog(
        &mut self,
        now: Instant,
        local: Local,
        src: SocketAddr,
        m: &Message<'_>,
        method: Method<'_>,
        key: u64,
        first: Option<msg::RouteMark>,
    ) {
        let is_ack = method == Method::Ack;
        let mut routes = m.route_values();
        routes.next();
        let ours = first.as_ref().is_some_and(|r| r.is_ours(&self.ours));
        if !ours {
            if is_ack {
                Stats::inc(&self.stats.drop_stray_ack);
            } else {
                Stats::inc(&self.stats.unknown_dialogs);
                self.reply(local, src, m, 481, "Call/Transaction Does Not Exist", b"");
            }
            return;
        }
        let dialog = match first.and_then(|r| r.dialog) {
            Some(d) => {
                let k = Key {
                    index: d.index,
                    generation: d.generation,
                };
                let call_id = msg::hash(&[m.call_id()]);
                let adopted = self.adopted.get(&call_id).copied();
                match self.dialogs.get(k) {
                    Some(dl) if d.epoch == self.epoch && dl.call_id == call_id => Some(k),
                    _ if adopted.is_some_and(|a| self.dialogs.get(a).is_some_and(|dl| dl.call_id == call_id)) => {
                        adopted
                    }
                    _ => {
                        if is_ack {
                            Stats::inc(&self.stats.drop_stray_ack);
                        } else {
                            Stats::inc(&self.stats.unknown_dialogs);
                            self.reply(local, src, m, 481, "Call/Transaction Does Not Exist", b"");
                        }
                        return;
                    }
                }
            }
            None => None,
        };
        if self.hops_exhausted(local, src, m) {
            return;
        }
        if let Some(dl) = dialog.and_then(|k| self.dialogs.get_mut(k)) {
            // The highest CSeq of each side, for the BYEs of dlg_end.
            let seq = m.cseq().seq;
            if m.from_tag() == Some(dl.info.text(Field::FromTag)) {
                dl.info.caller_cseq = dl.info.caller_cseq.max(seq);
            } else {
                dl.info.callee_cseq = dl.info.callee_cseq.max(seq);
            }
        }
        // After a double Record-Route both values are ours; the last one
        // removed faces the next hop and names its transport. Each Route
        // value is parsed once.
        let second_value = routes.next();
        let second = second_value.and_then(msg::RouteMark::parse);
        let double = second.is_some_and(|r| r.is_ours(&self.ours));
        let (own, facing, next) = if double {
            let next = match routes.next() {
                Some(v) => msg::RouteMark::parse(v),
                None => m.request_uri().and_then(msg::RouteMark::parse_uri),
            };
            (2, second.and_then(|r| r.transport), next)
        } else {
            let next = match second_value {
                Some(_) => second,
                None => m.request_uri().and_then(msg::RouteMark::parse_uri),
            };
            (1, first.and_then(|r| r.transport), next)
        };
        let next = next.and_then(|r| Some((r.hop?, r.transport.or(facing).unwrap_or_default())));
        let Some((dst, transport)) = next else {
            Stats::inc(&self.stats.drop_unroutable);
            if !is_ack {
                self.reply(local, src, m, 502, "Bad Gateway", b"");
            }
            return;
        };
        if is_ack {
            // ACK for a 2xx: its own transaction, relayed statelessly.
            let mut branch = b"z9hG4bKslbs".to_vec();
            msg::push_hex(&mut branch, msg::hash(&[m.top_via().branch.unwrap_or_default()]));
            if let Some(out) = self.forward(m, src, transport, &branch, None, own) {
                Stats::inc(&self.stats.relayed_requests);
                self.send(Local::outbound(transport), dst, out);
            }
            return;
        }
        if method == Method::Bye {
            if let Some(k) = dialog {
                self.end_dialog(k, End::Bye);
            }
        }
        let invite = method == Method::Invite;
        self.start_txn(
            now,
            local,
            src,
            m,
            key,
            (dst, transport),
            None,
            Selection::Fixed,
            None,
            invite,
            own,
        );
    }

    fn on_cancel(&mut self, now: Instant, local: Local, src: SocketAddr, m: &Message<'_>) {
        let Some(&k) = self.index.get(&txn_key(m, b"INVITE")) else {
            Stats::inc(&self.stats.unknown_dialogs);
            self.reply(local, src, m, 481, "Call/Transaction Does Not Exist", b"");
            return;
        };
        self.reply(local, src, m, 200, "OK", b"");
        let Some(t) = self.txns.get_mut(k) else { return };
        if t.server != Server::Proceeding || t.cancel != Cancel::No {
            return;
        }
        match t.client {
            Client::Calling => t.cancel = Cancel::Pending,
            Client::Proceeding => {
                t.cancel = Cancel::Sent;
                self.send_cancel(now, k);
            }
            Client::Done => {}
        }
    }

    /// Sends CANCEL for the current attempt and bounds the wait for its 487.
    fn send_cancel(&mut self, now: Instant, k: Key) {
        let fr = self.cfg.timers.fr_timeout;
        let Some(t) = self.txns.get_mut(k) else { return };
        let Ok(sent) = scan_datagram(&t.out) else { return };
        let c = msg::cancel_for(&sent);
        let (dst, transport) = (t.dest, t.dest_transport);
        let limit = now + fr;
        t.deadline = Some(t.deadline.map_or(limit, |d| d.min(limit)));
        self.send(Local::outbound(transport), dst, c);
        self.schedule_txn(k);
    }

    /// The request as relayed over `transport`: our Via on top,
    /// received/rport on the sender's, Max-Forwards lowered (70 when
    /// absent), optionally our Record-Route values (in order, top first)
    /// and without our `remove_routes` Route values.
    fn forward(
        &self,
        m: &Message<'_>,
        src: SocketAddr,
        transport: Transport,
        branch: &[u8],
        record_route: Option<&[u8]>,
        remove_routes: u8,
    ) -> Option<Vec<u8>> {
        let host = &self.via_hosts[transport as usize];
        // Our Via, then `received` and the port for the sender's: one buffer.
        let mut text = Vec::with_capacity(host.len() + branch.len() + 20 + 46);
        text.extend_from_slice(host);
        text.extend_from_slice(b";branch=");
        text.extend_from_slice(branch);
        text.extend_from_slice(b";rport");
        if transport.is_stream() {
            text.extend_from_slice(b";alias");
        }
        let via_len = text.len();
        msg::push_ip(&mut text, src.ip());
        let ip_len = text.len() - via_len;
        msg::push_decimal(&mut text, u64::from(src.port()));
        let (via, sender) = text.split_at(via_len);
        let (received, port) = sender.split_at(ip_len);
        let mut edits = [Edit::RemoveTopVia; 5];
        let mut n = 0;
        let mut push = |e| {
            edits[n] = e;
            n += 1;
        };
        push(Edit::PrependVia(via));
        push(Edit::TopViaReceived {
            received,
            rport: Some(port),
        });
        push(Edit::SetMaxForwards(
            m.max_forwards().map_or(70, |n| n.saturating_sub(1)),
        ));
        if let Some(rr) = record_route {
            push(Edit::InsertRecordRoute(rr));
        }
        if remove_routes > 0 && m.route_values().next().is_some() {
            push(Edit::RemoveFirstRoute);
        }
        let out = rewrite(m, &edits[..n]).ok()?.to_vec();
        if remove_routes < 2 {
            return Some(out);
        }
        // The second of a double Record-Route: one more pass (rare: only
        // in-dialog requests of calls that change transport).
        let again = scan_datagram(&out).ok()?;
        if again.route_values().next().is_none() {
            return Some(out);
        }
        rewrite(&again, &[Edit::RemoveFirstRoute]).ok().map(|r| r.to_vec())
    }

    /// Creates a proxy transaction for `m` and sends the first attempt.
    #[allow(clippy::too_many_arguments)]
    fn start_txn(
        &mut self,
        now: Instant,
        local: Local,
        src: SocketAddr,
        m: &Message<'_>,
        key: u64,
        (dest, dest_transport): (SocketAddr, Transport),
        dialog: Option<Key>,
        sel: Selection,
        first: Option<u16>,
        invite: bool,
        remove_routes: u8,
    ) -> Option<Key> {
        let mut tried = Tried::default();
        if let Some(first) = first {
            tried.push(first);
        }
        let t = Txn {
            origin: Origin::Relayed,
            invite,
            key,
            src,
            local,
            request: m.as_bytes().to_vec(),
            server: Server::Proceeding,
            last_response: None,
            g_interval: self.cfg.timers.t1,
            g_next: None,
            remove_at: None,
            client: Client::Calling,
            attempt: 0,
            dest,
            dest_transport,
            out: Vec::new(),
            a_interval: self.cfg.timers.t1,
            a_next: None,
            deadline: None,
            cancel: Cancel::No,
            dialog,
            sel,
            tried,
            record_route: invite && remove_routes == 0,
            remove_routes,
            scheduled: None,
        };
        let Some(k) = self.txns.insert(t) else {
            Stats::inc(&self.stats.table_full);
            self.reply(local, src, m, 503, "Service Unavailable", b"Retry-After: 5\r\n");
            return None;
        };
        self.index.insert(key, k);
        if invite {
            // A 100 gets no To tag (msg::reply adds one above 100 only).
            let trying = msg::reply(m, src, 100, "Trying", b"", b"");
            if let Some(t) = self.txns.get_mut(k) {
                t.last_response = Some(trying.clone());
            }
            self.send(local, src, trying);
        }
        if !self.send_attempt(now, k, Some(m)) {
            // Could not build the request: answer and forget.
            self.finish_server(now, k, 500, None);
            return None;
        }
        Some(k)
    }

    /// Builds and sends the current attempt of transaction `k`. `request`
    /// is the scanned request when the caller has it (the first attempt),
    /// which saves scanning the stored copy again.
    fn send_attempt(&mut self, now: Instant, k: Key, request: Option<&Message<'_>>) -> bool {
        let Some(t) = self.txns.get(k) else { return false };
        let mut branch = Vec::with_capacity(48);
        BranchId {
            epoch: self.epoch,
            worker: self.worker,
            index: k.index,
            generation: k.generation,
            attempt: t.attempt,
        }
        .encode_into(&mut branch);
        let rr = t.record_route.then(|| {
            let value = |rr: &mut Vec<u8>, transport: Transport| {
                rr.extend_from_slice(&self.record_route_hosts[transport as usize]);
                if let Some(d) = t.dialog {
                    rr.extend_from_slice(b";did=");
                    DialogId {
                        epoch: self.epoch,
                        worker: self.worker,
                        index: d.index,
                        generation: d.generation,
                    }
                    .encode_into(rr);
                }
                rr.push(b'>');
            };
            // RFC 5658: when the transport changes, one value per side,
            // the destination's side on top.
            let (inbound, outbound) = (t.local.transport(), t.dest_transport);
            let mut rr = Vec::with_capacity(96);
            value(&mut rr, outbound);
            if inbound != outbound {
                rr.extend_from_slice(b", ");
                value(&mut rr, inbound);
            }
            rr
        });
        let forwarded = match request {
            Some(m) => self.forward(m, t.src, t.dest_transport, &branch, rr.as_deref(), t.remove_routes),
            None => {
                let Ok(m) = scan_datagram(&t.request) else { return false };
                self.forward(&m, t.src, t.dest_transport, &branch, rr.as_deref(), t.remove_routes)
            }
        };
        let Some(out) = forwarded else { return false };
        let timers = self.cfg.timers;
        let Some(t) = self.txns.get_mut(k) else { return false };
        t.out = out.clone();
        t.client = Client::Calling;
        t.a_interval = timers.t1;
        // Timers A and E: retransmissions over UDP only.
        t.a_next = (!t.dest_transport.is_stream()).then_some(now + timers.t1);
        t.deadline = Some(now + timers.fr_timeout);
        let (dst, transport) = (t.dest, t.dest_transport);
        Stats::inc(&self.stats.relayed_requests);
        self.send(Local::outbound(transport), dst, out);
        self.schedule_txn(k);
        true
    }

    // ---- responses -----------------------------------------------------

    /// `branch`: the top Via's branch, decoded.
    fn on_response(&mut self, now: Instant, local: Local, src: SocketAddr, m: &Message<'_>, branch: Option<BranchId>) {
        let code = m.status().unwrap_or(0);
        let id = branch.filter(|b| b.epoch == self.epoch);
        let Some(id) = id else {
            Stats::inc(&self.stats.drop_stray_response);
            return;
        };
        let k = Key {
            index: id.index,
            generation: id.generation,
        };
        let is_invite = m.cseq().method == Method::Invite;
        if m.cseq().method == Method::Cancel {
            // The answer to a CANCEL siplb sent: hop by hop, nothing to do.
            Stats::inc(&self.stats.absorbed);
            return;
        }
        let Some(t) = self.txns.get(k) else {
            if is_invite && (200..300).contains(&code) {
                // A 2xx retransmission after the transaction: relay by Via.
                self.relay_stateless(m);
            } else if is_invite && code >= 300 {
                self.ack(local, src, m, None);
            } else {
                Stats::inc(&self.stats.drop_stray_response);
            }
            return;
        };
        if t.origin == Origin::Local {
            // The answer to siplb's own BYE: nothing goes anywhere.
            Stats::inc(&self.stats.absorbed);
            let t2 = self.cfg.timers.t2;
            let t1 = self.cfg.timers.t1;
            let Some(t) = self.txns.get_mut(k) else { return };
            if code >= 200 && t.client != Client::Done {
                t.client = Client::Done;
                t.a_next = None;
                t.deadline = None;
                t.server = Server::Completed;
                // Linger to absorb retransmitted finals.
                t.remove_at = Some(now + 64 * t1);
            } else if code < 200 {
                t.client = Client::Proceeding;
                t.a_interval = t2;
            }
            self.schedule_txn(k);
            return;
        }
        if id.attempt != t.attempt || t.client == Client::Done {
            if is_invite && code >= 300 {
                let sent = t.out.clone();
                self.ack(local, src, m, Some(&sent));
            } else if is_invite && (200..300).contains(&code) && id.attempt == t.attempt {
                let (l, dst) = (t.local, t.src);
                self.relay_response(l, dst, m);
            } else if (200..300).contains(&code) && is_invite {
                Stats::inc(&self.stats.drop_late_2xx);
            } else {
                Stats::inc(&self.stats.absorbed);
            }
            return;
        }
        let timers = self.cfg.timers;
        if code < 200 {
            let (cancel, server, invite) = {
                let Some(t) = self.txns.get_mut(k) else { return };
                let was = t.client == Client::Calling;
                t.client = Client::Proceeding;
                if t.invite {
                    t.a_next = None;
                    if was {
                        t.deadline = Some(now + timers.fr_inv_timeout);
                    }
                } else {
                    t.a_interval = timers.t2;
                }
                (t.cancel, t.server, t.invite)
            };
            if cancel == Cancel::Pending {
                if let Some(t) = self.txns.get_mut(k) {
                    t.cancel = Cancel::Sent;
                }
                self.send_cancel(now, k);
            }
            if code > 100 && server == Server::Proceeding {
                let Some(t) = self.txns.get(k) else { return };
                let (l, dst) = (t.local, t.src);
                if let Some(out) = self.relay_response(l, dst, m) {
                    if invite {
                        if let Some(t) = self.txns.get_mut(k) {
                            t.last_response = Some(out);
                        }
                    }
                }
            }
            self.schedule_txn(k);
            return;
        }
        // A final response for the current attempt.
        let Some(t) = self.txns.get_mut(k) else { return };
        t.client = Client::Done;
        t.a_next = None;
        t.deadline = None;
        if !t.invite && code >= 300 {
            // Failover (dispatch) or the final upstream: as for INVITE,
            // without the hop-by-hop ACK.
            self.failure(now, k, code, Some(m));
            return;
        }
        if !t.invite {
            let (l, dst) = (t.local, t.src);
            let out = self.relay_response(l, dst, m);
            let Some(t) = self.txns.get_mut(k) else { return };
            t.last_response = out;
            // Only the response is needed from now on (to answer
            // retransmissions for 64*T1): free the request copies, which
            // would otherwise linger with every finished BYE.
            t.request = Vec::new();
            t.out = Vec::new();
            t.server = Server::Completed;
            t.remove_at = Some(now + timers.linger);
            self.schedule_txn(k);
            return;
        }
        if (200..300).contains(&code) {
            let (l, dst, dialog, callee) = (t.local, t.src, t.dialog, (t.dest, t.dest_transport));
            let _ = self.relay_response(l, dst, m);
            let Some(t) = self.txns.get_mut(k) else { return };
            // Nothing more is sent for this transaction: 2xx
            // retransmissions and the ACK pass statelessly, INVITE
            // retransmissions are absorbed. Free the copies.
            t.last_response = None;
            t.request = Vec::new();
            t.out = Vec::new();
            t.server = Server::Accepted;
            t.g_next = None;
            t.remove_at = Some(now + timers.linger);
            if let Some(d) = dialog {
                self.confirm_dialog(now, d, m, callee);
            }
            self.schedule_txn(k);
            return;
        }
        let sent = t.out.clone();
        self.ack(local, src, m, Some(&sent));
        self.failure(now, k, code, Some(m));
    }

    /// ACKs a non-2xx final received on `local` from `src` (back on its
    /// connection, on a stream). `sent`: the INVITE as siplb sent it.
    fn ack(&mut self, local: Local, src: SocketAddr, resp: &Message<'_>, sent: Option<&[u8]>) {
        let sent = sent.and_then(|s| scan_datagram(s).ok());
        let a = msg::ack_for(sent.as_ref(), resp);
        let local = match local {
            Local::Conn(_) => local,
            _ => Local::Internal,
        };
        self.send(local, src, a);
    }

    /// Relays a response to `dst` without its top Via; returns what was sent.
    fn relay_response(&mut self, local: Local, dst: SocketAddr, m: &Message<'_>) -> Option<Vec<u8>> {
        if m.via_count() < 2 {
            Stats::inc(&self.stats.drop_stray_response);
            return None;
        }
        let out = rewrite(m, &[Edit::RemoveTopVia]).ok()?.to_vec();
        Stats::inc(&self.stats.relayed_responses);
        self.send(local, dst, out.clone());
        Some(out)
    }

    fn relay_stateless(&mut self, m: &Message<'_>) {
        let Some(next) = m.vias().nth(1) else {
            Stats::inc(&self.stats.drop_stray_response);
            return;
        };
        let Some(dst) = msg::via_addr(&next) else {
            Stats::inc(&self.stats.drop_unroutable);
            return;
        };
        let local = match next.transport() {
            siplb_parser::Transport::Tcp => Local::Connect(Transport::Tcp),
            siplb_parser::Transport::Tls => Local::Connect(Transport::Tls),
            _ => Local::Public(0),
        };
        self.relay_response(local, dst, m);
    }

    /// The current attempt failed with `code` (a reply, or a local 408):
    /// fail over, or answer upstream and end the call.
    fn failure(&mut self, now: Instant, k: Key, code: u16, resp: Option<&Message<'_>>) {
        let cfg = self.cfg.clone();
        let fo = &cfg.failover;
        let Some(t) = self.txns.get(k) else { return };
        let (sel, dialog, cancel, server, tried, failed) = (t.sel, t.dialog, t.cancel, t.server, t.tried, t.dest);
        // A call whose dialog ended meanwhile (BYE, admin) is not retried.
        let live = dialog.map_or(true, |d| self.dialogs.get(d).is_some());
        let mut exhausted = false;
        let retry = !matches!(sel, Selection::Fixed) && live;
        if retry && cancel == Cancel::No && server == Server::Proceeding && fo.is_failover_code(code) {
            if fo.disable_on_failure {
                if let Some(dest) = self.table.index_of_addr(failed).and_then(|i| self.table.dest(i)) {
                    // Logged and counted there; probing (or an operator) brings it back.
                    dest.call_failed(code, now);
                }
            }
            exhausted = true;
            if tried.len() < usize::from(fo.max_attempts) {
                if let Some((next, hold)) = self.reselect(sel, &tried) {
                    let table = self.table.clone();
                    // The call's reservation (load_balance) moves to the next one.
                    let old = match (hold, dialog.and_then(|d| self.dialogs.get_mut(d))) {
                        (Some(hold), Some(dl)) => dl.hold.replace(hold),
                        (hold, _) => hold,
                    };
                    if let Some(old) = old {
                        table.release(old);
                    }
                    let dest = table.dest(next).map(|d| (d.addr(), d.config.transport()));
                    if let Some(t) = self.txns.get_mut(k) {
                        t.tried.push(next);
                        t.attempt = t.attempt.wrapping_add(1);
                        (t.dest, t.dest_transport) = dest.unwrap_or((t.dest, t.dest_transport));
                        Stats::inc(&self.stats.failovers);
                        tracing::info!(code, from = %failed, to = %t.dest, attempt = t.attempt, "failover");
                    }
                    if self.send_attempt(now, k, None) {
                        return;
                    }
                }
            }
        }
        if cancel != Cancel::No && resp.is_none() {
            self.finish_server(now, k, 487, None);
        } else if exhausted && !(fo.relay_last_reply && resp.is_some()) {
            self.finish_server(now, k, 503, None);
        } else {
            self.finish_server(now, k, code, resp);
        }
    }

    /// The next destination for a failed-over request: chosen again by load
    /// (with its reservation) or the next enabled, untried one of the
    /// dispatcher's order.
    fn reselect(&mut self, sel: Selection, tried: &Tried) -> Option<(u16, Option<Hold>)> {
        match sel {
            Selection::Fixed => None,
            Selection::Load {
                group,
                resources,
                flags,
            } => self
                .select(group, resources, flags, tried)
                .ok()
                .map(|h| (h.dest, Some(h))),
            Selection::Dispatch(o) => o.dests[..usize::from(o.len)]
                .iter()
                .copied()
                .find(|&i| !tried.contains(i) && self.table.dest(i).is_some_and(|d| d.enabled()))
                .map(|i| {
                    if let Some(d) = self.table.dest(i) {
                        d.count_attempt();
                    }
                    (i, None)
                }),
        }
    }

    /// `load_balance` with this worker's random source.
    fn select(&mut self, group: u32, set: ResourceSet, flags: Flags, tried: &Tried) -> Result<Hold, LbError> {
        let table = self.table.clone();
        let mut rng = self.rng;
        let mut random = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        let r = table.load_balance(group, set, flags, tried, &mut random);
        self.rng = rng;
        r
    }

    /// Sends the final answer of a failed call upstream (relayed `resp`,
    /// or a local `code`), enters Completed and ends the dialog.
    fn finish_server(&mut self, now: Instant, k: Key, code: u16, resp: Option<&Message<'_>>) {
        let timers = self.cfg.timers;
        let retry_after = self.cfg.failover.retry_after;
        let Some(t) = self.txns.get(k) else { return };
        let (local, dst, dialog, invite) = (t.local, t.src, t.dialog, t.invite);
        // Timer G: final retransmissions over UDP only.
        let retransmit = invite && !local.transport().is_stream();
        // A final without the caller's Via (some UAS answer the INVITE
        // with the CANCEL's Vias) is answered locally with its code.
        let relayed = resp.and_then(|m| self.relay_response(local, dst, m));
        let Some(t) = self.txns.get(k) else { return };
        let out = match relayed {
            Some(out) => Some(out),
            None => {
                let req = t.request.clone();
                match scan_datagram(&req) {
                    Ok(r) => {
                        let extra = if code == 503 {
                            format!("Retry-After: {retry_after}\r\n")
                        } else {
                            String::new()
                        };
                        let tag = self.to_tag(&r);
                        let reply = msg::reply(
                            &r,
                            dst,
                            code,
                            crate::config::reason_phrase(code),
                            &tag,
                            extra.as_bytes(),
                        );
                        Stats::inc(&self.stats.local_replies);
                        self.send(local, dst, reply.clone());
                        Some(reply)
                    }
                    Err(_) => None,
                }
            }
        };
        let Some(t) = self.txns.get_mut(k) else { return };
        t.client = Client::Done;
        t.a_next = None;
        t.deadline = None;
        t.last_response = out;
        t.server = Server::Completed;
        if retransmit {
            t.g_interval = timers.t1;
            t.g_next = Some(now + timers.t1);
        }
        t.remove_at = Some(now + 64 * timers.t1);
        self.schedule_txn(k);
        if let Some(d) = dialog {
            self.end_dialog(d, End::Failed);
        }
    }

    // ---- timers ----------------------------------------------------------

    fn schedule(&mut self, at: Instant, r: TimerRef) {
        self.timers.insert(at, r);
    }

    /// (Re)arms the transaction's wake-up at its earliest timer.
    fn schedule_txn(&mut self, k: Key) {
        let Some(t) = self.txns.get_mut(k) else { return };
        let next = [t.a_next, t.g_next, t.deadline, t.remove_at]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return };
        if t.scheduled.is_some_and(|s| s <= next) {
            return;
        }
        t.scheduled = Some(next);
        self.schedule(next, TimerRef::Txn(k.index, k.generation));
    }

    fn txn_timeout(&mut self, now: Instant, k: Key) {
        let timers = self.cfg.timers;
        let Some(t) = self.txns.get_mut(k) else { return };
        if t.scheduled.is_some_and(|s| s <= now) {
            t.scheduled = None;
        }
        if t.remove_at.is_some_and(|r| r <= now) {
            self.remove_txn(k);
            return;
        }
        if t.a_next.is_some_and(|a| a <= now) {
            let interval = if t.invite {
                t.a_interval * 2
            } else {
                (t.a_interval * 2).min(timers.t2)
            };
            t.a_interval = interval;
            t.a_next = Some(now + interval);
            let (dst, transport, out) = (t.dest, t.dest_transport, t.out.clone());
            // siplb's own requests leave by the socket they were sent from.
            let via = if t.origin == Origin::Local {
                t.local
            } else {
                Local::outbound(transport)
            };
            Stats::inc(&self.stats.retransmissions);
            self.send(via, dst, out);
        }
        let Some(t) = self.txns.get_mut(k) else { return };
        if t.g_next.is_some_and(|g| g <= now) {
            t.g_interval = (t.g_interval * 2).min(timers.t2);
            t.g_next = Some(now + t.g_interval);
            if let Some(r) = t.last_response.clone() {
                let (l, dst) = (t.local, t.src);
                Stats::inc(&self.stats.retransmissions);
                self.send(l, dst, r);
            }
        }
        let Some(t) = self.txns.get_mut(k) else { return };
        if t.origin == Origin::Local && t.deadline.is_some_and(|d| d <= now) {
            // siplb's own BYE was never answered: give up quietly.
            self.remove_txn(k);
            return;
        }
        if t.deadline.is_some_and(|d| d <= now) {
            t.deadline = None;
            t.a_next = None;
            let proceeding = t.client == Client::Proceeding;
            t.client = Client::Done;
            if t.invite && proceeding && t.cancel != Cancel::Sent {
                if let Ok(sent) = scan_datagram(&t.out) {
                    let c = msg::cancel_for(&sent);
                    let (dst, transport) = (t.dest, t.dest_transport);
                    self.send(Local::outbound(transport), dst, c);
                }
            }
            // An INVITE was CANCELled above when it had a provisional; a
            // non-INVITE just fails (over).
            self.failure(now, k, 408, None);
        }
        self.schedule_txn(k);
    }

    fn remove_txn(&mut self, k: Key) {
        if let Some(t) = self.txns.remove(k) {
            if self.index.get(&t.key) == Some(&k) {
                self.index.remove(&t.key);
            }
        }
    }

    // ---- dialogs ---------------------------------------------------------

    fn confirm_dialog(&mut self, now: Instant, k: Key, ok: &Message<'_>, callee: (SocketAddr, Transport)) {
        let lifetime = self.cfg.timers.dialog_lifetime;
        let Some(d) = self.dialogs.get_mut(k) else { return };
        if d.state == DialogState::Early {
            d.state = DialogState::Confirmed;
            // The early dialog's timer (same lifetime, armed earlier) fires
            // first and re-arms itself at the new expiry: one timer entry
            // per dialog, not two.
            let rearm = now + lifetime < d.expires;
            d.expires = now + lifetime;
            let info = &mut d.info;
            info.set(
                Field::To,
                ok.headers_of(HeaderKind::To).next().map_or(&b""[..], |h| h.value),
            );
            info.set(Field::ToTag, ok.to_tag().unwrap_or_default());
            info.set(Field::CalleeContact, msg::first_contact(ok));
            // Record-Route in the 2xx: [proxies towards the callee..., ours,
            // proxies towards the caller...]; towards the callee, the ones
            // above ours, nearest first (usually none: no allocation then).
            let ours = ok.record_route_values().position(|r| msg::route_is_ours(r, &self.ours));
            if let Some(ours @ 1..) = ours {
                let rr: Vec<&[u8]> = ok.record_route_values().take(ours).collect();
                info.set_routes(Field::CalleeRoutes, rr.into_iter().rev());
            }
            info.callee = Some(callee);
            Stats::dec(&self.stats.early_dialogs);
            Stats::inc(&self.stats.active_dialogs);
            if self.replicate {
                if let Some(hold) = d.hold {
                    self.events.push_back(DialogEvent::Confirmed(Confirmed {
                        call_id_hash: d.call_id,
                        call_id: ok.call_id().to_vec(),
                        from_tag: ok.from_tag().unwrap_or_default().to_vec(),
                        to_tag: ok.to_tag().unwrap_or_default().to_vec(),
                        hold,
                        worker: self.worker,
                        lifetime,
                    }));
                }
            }
            if rearm {
                self.schedule(now + lifetime, TimerRef::Dialog(k.index, k.generation));
            }
        }
    }

    /// Ends a dialog: releases its load (exactly once) and counts.
    fn end_dialog(&mut self, k: Key, why: End) {
        let Some(mut d) = self.dialogs.remove(k) else { return };
        if let Some(h) = d.hold.take() {
            self.table.release(h);
        }
        if !self.adopted.is_empty() && self.adopted.get(&d.call_id) == Some(&k) {
            self.adopted.remove(&d.call_id);
        }
        if self.replicate && d.state == DialogState::Confirmed && why != End::Shutdown {
            self.events.push_back(DialogEvent::Ended {
                call_id_hash: d.call_id,
            });
        }
        match d.state {
            DialogState::Early => {
                Stats::dec(&self.stats.early_dialogs);
                if why != End::Expired {
                    Stats::inc(&self.stats.failed_dialogs);
                }
            }
            DialogState::Confirmed => Stats::dec(&self.stats.active_dialogs),
        }
        if why == End::Expired {
            Stats::inc(&self.stats.expired_dialogs);
        }
    }
}

/// The method class of a server transaction: INVITE, ACK and CANCEL all
/// find the INVITE's transaction.
fn class<'a>(m: Method<'a>) -> &'a [u8] {
    match m {
        Method::Invite | Method::Ack | Method::Cancel => b"INVITE",
        other => other.as_bytes(),
    }
}

/// The server transaction key of a request (RFC 3261 §17.2.3; the RFC 2543
/// fallback when the branch lacks the magic cookie).
fn txn_key(m: &Message<'_>, class: &[u8]) -> u64 {
    let v = m.top_via();
    let port = v.port.unwrap_or(5060).to_be_bytes();
    match v.branch {
        Some(b) if b.starts_with(b"z9hG4bK") => msg::hash(&[b, v.host, &port, class]),
        _ => {
            let seq = m.cseq().seq.to_be_bytes();
            msg::hash(&[m.call_id(), m.from_tag().unwrap_or_default(), &seq, v.value, class])
        }
    }
}
