//! Destinations and their load: lock-free counters and `load_balance`.
//!
//! # Counters
//! Every destination has, per resource it offers, a `load` and a `capacity`
//! ([`Counter`], one cache line each). Workers share them through an
//! `Arc<Table>` and touch them with atomics only:
//! - selection reads `load`/`capacity` relaxed and picks a destination;
//! - reservation bumps each requested resource's `load` with
//!   compare-and-swap from the value selection saw; if another worker moved
//!   it in between, what was reserved is rolled back and selection runs
//!   again (bounded; contention only costs a retry);
//! - release ([`Table::release`]) decrements with a saturating update; a
//!   release that finds zero is a bug, counted in [`Table::underflows`]
//!   instead of wrapping.
//!
//! A reservation is a [`Hold`]: plain data a dialog owns. The dialog gives
//! it back exactly once, by `Option::take` on its hold (see `core`).
//!
//! # Reload: slots, generations, shared counters
//! A [`Table`] is an immutable snapshot; a reload builds the next one with
//! [`Table::reload`] and the workers pick it up between two batches (see
//! `reload`). Holds name their destination by *slot* (an index that stays
//! valid across snapshots) plus the slot's generation:
//! - a destination that keeps its id and URI keeps its slot, its generation,
//!   its [`Counter`]s (the same `Arc`s: a call reserved on the old snapshot
//!   is released on the new one) and its status;
//! - a removed destination's slot is *retired*: not eligible, not listed as
//!   configured, still holding the counters its calls release; once its load
//!   is zero the slot may be reused by a new destination with the next
//!   generation, and a stale [`Hold`] (older generation) releases nothing;
//! - table order (ties, listing) is the configuration's order, kept apart
//!   from slot numbers.
//!
//! # Selection (OpenSIPS `load_balance`)
//! Eligible: in the group, enabled, offers every requested resource, not in
//! the call's [`Tried`] set. Availability of a destination is the minimum
//! over the requested resources of `capacity - load` or, with flag `r`,
//! `100 - 100 * load / capacity`. The highest availability wins; ties go to
//! the first in table order, or (flag `s`) to a random one among the tied.
//! A best availability <= 0 means [`LbError::Full`] unless flag `n`, which
//! accepts overloaded destinations.
//!
//! # Status (health)
//! Each destination is *up* (takes new calls) or *down*, with the
//! [`Reason`] of the last change, when it happened and the reply code
//! behind it ([`Status`]). Changes come from four places:
//! ```text
//!            operator (lb_status/ds_set_state): up or down, sticky
//!   up  <--------------------------------------------------------->  down
//!       --- `threshold` failed probes in a row (probe) ---------->
//!       --- a relayed call fails with a failover code ----------->   (failover.disable_on_failure)
//!       <-- `recovery_threshold` accepted probes in a row --------   (not when the operator or
//!                                                                      the config put it down)
//! ```
//! A destination put down by an operator (or `disabled = true` in the
//! config) stays down whatever probing says, until an operator enables it
//! (OpenSIPS's "no auto re-enable"). Every change of up/down is logged once
//! and counted per reason. The status lives in the destination's `Kept`
//! part, shared by the snapshots, so a reload that keeps a destination
//! (same id and URI) keeps its status, probing counters and counts with it.
//!
//! # Remote load (active/active)
//! Each counter also has a `remote` part: the load other siplb nodes of the
//! group hold on the same destination, as last published through Redis
//! (set by the HA thread, see `crate::ha`). Selection and the capacity
//! check use `load + remote`; reservations and releases touch `load` only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Destination;

/// Most distinct resource names in one configuration.
pub const MAX_RESOURCES: usize = 32;
/// Most destinations one call can try.
pub const MAX_TRIES: usize = 8;

/// A set of resource ids (bit i = resource i).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceSet(u32);

impl ResourceSet {
    /// No resource.
    pub const EMPTY: ResourceSet = ResourceSet(0);

    /// This set plus resource `id` (ids >= [`MAX_RESOURCES`] are ignored).
    pub fn with(self, id: usize) -> ResourceSet {
        if id < MAX_RESOURCES {
            ResourceSet(self.0 | 1 << id)
        } else {
            self
        }
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `id` is in the set.
    pub fn contains(self, id: usize) -> bool {
        id < MAX_RESOURCES && self.0 & (1 << id) != 0
    }

    /// The ids, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_RESOURCES).filter(move |&i| self.0 & (1 << i) != 0)
    }
}

/// `load_balance` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `r`: relative availability (percent of capacity left).
    pub relative: bool,
    /// `n`: accept destinations with availability <= 0.
    pub negative: bool,
    /// `s`: random choice among tied destinations.
    pub spread: bool,
}

impl Flags {
    /// Parses a flag string such as `"rs"`; `None` on an unknown letter.
    pub fn parse(s: &str) -> Option<Flags> {
        let mut f = Flags::default();
        for c in s.chars() {
            match c {
                'r' | 'R' => f.relative = true,
                'n' | 'N' => f.negative = true,
                's' | 'S' => f.spread = true,
                _ => return None,
            }
        }
        Some(f)
    }
}

/// Destination indices a call has tried already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried {
    idx: [u16; MAX_TRIES],
    len: u8,
}

impl Tried {
    /// Adds a destination index; returns false when full.
    pub fn push(&mut self, dest: u16) -> bool {
        match self.idx.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = dest;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// True when `dest` was tried.
    pub fn contains(&self, dest: u16) -> bool {
        self.idx[..usize::from(self.len)].contains(&dest)
    }

    /// How many were tried.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when none was tried.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Load reserved by one call on one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Destination slot in the table.
    pub dest: u16,
    /// The slot's generation when reserved: a hold on a slot reused since
    /// (after a reload) releases nothing.
    pub generation: u16,
    /// Resources reserved (one unit each).
    pub resources: ResourceSet,
}

/// Why no destination was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    /// Eligible destinations exist but all are full.
    #[error("every eligible destination is full")]
    Full,
    /// No destination is eligible (group empty, disabled, all tried).
    #[error("no eligible destination")]
    NoDestination,
}

/// One resource counter on one destination, alone on its cache line.
#[repr(align(64))]
#[derive(Debug)]
pub struct Counter {
    load: AtomicU32,
    capacity: AtomicU32,
    remote: AtomicU32,
}

impl Counter {
    /// Current load.
    pub fn load(&self) -> u32 {
        self.load.load(Ordering::Relaxed)
    }

    /// Current capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Load held by the other nodes of an active/active group (0 alone).
    pub fn remote(&self) -> u32 {
        self.remote.load(Ordering::Relaxed)
    }

    /// Sets the other nodes' load (the HA thread does, every interval).
    pub fn set_remote(&self, load: u32) {
        self.remote.store(load, Ordering::Relaxed);
    }
}

/// Why a destination has its current status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// As configured (`disabled = true` is an operator's decision: sticky).
    Config,
    /// Set by an operator (`lb_status`, `ds_set_state`): sticky.
    Admin,
    /// Health probing.
    Probe,
    /// A relayed call failed with a failover code (`failover.disable_on_failure`).
    CallFailure,
}

impl Reason {
    /// Every reason, in the order of [`DestState::changes`].
    pub const ALL: [Reason; 4] = [Reason::Config, Reason::Admin, Reason::Probe, Reason::CallFailure];

    /// Its name in logs, the admin API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Config => "config",
            Reason::Admin => "admin",
            Reason::Probe => "probe",
            Reason::CallFailure => "call_failure",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The status of a destination and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Takes new calls.
    pub up: bool,
    /// Why.
    pub reason: Reason,
    /// When it last changed (`None`: as loaded, never changed since).
    pub since: Option<Instant>,
    /// The reply code behind the last change (408 for a timeout), if any.
    pub code: Option<u16>,
}

impl Status {
    /// True when only an operator may bring it back up.
    pub fn sticky(&self) -> bool {
        !self.up && matches!(self.reason, Reason::Admin | Reason::Config)
    }
}

/// The result of one health probe, as [`DestState::probe_result`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// An accepted reply (200, any other reply below 400, or a configured code).
    Ok(u16),
    /// A final reply >= 400 that is not accepted.
    Failed(u16),
    /// No final reply in time.
    Timeout,
}

impl ProbeResult {
    /// Every kind, in the order of [`DestState::probes`], with its label.
    pub const LABELS: [&'static str; 3] = ["ok", "failed", "timeout"];

    fn index(self) -> usize {
        match self {
            ProbeResult::Ok(_) => 0,
            ProbeResult::Failed(_) => 1,
            ProbeResult::Timeout => 2,
        }
    }

    /// The reply code (408 for a timeout).
    pub fn code(self) -> u16 {
        match self {
            ProbeResult::Ok(c) | ProbeResult::Failed(c) => c,
            ProbeResult::Timeout => 408,
        }
    }
}

/// Status plus the probing counters, behind the destination's mutex.
#[derive(Debug)]
struct Health {
    status: Status,
    /// Failed probes in a row.
    failures: u32,
    /// Accepted probes in a row.
    successes: u32,
    /// The last probe's result.
    last_probe: Option<ProbeResult>,
}

/// What a destination keeps across reloads besides its counters, shared by
/// the snapshots that hold it: status, health, per-destination counts.
#[derive(Debug)]
struct Kept {
    /// Mirrors `health.status.up` for the data path (relaxed reads, no lock).
    enabled: AtomicBool,
    /// Status and probing counters: changed rarely, under the lock.
    health: Mutex<Health>,
    /// Status changes (up <-> down) by [`Reason`].
    changes: [AtomicU64; 4],
    /// Probe results by kind ([`ProbeResult::LABELS`]).
    probes: [AtomicU64; 3],
    /// Calls (attempts) sent to it.
    calls: AtomicU64,
}

/// A destination with its live state: load counters and status.
///
/// This is what a reload must carry over for a destination it keeps (same
/// id and URI): the counters (calls in progress hold load on them) *and*
/// the status (an operator's disable, a probe's verdict, the probing
/// counters), so that a reload never re-enables what an operator disabled.
/// Both are `Arc`s shared by the snapshots that hold the destination.
#[derive(Debug)]
pub struct DestState {
    /// Configuration.
    pub config: Destination,
    /// Counter per resource id (`None` when not offered); shared with the
    /// same destination in other snapshots.
    counters: Vec<Option<Arc<Counter>>>,
    kept: Arc<Kept>,
    generation: u16,
    retired: bool,
}

/// What a status change was: for logs and for callers that report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Before.
    pub old: Status,
    /// After.
    pub new: Status,
}

impl DestState {
    fn new(config: &Destination, n_resources: usize, generation: u16) -> DestState {
        let mut counters: Vec<Option<Arc<Counter>>> = (0..n_resources).map(|_| None).collect();
        for &(rid, cap) in &config.resources {
            if let Some(slot) = counters.get_mut(rid) {
                *slot = Some(Arc::new(Counter {
                    load: AtomicU32::new(0),
                    capacity: AtomicU32::new(cap),
                    remote: AtomicU32::new(0),
                }));
            }
        }
        DestState {
            config: config.clone(),
            counters,
            kept: Arc::new(Kept {
                enabled: AtomicBool::new(!config.disabled),
                health: Mutex::new(Health {
                    status: Status {
                        up: !config.disabled,
                        reason: Reason::Config,
                        since: None,
                        code: None,
                    },
                    failures: 0,
                    successes: 0,
                    last_probe: None,
                }),
                changes: Default::default(),
                probes: Default::default(),
                calls: AtomicU64::new(0),
            }),
            generation,
            retired: false,
        }
    }

    /// The same destination (counters, status) under a new configuration:
    /// counters of resources it still offers are kept (with the new
    /// capacity), new ones start at zero.
    fn renewed(&self, config: &Destination, n_resources: usize) -> DestState {
        let mut counters: Vec<Option<Arc<Counter>>> = (0..n_resources).map(|_| None).collect();
        for &(rid, cap) in &config.resources {
            if let Some(slot) = counters.get_mut(rid) {
                let c = match self.counters.get(rid).and_then(Option::as_ref) {
                    Some(c) => {
                        c.capacity.store(cap, Ordering::Relaxed);
                        c.clone()
                    }
                    None => Arc::new(Counter {
                        load: AtomicU32::new(0),
                        capacity: AtomicU32::new(cap),
                        remote: AtomicU32::new(0),
                    }),
                };
                *slot = Some(c);
            }
        }
        DestState {
            config: config.clone(),
            counters,
            kept: self.kept.clone(),
            generation: self.generation,
            retired: false,
        }
    }

    /// This destination, retired (or kept retired) in the next snapshot.
    fn retire(&self) -> DestState {
        DestState {
            config: self.config.clone(),
            counters: self.counters.clone(),
            kept: self.kept.clone(),
            generation: self.generation,
            retired: true,
        }
    }

    /// True when removed by a reload: takes no new calls, lives on while
    /// calls hold load on it.
    pub fn retired(&self) -> bool {
        self.retired
    }

    /// Sum of its loads.
    pub fn total_load(&self) -> u64 {
        self.counters.iter().flatten().map(|c| u64::from(c.load())).sum()
    }

    /// The counter of resource `rid`, if offered.
    pub fn counter(&self, rid: usize) -> Option<&Counter> {
        self.counters.get(rid).and_then(|c| c.as_deref())
    }

    /// True when enabled (neither disabled by config, admin, probing nor
    /// failure) and not retired by a reload.
    pub fn enabled(&self) -> bool {
        !self.retired && self.kept.enabled.load(Ordering::Relaxed)
    }

    /// Enables or disables as an operator would, without a clock (tests,
    /// tools). Prefer [`DestState::set_status`].
    pub fn set_enabled(&self, on: bool) {
        self.set_status(on, Reason::Admin, None, None);
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic while holding the lock cannot leave Health inconsistent
        // (plain fields), so a poisoned lock is still usable.
        self.kept.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.health().status
    }

    /// The last probe's result, if probed.
    pub fn last_probe(&self) -> Option<ProbeResult> {
        self.health().last_probe
    }

    /// Status changes so far with `reason`.
    pub fn changes(&self, reason: Reason) -> u64 {
        self.kept.changes[reason.index()].load(Ordering::Relaxed)
    }

    /// Probe results so far, by [`ProbeResult::LABELS`] order.
    pub fn probes(&self) -> [u64; 3] {
        self.kept.probes.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Calls (attempts, failovers included) sent to it so far.
    pub fn calls(&self) -> u64 {
        self.kept.calls.load(Ordering::Relaxed)
    }

    /// True when the prober should probe it now: `probe_mode` 2 always,
    /// 1 while it is down for a reason probing can undo.
    pub fn wants_probe(&self) -> bool {
        if self.retired {
            return false;
        }
        match self.config.probe_mode {
            2 => true,
            1 => {
                let s = self.status();
                !s.up && !s.sticky()
            }
            _ => false,
        }
    }

    /// Sets the status (an operator with [`Reason::Admin`]). `now` is when
    /// (`None` when the caller has no clock). Returns the change, if the
    /// destination went up or down; a new reason alone (an operator taking
    /// over a probe's verdict) is recorded without counting as a change.
    pub fn set_status(&self, up: bool, reason: Reason, code: Option<u16>, now: Option<Instant>) -> Option<Change> {
        let mut h = self.health();
        self.transition(&mut h, up, reason, code, now)
    }

    /// A relayed call failed on it with `code` (a failover code, or the
    /// local 408): takes it down unless it is down already.
    pub fn call_failed(&self, code: u16, now: Instant) -> Option<Change> {
        let mut h = self.health();
        if !h.status.up {
            return None;
        }
        self.transition(&mut h, false, Reason::CallFailure, Some(code), Some(now))
    }

    /// Applies one probe result with the thresholds `down_after` (failed
    /// probes in a row that take it down) and `up_after` (accepted probes
    /// in a row that bring it back, unless an operator took it down).
    pub fn probe_result(&self, r: ProbeResult, down_after: u32, up_after: u32, now: Instant) -> Option<Change> {
        self.kept.probes[r.index()].fetch_add(1, Ordering::Relaxed);
        let mut h = self.health();
        h.last_probe = Some(r);
        match r {
            ProbeResult::Ok(code) => {
                h.failures = 0;
                h.successes = h.successes.saturating_add(1);
                if !h.status.up && !h.status.sticky() && h.successes >= up_after.max(1) {
                    return self.transition(&mut h, true, Reason::Probe, Some(code), Some(now));
                }
            }
            ProbeResult::Failed(_) | ProbeResult::Timeout => {
                h.successes = 0;
                h.failures = h.failures.saturating_add(1);
                if h.status.up && h.failures >= down_after.max(1) {
                    return self.transition(&mut h, false, Reason::Probe, Some(r.code()), Some(now));
                }
            }
        }
        None
    }

    fn transition(
        &self,
        h: &mut Health,
        up: bool,
        reason: Reason,
        code: Option<u16>,
        now: Option<Instant>,
    ) -> Option<Change> {
        let old = h.status;
        if old.up == up {
            if reason == Reason::Admin && old.reason != Reason::Admin {
                // The operator confirms the state: it becomes theirs (sticky when down).
                h.status.reason = Reason::Admin;
            }
            return None;
        }
        let new = Status {
            up,
            reason,
            since: now,
            code,
        };
        h.status = new;
        h.failures = 0;
        h.successes = 0;
        self.kept.enabled.store(up, Ordering::Relaxed);
        self.kept.changes[reason.index()].fetch_add(1, Ordering::Relaxed);
        let state = |up: bool| if up { "up" } else { "down" };
        if up {
            tracing::info!(group = self.config.group, uri = %self.config.uri, old = state(old.up), new = state(up),
                reason = reason.as_str(), code, "destination status changed");
        } else {
            tracing::warn!(group = self.config.group, uri = %self.config.uri, old = state(old.up), new = state(up),
                reason = reason.as_str(), code, "destination status changed");
        }
        Some(Change { old, new })
    }

    /// Counts a call (attempt) sent to it ([`Table::load_balance`] does).
    pub fn count_attempt(&self) {
        self.kept.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// Availability over `set`, or `None` when a resource is not offered.
    fn availability(&self, set: ResourceSet, relative: bool) -> Option<(i64, [u32; MAX_RESOURCES])> {
        let mut seen = [0u32; MAX_RESOURCES];
        let mut avail = i64::MAX;
        for rid in set.iter() {
            let c = self.counter(rid)?;
            let cap = c.capacity();
            let own = c.load();
            seen[rid] = own;
            let load = own.saturating_add(c.remote());
            let a = if relative {
                if cap == 0 {
                    0
                } else {
                    100 - (100 * i64::from(load)) / i64::from(cap)
                }
            } else {
                i64::from(cap) - i64::from(load)
            };
            avail = avail.min(a);
        }
        Some((avail, seen))
    }
}

/// All destinations; an immutable snapshot shared by the workers (the
/// atomics inside change, the set of destinations does not).
#[derive(Debug)]
pub struct Table {
    /// By slot; configured ones and retired ones.
    dests: Vec<DestState>,
    /// Slots of the configured (not retired) destinations, in table order.
    order: Vec<u16>,
    resource_names: Vec<String>,
    underflows: Arc<AtomicU64>,
}

/// What [`Table::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Destinations that kept their id and URI (load and status kept).
    pub kept: Vec<u32>,
    /// New destinations (ids).
    pub added: Vec<u32>,
    /// Removed destinations (ids): they take no new calls.
    pub removed: Vec<u32>,
    /// Removed destinations still holding calls (ids), freed when those end.
    pub draining: Vec<u32>,
}

/// Why a reload could not build a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The configuration's resource names do not extend the running ones.
    #[error("resource names must extend the running ones (restart to rename resources)")]
    Resources,
    /// More slots than a [`Hold`] can name.
    #[error("too many destinations (live plus draining): at most 65535")]
    Full,
}

impl Table {
    /// Builds the table from validated destinations: slot i is the i-th
    /// destination.
    pub fn new(dests: &[Destination], resource_names: &[String]) -> Table {
        let n = resource_names.len();
        let dests: Vec<DestState> = dests
            .iter()
            .take(usize::from(u16::MAX))
            .map(|d| DestState::new(d, n, 0))
            .collect();
        Table {
            order: (0..dests.len() as u16).collect(),
            dests,
            resource_names: resource_names.to_vec(),
            underflows: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The next snapshot for a new destination list. `resource_names` must
    /// start with this table's names (resource ids are kept across reloads,
    /// see `Config::parse_seeded`). Destinations with the same id and URI
    /// as a configured one here keep their slot, counters and status.
    pub fn reload(
        &self,
        dests: &[Destination],
        resource_names: &[String],
    ) -> Result<(Table, ReloadReport), TableError> {
        if !resource_names.starts_with(&self.resource_names) {
            return Err(TableError::Resources);
        }
        let n = resource_names.len();
        let mut report = ReloadReport::default();
        // Start from every old slot retired; configured ones come back below.
        let mut slots: Vec<Option<DestState>> = self.dests.iter().map(|d| Some(d.retire())).collect();
        let mut order = Vec::with_capacity(dests.len());
        let mut fresh = Vec::new();
        for d in dests {
            let old = self.order.iter().copied().find(|&i| {
                let o = &self.dests[usize::from(i)].config;
                o.id == d.id && o.uri == d.uri
            });
            match old {
                Some(i) => {
                    slots[usize::from(i)] = Some(self.dests[usize::from(i)].renewed(d, n));
                    order.push(i);
                    report.kept.push(d.id);
                }
                None => {
                    fresh.push(d);
                    order.push(u16::MAX);
                }
            }
        }
        for &i in &self.order {
            if slots[usize::from(i)].as_ref().is_some_and(|s| s.retired) {
                let d = &self.dests[usize::from(i)];
                report.removed.push(d.config.id);
                if d.total_load() > 0 {
                    report.draining.push(d.config.id);
                }
            }
        }
        // New destinations take free retired slots (no load left) or new ones.
        let mut fresh = fresh.into_iter();
        for o in order.iter_mut().filter(|o| **o == u16::MAX) {
            let Some(d) = fresh.next() else { break };
            let reusable = slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.retired && s.total_load() == 0));
            let i = match reusable {
                Some(i) => {
                    let generation = slots[i].as_ref().map_or(0, |s| s.generation.wrapping_add(1));
                    slots[i] = Some(DestState::new(d, n, generation));
                    i
                }
                None => {
                    if slots.len() >= usize::from(u16::MAX) {
                        return Err(TableError::Full);
                    }
                    slots.push(Some(DestState::new(d, n, 0)));
                    slots.len() - 1
                }
            };
            *o = i as u16;
            report.added.push(d.id);
        }
        let table = Table {
            dests: slots.into_iter().flatten().collect(),
            order,
            resource_names: resource_names.to_vec(),
            underflows: self.underflows.clone(),
        };
        Ok((table, report))
    }

    /// Every slot: the configured destinations and the retired ones (see
    /// [`DestState::retired`]). Use [`Table::configured`] for table order.
    pub fn destinations(&self) -> &[DestState] {
        &self.dests
    }

    /// The configured destinations with their slots, in table order.
    pub fn configured(&self) -> impl Iterator<Item = (u16, &DestState)> + '_ {
        self.order.iter().map(move |&i| (i, &self.dests[usize::from(i)]))
    }

    /// Retired destinations that still hold load (calls in progress).
    pub fn draining(&self) -> impl Iterator<Item = (u16, &DestState)> + '_ {
        self.dests
            .iter()
            .enumerate()
            .filter(|(_, d)| d.retired && d.total_load() > 0)
            .map(|(i, d)| (i as u16, d))
    }

    /// The configured destination with this id.
    pub fn by_id(&self, id: u32) -> Option<(u16, &DestState)> {
        self.configured().find(|(_, d)| d.config.id == id)
    }

    /// Resource names by id.
    pub fn resource_names(&self) -> &[String] {
        &self.resource_names
    }

    /// Destination by index.
    pub fn dest(&self, idx: u16) -> Option<&DestState> {
        self.dests.get(usize::from(idx))
    }

    /// Slot of the configured destination at `addr`, if any.
    pub fn index_of_addr(&self, addr: SocketAddr) -> Option<u16> {
        self.configured().find(|(_, d)| d.config.addr == addr).map(|(i, _)| i)
    }

    /// Releases that found a zero counter (a bug if ever non-zero).
    pub fn underflows(&self) -> u64 {
        self.underflows.load(Ordering::Relaxed)
    }

    /// Sets the capacity of a resource on a destination (admin `lb_resize`).
    pub fn resize(&self, dest: u16, rid: usize, capacity: u32) -> bool {
        match self.dest(dest).and_then(|d| d.counter(rid)) {
            Some(c) => {
                c.capacity.store(capacity, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Chooses a destination and reserves one unit of every resource in
    /// `set` on it. `random(n)` must return a value in `0..n` (used for
    /// flag `s` only).
    pub fn load_balance(
        &self,
        group: u32,
        set: ResourceSet,
        flags: Flags,
        tried: &Tried,
        random: &mut dyn FnMut(usize) -> usize,
    ) -> Result<Hold, LbError> {
        'retry: for _ in 0..64 {
            let mut best: Option<(i64, u16, [u32; MAX_RESOURCES])> = None;
            let mut ties = 0usize;
            let mut eligible = false;
            for &idx in &self.order {
                let d = &self.dests[usize::from(idx)];
                if d.config.group != group || !d.enabled() || tried.contains(idx) {
                    continue;
                }
                let Some((avail, seen)) = d.availability(set, flags.relative) else {
                    continue;
                };
                eligible = true;
                if avail <= 0 && !flags.negative {
                    continue;
                }
                match best {
                    Some((b, _, _)) if avail < b => {}
                    Some((b, _, _)) if avail == b => {
                        ties += 1;
                        // Reservoir sampling: each tied one wins with equal odds.
                        if flags.spread && random(ties) == 0 {
                            best = Some((avail, idx, seen));
                        }
                    }
                    _ => {
                        best = Some((avail, idx, seen));
                        ties = 1;
                    }
                }
            }
            let Some((_, idx, seen)) = best else {
                return Err(if eligible {
                    LbError::Full
                } else {
                    LbError::NoDestination
                });
            };
            let d = &self.dests[usize::from(idx)];
            let mut done = ResourceSet::EMPTY;
            for rid in set.iter() {
                let Some(c) = d.counter(rid) else {
                    continue 'retry;
                };
                let cap = c.capacity();
                let mut current = seen[rid];
                let acquired = loop {
                    let fits = flags.negative || current.saturating_add(c.remote()) < cap;
                    if !fits {
                        break false;
                    }
                    match c
                        .load
                        .compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed)
                    {
                        Ok(_) => break true,
                        // Another worker moved this counter since the scan:
                        // the choice rests on a slightly older view, as any
                        // concurrent choice does. Take the unit while it
                        // still fits; going back to the scan instead could
                        // end in a false "full" under contention (the
                        // load_counters bench saw ~1 in 10^5 picks refused
                        // that way with room left).
                        Err(now) => current = now,
                    }
                };
                if !acquired {
                    self.release(Hold {
                        dest: idx,
                        generation: d.generation,
                        resources: done,
                    });
                    continue 'retry;
                }
                done = done.with(rid);
            }
            d.count_attempt();
            return Ok(Hold {
                dest: idx,
                generation: d.generation,
                resources: set,
            });
        }
        Err(LbError::Full)
    }

    /// Gives back one unit of each resource of `hold`. Saturating: a counter
    /// at zero stays at zero and the event is counted in [`Table::underflows`].
    pub fn release(&self, hold: Hold) {
        let Some(d) = self.dest(hold.dest).filter(|d| d.generation == hold.generation) else {
            return;
        };
        for rid in hold.resources.iter() {
            if let Some(c) = d.counter(rid) {
                if c.load
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| v.checked_sub(1))
                    .is_err()
                {
                    self.underflows.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Adds one unit of each resource without a capacity check (OpenSIPS
    /// `lb_count_call`: calls from a destination count as load on it).
    /// `None` when the destination offers none of them (nothing to hold).
    pub fn count_call(&self, dest: u16, set: ResourceSet) -> Option<Hold> {
        let d = self.dest(dest).filter(|d| !d.retired)?;
        let mut held = ResourceSet::EMPTY;
        for rid in set.iter() {
            if let Some(c) = d.counter(rid) {
                c.load.fetch_add(1, Ordering::AcqRel);
                held = held.with(rid);
            }
        }
        (!held.is_empty()).then_some(Hold {
            dest,
            generation: d.generation,
            resources: held,
        })
    }

    /// Sum of all loads, retired destinations included (zero when no call
    /// is held).
    pub fn total_load(&self) -> u64 {
        self.dests.iter().map(DestState::total_load).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(dests: &[(u32, u32, &str)]) -> Table {
        let mut text = String::from("[server]\nlisten = [\"127.0.0.1:5060\"]\n");
        for (i, (id, group, res)) in dests.iter().enumerate() {
            text.push_str(&format!(
                "[[destinations]]\nid = {id}\ngroup = {group}\nuri = \"sip:127.0.0.1:{}\"\nresources = \"{res}\"\n",
                6000 + i
            ));
        }
        let c = Config::parse(&text).unwrap();
        Table::new(&c.destinations, &c.resource_names)
    }

    fn set(t: &Table, names: &[&str]) -> ResourceSet {
        names.iter().fold(ResourceSet::EMPTY, |s, n| {
            s.with(t.resource_names().iter().position(|x| x == n).unwrap())
        })
    }

    fn first(_: usize) -> usize {
        1
    }

    fn pick(t: &Table, g: u32, s: ResourceSet, f: &str) -> Result<u16, LbError> {
        t.load_balance(g, s, Flags::parse(f).unwrap(), &Tried::default(), &mut first)
            .map(|h| h.dest)
    }

    fn load(t: &Table, dest: u16, rid: usize) -> u32 {
        t.dest(dest).unwrap().counter(rid).unwrap().load()
    }

    #[test]
    fn highest_absolute_availability_wins_and_ties_go_first() {
        let t = table(&[(1, 1, "pstn=2"), (2, 1, "pstn=3"), (3, 2, "pstn=10")]);
        let s = set(&t, &["pstn"]);
        // avail 2 vs 3: dest 1 (index 1).
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        // now 2 vs 2: tie, first in table order.
        assert_eq!(pick(&t, 1, s, ""), Ok(0));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        assert_eq!(pick(&t, 1, s, ""), Ok(0));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        assert_eq!(pick(&t, 1, s, ""), Err(LbError::Full));
        assert_eq!((load(&t, 0, 0), load(&t, 1, 0)), (2, 3));
        // the other group is untouched
        assert_eq!(load(&t, 2, 0), 0);
    }

    #[test]
    fn relative_availability() {
        let t = table(&[(1, 1, "pstn=10"), (2, 1, "pstn=100")]);
        let s = set(&t, &["pstn"]);
        let one = Hold {
            dest: 0,
            generation: 0,
            resources: s,
        };
        let _ = t.count_call(0, s);
        assert_eq!(load(&t, 0, 0), 1);
        // absolute: 9 vs 100 -> index 1; relative: 90 vs 100 -> index 1
        assert_eq!(pick(&t, 1, s, "r"), Ok(1));
        for _ in 0..9 {
            let _ = t.count_call(1, s);
        }
        // relative: 90 vs 90 -> tie -> first; absolute would be 9 vs 90.
        assert_eq!(pick(&t, 1, s, "r"), Ok(0));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        t.release(one);
    }

    #[test]
    fn multiple_resources_use_the_minimum_and_require_all() {
        let t = table(&[(1, 1, "pstn=5;vm=1"), (2, 1, "pstn=2;vm=9"), (3, 1, "pstn=50")]);
        let both = set(&t, &["pstn", "vm"]);
        // dest 1: min(5,1)=1, dest 2: min(2,9)=2 -> index 1; dest 3 lacks vm.
        assert_eq!(pick(&t, 1, both, ""), Ok(1));
        assert_eq!((load(&t, 1, 0), load(&t, 1, 1)), (1, 1));
        assert_eq!(pick(&t, 1, both, ""), Ok(0));
        assert_eq!(pick(&t, 1, both, ""), Ok(1));
        assert_eq!(pick(&t, 1, both, ""), Err(LbError::Full));
        let vm = set(&t, &["vm"]);
        assert_eq!(pick(&t, 1, vm, ""), Ok(1));
    }

    #[test]
    fn negative_flag_overbooks_and_none_eligible() {
        let t = table(&[(1, 1, "pstn=1"), (2, 1, "pstn=1")]);
        let s = set(&t, &["pstn"]);
        assert_eq!(pick(&t, 1, s, ""), Ok(0));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        assert_eq!(pick(&t, 1, s, ""), Err(LbError::Full));
        assert_eq!(pick(&t, 1, s, "n"), Ok(0));
        assert_eq!(load(&t, 0, 0), 2);
        assert_eq!(pick(&t, 9, s, ""), Err(LbError::NoDestination));
        t.dest(0).unwrap().set_enabled(false);
        t.dest(1).unwrap().set_enabled(false);
        assert_eq!(pick(&t, 1, s, "n"), Err(LbError::NoDestination));
    }

    #[test]
    fn tried_destinations_are_excluded() {
        let t = table(&[(1, 1, "pstn=10"), (2, 1, "pstn=5")]);
        let s = set(&t, &["pstn"]);
        let mut tried = Tried::default();
        tried.push(0);
        let h = t.load_balance(1, s, Flags::default(), &tried, &mut first).unwrap();
        assert_eq!(h.dest, 1);
        tried.push(1);
        assert_eq!(
            t.load_balance(1, s, Flags::default(), &tried, &mut first),
            Err(LbError::NoDestination)
        );
        t.release(h);
        assert_eq!(t.total_load(), 0);
    }

    #[test]
    fn spread_flag_picks_among_ties() {
        let t = table(&[(1, 1, "pstn=100"), (2, 1, "pstn=100"), (3, 1, "pstn=100")]);
        let s = set(&t, &["pstn"]);
        let mut seen = [0; 3];
        let mut rng = 12345u64;
        let mut random = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for _ in 0..300 {
            let h = t
                .load_balance(1, s, Flags::parse("s").unwrap(), &Tried::default(), &mut random)
                .unwrap();
            seen[usize::from(h.dest)] += 1;
            t.release(h);
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(t.total_load(), 0);
    }

    #[test]
    fn release_saturates_and_counts() {
        let t = table(&[(1, 1, "pstn=1")]);
        let s = set(&t, &["pstn"]);
        t.release(Hold {
            dest: 0,
            generation: 0,
            resources: s,
        });
        assert_eq!(load(&t, 0, 0), 0);
        assert_eq!(t.underflows(), 1);
    }

    #[test]
    fn concurrent_reservations_never_exceed_capacity() {
        let t = std::sync::Arc::new(table(&[(1, 1, "pstn=1000"), (2, 1, "pstn=1000")]));
        let s = set(&t, &["pstn"]);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut got = 0;
                    while t
                        .load_balance(1, s, Flags::default(), &Tried::default(), &mut first)
                        .is_ok()
                    {
                        got += 1;
                    }
                    got
                })
            })
            .collect();
        let total: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 2000);
        assert_eq!(load(&t, 0, 0) + load(&t, 1, 0), 2000);
        for d in 0..2 {
            for _ in 0..1000 {
                t.release(Hold {
                    dest: d,
                    generation: 0,
                    resources: s,
                });
            }
        }
        assert_eq!(t.total_load(), 0);
        assert_eq!(t.underflows(), 0);
    }

    fn probed(mode: u8, disabled: bool) -> Table {
        let c = Config::parse(&format!(
            "[server]\nlisten = [\"127.0.0.1:5060\"]\n[[destinations]]\nid = 1\ngroup = 1\n\
             uri = \"sip:127.0.0.1:6000\"\nresources = \"pstn=1\"\nprobe_mode = {mode}\ndisabled = {disabled}\n"
        ))
        .unwrap();
        Table::new(&c.destinations, &c.resource_names)
    }

    #[test]
    fn probes_take_down_and_bring_back_with_thresholds() {
        let t = probed(2, false);
        let d = t.dest(0).unwrap();
        let now = Instant::now();
        assert!(d.wants_probe());
        // Down after 3 failures in a row; a success in between resets the count.
        assert_eq!(d.probe_result(ProbeResult::Timeout, 3, 2, now), None);
        assert_eq!(d.probe_result(ProbeResult::Failed(503), 3, 2, now), None);
        assert_eq!(d.probe_result(ProbeResult::Ok(200), 3, 2, now), None);
        assert_eq!(d.probe_result(ProbeResult::Timeout, 3, 2, now), None);
        assert_eq!(d.probe_result(ProbeResult::Timeout, 3, 2, now), None);
        let c = d.probe_result(ProbeResult::Failed(500), 3, 2, now).expect("down");
        assert!(c.old.up && !c.new.up);
        assert_eq!(
            (c.new.reason, c.new.code, c.new.since),
            (Reason::Probe, Some(500), Some(now))
        );
        assert!(!d.enabled());
        // Back after 2 accepted probes in a row.
        assert_eq!(d.probe_result(ProbeResult::Ok(404), 3, 2, now), None);
        assert!(d.probe_result(ProbeResult::Ok(200), 3, 2, now).is_some());
        assert!(d.enabled());
        assert_eq!(d.changes(Reason::Probe), 2);
        assert_eq!(d.probes(), [3, 2, 3]);
        assert_eq!(d.last_probe(), Some(ProbeResult::Ok(200)));
    }

    #[test]
    fn an_operators_disable_is_not_undone_by_probing() {
        let t = probed(2, false);
        let d = t.dest(0).unwrap();
        let now = Instant::now();
        assert!(d.set_status(false, Reason::Admin, None, Some(now)).is_some());
        assert!(d.status().sticky());
        for _ in 0..5 {
            assert_eq!(d.probe_result(ProbeResult::Ok(200), 1, 1, now), None);
        }
        assert!(!d.enabled());
        assert!(d.set_status(true, Reason::Admin, None, Some(now)).is_some());
        assert!(d.enabled());
        // Probing takes it down again, and brings it back: not sticky.
        assert!(d.probe_result(ProbeResult::Timeout, 1, 1, now).is_some());
        assert!(d.probe_result(ProbeResult::Ok(200), 1, 1, now).is_some());
        // An operator disabling a destination probing had taken down makes it sticky.
        assert!(d.probe_result(ProbeResult::Timeout, 1, 1, now).is_some());
        assert_eq!(d.set_status(false, Reason::Admin, None, Some(now)), None);
        assert_eq!(d.probe_result(ProbeResult::Ok(200), 1, 1, now), None);
        assert!(!d.enabled());
        assert_eq!(d.changes(Reason::Admin), 2);
    }

    #[test]
    fn configured_disabled_is_sticky_and_mode_1_probes_only_while_down() {
        let t = probed(1, true);
        let d = t.dest(0).unwrap();
        assert!(!d.enabled() && d.status().sticky());
        assert!(!d.wants_probe(), "an operator's disable is not probed in mode 1");
        let t = probed(1, false);
        let d = t.dest(0).unwrap();
        let now = Instant::now();
        assert!(!d.wants_probe(), "mode 1 leaves a live destination alone");
        let c = d.call_failed(503, now).expect("down");
        assert_eq!((c.new.reason, c.new.code), (Reason::CallFailure, Some(503)));
        assert_eq!(d.call_failed(503, now), None, "once");
        assert!(d.wants_probe());
        assert!(d.probe_result(ProbeResult::Ok(200), 1, 1, now).is_some());
        assert!(d.enabled() && !d.wants_probe());
        assert!(!probed(0, false).dest(0).unwrap().wants_probe());
    }

    #[test]
    fn remote_load_counts_against_capacity() {
        let t = table(&[(1, 1, "pstn=3"), (2, 1, "pstn=3")]);
        let s = set(&t, &["pstn"]);
        // Another node holds 2 calls on the first destination: the second wins.
        t.dest(0).unwrap().counter(0).unwrap().set_remote(2);
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        // 1 left on each: the tie goes to the first.
        assert_eq!(pick(&t, 1, s, ""), Ok(0));
        assert_eq!(pick(&t, 1, s, ""), Ok(1));
        // 1 local + 2 remote = 3 = capacity on the first; the second is full.
        assert_eq!(pick(&t, 1, s, ""), Err(LbError::Full));
        // The remote share goes away (a dead node's TTL expired): room again.
        t.dest(0).unwrap().counter(0).unwrap().set_remote(0);
        assert_eq!(pick(&t, 1, s, ""), Ok(0));
        assert_eq!((load(&t, 0, 0), load(&t, 1, 0)), (2, 3));
        for (d, n) in [(0u16, 2), (1, 3)] {
            for _ in 0..n {
                t.release(Hold {
                    dest: d,
                    generation: t.dest(d).unwrap().generation,
                    resources: s,
                });
            }
        }
        assert_eq!(t.total_load(), 0);
    }

    #[test]
    fn counters_are_cache_line_sized() {
        assert_eq!(std::mem::align_of::<Counter>(), 64);
    }
}
