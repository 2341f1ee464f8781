//! The HA thread: drains dialog events into Redis, resyncs after an
//! outage, loads dialogs on takeover, publishes and reads shared load,
//! mirrors destination status. See the module docs of `crate::ha`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;

use super::record::{self, Record};
use super::{vip, Control, HaConfig, Status};
use crate::config::Config;
use crate::core::msg;
use crate::core::replica::{Adopted, DialogEvent};
use crate::lb::{Hold, Reason, ResourceSet, Table};
use crate::reload;
use crate::runtime::udp::EventFd;

/// Redis connect/read/write timeout: the thread must stay responsive.
const TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How often the event queue is drained.
const DRAIN: Duration = Duration::from_millis(2);
/// Commands per pipeline when writing many records.
const CHUNK: usize = 512;

/// A live record of this node (the mirror is indexed by the core's
/// Call-ID hash, what the workers' events carry).
struct Live {
    value: String,
    /// Lifetime end, Unix ms.
    expires: u64,
    /// [`record::stable_hash`] of the Call-ID: the Redis key.
    key: u64,
}

enum Op {
    /// Write the mirror entry with this core hash.
    Set(u64),
    /// Delete the record with this stable hash.
    Del(u64),
}

pub(super) struct Replicator {
    cfg: HaConfig,
    /// The destination table as of `table_generation`; followed across
    /// reloads (`follow_reloads`).
    table: Arc<Table>,
    live: Arc<reload::Live>,
    table_generation: u64,
    events: Arc<ArrayQueue<DialogEvent>>,
    controls: Vec<Sender<Control>>,
    wakers: Vec<Arc<EventFd>>,
    status: Arc<Status>,
    client: Option<redis::Client>,
    con: Option<redis::Connection>,
    next_retry: Instant,
    logged_down: bool,
    mirror: HashMap<u64, Live>,
    pending_del: HashSet<u64>,
    resync: bool,
    load_pending: bool,
    scope: String,
    /// Longest a loaded dialog may still live (the configured lifetime).
    lifetime: Duration,
    last_status: Vec<Option<(bool, Reason)>>,
    ops: Vec<Op>,
    /// Publication time (Unix ms) of each other node's load, as last read.
    published: HashMap<String, u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replicator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: HaConfig,
        config: Arc<Config>,
        live: Arc<reload::Live>,
        events: Arc<ArrayQueue<DialogEvent>>,
        controls: Vec<Sender<Control>>,
        wakers: Vec<Arc<EventFd>>,
        status: Arc<Status>,
    ) -> Replicator {
        let table_generation = live.generation();
        let table = live.table();
        let n = table.destinations().len();
        Replicator {
            client: redis::Client::open(cfg.redis.as_str()).ok(),
            scope: config.advertised.to_string(),
            lifetime: config.timers.dialog_lifetime,
            load_pending: status.active.load(Ordering::Relaxed),
            cfg,
            table,
            live,
            table_generation,
            events,
            controls,
            wakers,
            status,
            con: None,
            next_retry: Instant::now(),
            logged_down: false,
            mirror: HashMap::new(),
            pending_del: HashSet::new(),
            resync: false,
            last_status: vec![None; n],
            ops: Vec::new(),
            published: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, stop: &AtomicBool) {
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.follow_reloads();
            self.drain();
            self.flush();
            let now = Instant::now();
            if self.con.is_none() && now >= self.next_retry {
                self.connect();
            }
            if now >= next_tick {
                self.tick();
                next_tick = (next_tick + self.cfg.interval).max(now);
            }
            std::thread::sleep(DRAIN);
        }
        // The workers have stopped: write what they said last.
        self.drain();
        self.flush();
        if self.con.is_some() && self.cfg.share_load {
            // Leave the group at once rather than after the TTL.
            let me = self.load_key(&self.cfg.node);
            let _ = self.query::<()>(redis::cmd("DEL").arg(me));
        }
    }

    /// Takes the table a reload installed: destinations it added are
    /// published, synced and adopted onto from now on, removed ones no
    /// longer. Every destination's last known shared status is forgotten,
    /// so the next tick reads (or writes) the shared hash for all of them
    /// as at start.
    fn follow_reloads(&mut self) {
        let g = self.live.generation();
        if g == self.table_generation {
            return;
        }
        self.table_generation = g;
        self.table = self.live.table();
        self.last_status = vec![None; self.table.destinations().len()];
    }

    fn key(&self, h: u64) -> String {
        record::key(&self.cfg.cluster, &self.scope, h)
    }

    fn load_key(&self, node: &str) -> String {
        format!("{}:load:{node}", self.cfg.cluster)
    }

    // ---- connection ----------------------------------------------------

    fn connect(&mut self) {
        self.next_retry = Instant::now() + RETRY;
        let Some(client) = &self.client else { return };
        let con = client.get_connection_with_timeout(TIMEOUT).and_then(|c| {
            c.set_read_timeout(Some(TIMEOUT))?;
            c.set_write_timeout(Some(TIMEOUT))?;
            Ok(c)
        });
        match con {
            Ok(c) => {
                self.con = Some(c);
                self.status.redis_up.store(true, Ordering::Relaxed);
                if self.logged_down {
                    tracing::info!(redis = %self.cfg.redis, "redis reachable again, catching up");
                } else {
                    tracing::info!(redis = %self.cfg.redis, node = %self.cfg.node, "replicating to redis");
                }
                self.logged_down = false;
                if self.resync {
                    self.resync();
                }
                if self.load_pending && self.con.is_some() {
                    self.takeover();
                }
            }
            Err(e) => self.down(&e),
        }
    }

    /// Marks Redis unreachable (logged once per outage).
    fn down(&mut self, e: &redis::RedisError) {
        self.con = None;
        self.resync = true;
        self.next_retry = Instant::now() + RETRY;
        self.status.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.status.redis_up.store(false, Ordering::Relaxed);
        if !self.logged_down {
            self.logged_down = true;
            tracing::warn!(redis = %self.cfg.redis, error = %e, "redis unreachable: serving on, replication degraded");
        }
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Option<T> {
        let con = self.con.as_mut()?;
        match cmd.query(con) {
            Ok(v) => Some(v),
            Err(e) => {
                self.down(&e);
                None
            }
        }
    }

    fn pipe<T: redis::FromRedisValue>(&mut self, p: &redis::Pipeline) -> Option<T> {
        let con = self.con.as_mut()?;
        match p.query(con) {
            Ok(v) => Some(v),
            Err(e) => {
                self.down(&e);
                None
            }
        }
    }

    // ---- dialog records ------------------------------------------------

    /// Moves queued events into the mirror and the pending operations.
    fn drain(&mut self) {
        let node = self.cfg.node.clone();
        while let Some(e) = self.events.pop() {
            match e {
                DialogEvent::Confirmed(c) => {
                    let Some(d) = self.table.dest(c.hold.dest) else {
                        continue;
                    };
                    let names = self.table.resource_names();
                    let expires = unix_ms() + c.lifetime.as_millis() as u64;
                    let rec = Record {
                        cid: String::from_utf8_lossy(&c.call_id).into_owned(),
                        ft: String::from_utf8_lossy(&c.from_tag).into_owned(),
                        tt: String::from_utf8_lossy(&c.to_tag).into_owned(),
                        d: d.config.id,
                        u: d.config.uri.clone(),
                        r: c.hold.resources.iter().filter_map(|r| names.get(r).cloned()).collect(),
                        s: "confirmed".into(),
                        x: expires,
                        n: node.clone(),
                    };
                    let Ok(value) = serde_json::to_string(&rec) else {
                        continue;
                    };
                    let key = record::stable_hash(&c.call_id);
                    self.mirror.insert(c.call_id_hash, Live { value, expires, key });
                    self.pending_del.remove(&key);
                    self.ops.push(Op::Set(c.call_id_hash));
                }
                DialogEvent::Ended { call_id_hash } => {
                    if let Some(l) = self.mirror.remove(&call_id_hash) {
                        self.ops.push(Op::Del(l.key));
                    }
                }
            }
        }
        self.status.records.store(self.mirror.len() as u64, Ordering::Relaxed);
    }

    /// Writes the pending operations in pipelines; when Redis is down they
    /// stay in the mirror and the pending deletions for the resync.
    fn flush(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        if self.con.is_none() {
            self.keep_for_resync(&ops);
            return;
        }
        let now = unix_ms();
        for chunk in ops.chunks(CHUNK) {
            let mut p = redis::pipe();
            let (mut sets, mut dels) = (0, 0);
            for op in chunk {
                match *op {
                    Op::Set(h) => {
                        if let Some(l) = self.mirror.get(&h) {
                            let ttl = l.expires.saturating_sub(now).max(1);
                            p.cmd("SET")
                                .arg(self.key(l.key))
                                .arg(&l.value)
                                .arg("PX")
                                .arg(ttl)
                                .ignore();
                            sets += 1;
                        }
                    }
                    Op::Del(h) => {
                        p.cmd("DEL").arg(self.key(h)).ignore();
                        dels += 1;
                    }
                }
            }
            if self.pipe::<()>(&p).is_none() {
                self.keep_for_resync(&ops);
                return;
            }
            self.status.writes.fetch_add(sets, Ordering::Relaxed);
            self.status.deletes.fetch_add(dels, Ordering::Relaxed);
        }
    }

    fn keep_for_resync(&mut self, ops: &[Op]) {
        self.resync = true;
        for op in ops {
            if let Op::Del(h) = *op {
                self.pending_del.insert(h);
            }
        }
    }

    /// Rewrites every live record and the deletions missed while Redis
    /// was unreachable.
    fn resync(&mut self) {
        let now = unix_ms();
        let mut cmds: Vec<redis::Cmd> = Vec::new();
        let mut live = HashSet::new();
        for l in self.mirror.values() {
            live.insert(l.key);
            let mut c = redis::cmd("SET");
            c.arg(self.key(l.key))
                .arg(&l.value)
                .arg("PX")
                .arg(l.expires.saturating_sub(now).max(1));
            cmds.push(c);
        }
        for &h in &self.pending_del {
            if !live.contains(&h) {
                let mut c = redis::cmd("DEL");
                c.arg(self.key(h));
                cmds.push(c);
            }
        }
        let n = cmds.len();
        for chunk in cmds.chunks(CHUNK) {
            let mut p = redis::pipe();
            for c in chunk {
                p.add_command(c.clone()).ignore();
            }
            if self.pipe::<()>(&p).is_none() {
                return;
            }
        }
        self.pending_del.clear();
        self.resync = false;
        self.status.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            commands = n,
            records = self.mirror.len(),
            "redis caught up with the live state"
        );
    }

    /// Loads the records of this node's scope and hands them to the workers.
    fn takeover(&mut self) {
        let pattern = record::pattern(&self.cfg.cluster, &self.scope);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let Some((next, batch)) = self.query::<(u64, Vec<String>)>(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
            ) else {
                return;
            };
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let now_ms = unix_ms();
        let now = Instant::now();
        let workers = self.controls.len().max(1);
        let mut per_worker: Vec<Vec<Adopted>> = vec![Vec::new(); workers];
        let (mut loaded, mut skipped) = (0u64, 0u64);
        for chunk in keys.chunks(CHUNK) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("GET").arg(k);
            }
            let Some(values) = self.pipe::<Vec<Option<String>>>(&p) else {
                return;
            };
            for (k, v) in chunk.iter().zip(values) {
                let Some(rec) = v.and_then(|v| serde_json::from_str::<Record>(&v).ok()) else {
                    skipped += 1;
                    continue;
                };
                let Some(hold) = self.hold_of(&rec) else {
                    skipped += 1;
                    continue;
                };
                if rec.x <= now_ms {
                    continue;
                }
                let key = record::stable_hash(rec.cid.as_bytes());
                if record::key_hash(k) != Some(key) {
                    // Not where a record of this Call-ID belongs: leave it.
                    skipped += 1;
                    continue;
                }
                let h = msg::hash(&[rec.cid.as_bytes()]);
                let w = (h % workers as u64) as usize;
                per_worker[w].push(Adopted {
                    call_id_hash: h,
                    hold,
                    // Never longer than our own lifetime (nor an overflow
                    // from a bogus record).
                    expires: now + Duration::from_millis(rec.x - now_ms).min(self.lifetime),
                });
                let value = serde_json::to_string(&rec).unwrap_or_default();
                self.mirror.insert(
                    h,
                    Live {
                        value,
                        expires: rec.x,
                        key,
                    },
                );
                loaded += 1;
            }
        }
        for (i, list) in per_worker.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            if self.controls[i].send(Control::Adopt(list)).is_ok() {
                if let Some(w) = self.wakers.get(i) {
                    w.notify();
                }
            }
        }
        self.load_pending = false;
        self.status.takeovers.fetch_add(1, Ordering::Relaxed);
        self.status.adopted.fetch_add(loaded, Ordering::Relaxed);
        self.status.records.store(self.mirror.len() as u64, Ordering::Relaxed);
        tracing::info!(scope = %self.scope, loaded, skipped, "loaded replicated dialogs");
    }

    /// The load a record holds on this node's table: same destination id
    /// and URI, every resource known.
    fn hold_of(&self, rec: &Record) -> Option<Hold> {
        let idx = self
            .table
            .destinations()
            .iter()
            .position(|d| d.config.id == rec.d && d.config.uri == rec.u)?;
        let names = self.table.resource_names();
        let mut set = ResourceSet::EMPTY;
        for r in &rec.r {
            set = set.with(names.iter().position(|n| n == r)?);
        }
        Some(Hold {
            dest: idx as u16,
            // Unused: adoption reserves anew (`Table::count_call`), which
            // stamps the slot's current generation.
            generation: 0,
            resources: set,
        })
    }

    // ---- every interval ------------------------------------------------

    fn tick(&mut self) {
        if let Some(ip) = self.cfg.vip {
            let local = vip::is_local(ip);
            let active = self.status.active.load(Ordering::Relaxed);
            if local && !active {
                tracing::info!(%ip, "virtual IP is here: active, loading replicated dialogs");
                self.status.active.store(true, Ordering::Relaxed);
                self.load_pending = true;
            } else if !local && active {
                tracing::info!(%ip, "virtual IP left: standby, dropping dialogs (the new active owns them)");
                self.status.active.store(false, Ordering::Relaxed);
                self.load_pending = false;
                // Let the workers' last events through first.
                self.drain();
                self.flush();
                for (i, c) in self.controls.iter().enumerate() {
                    if c.send(Control::ReleaseAll).is_ok() {
                        if let Some(w) = self.wakers.get(i) {
                            w.notify();
                        }
                    }
                }
                self.mirror.clear();
                self.pending_del.clear();
            }
        }
        if self.con.is_none() {
            return;
        }
        if self.load_pending {
            self.takeover();
        }
        if self.cfg.share_load {
            self.share_load();
        }
        self.sync_status();
    }

    /// Publishes this node's load, reads the others', sets `remote`.
    fn share_load(&mut self) {
        let names = self.table.resource_names().to_vec();
        let me = self.load_key(&self.cfg.node);
        let nodes_key = format!("{}:nodes", self.cfg.cluster);
        let mut fields: Vec<(String, u32)> = Vec::new();
        for d in self.table.destinations() {
            for &(rid, _) in &d.config.resources {
                if let (Some(c), Some(n)) = (d.counter(rid), names.get(rid)) {
                    fields.push((format!("{}/{n}", d.config.id), c.load()));
                }
            }
        }
        let now = unix_ms();
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("DEL").arg(&me).ignore();
        if !fields.is_empty() {
            p.cmd("HSET").arg(&me).arg(&fields).ignore();
        }
        p.cmd("PEXPIRE")
            .arg(&me)
            .arg(self.cfg.load_ttl.as_millis() as u64)
            .ignore();
        p.cmd("ZADD").arg(&nodes_key).arg(now).arg(&self.cfg.node).ignore();
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&nodes_key)
            .arg("-inf")
            .arg(now.saturating_sub(600_000))
            .ignore();
        p.cmd("ZRANGE").arg(&nodes_key).arg(0).arg(-1).arg("WITHSCORES");
        let Some((nodes,)) = self.pipe::<(Vec<(String, f64)>,)>(&p) else {
            return;
        };
        let now = unix_ms();
        let mut others: Vec<String> = Vec::new();
        for (n, score) in nodes {
            if n == self.cfg.node {
                continue;
            }
            // How old the view of this node was just before this read: the
            // staleness that bounds over-admission (README).
            if let Some(prev) = self.published.insert(n.clone(), score as u64) {
                let age = now.saturating_sub(prev);
                if age < self.cfg.load_ttl.as_millis() as u64 {
                    self.status.max_remote_age_ms.fetch_max(age, Ordering::Relaxed);
                }
            }
            others.push(n);
        }
        let mut p = redis::pipe();
        for n in &others {
            p.cmd("HGETALL").arg(self.load_key(n));
        }
        let maps: Vec<HashMap<String, u32>> = if others.is_empty() {
            Vec::new()
        } else {
            match self.pipe(&p) {
                Some(m) => m,
                None => return,
            }
        };
        let mut sum: HashMap<&str, u32> = HashMap::new();
        let mut peers = 0;
        for m in &maps {
            if !m.is_empty() {
                peers += 1;
            }
            for (k, v) in m {
                let e = sum.entry(k.as_str()).or_default();
                *e = e.saturating_add(*v);
            }
        }
        self.status.peers.store(peers, Ordering::Relaxed);
        for d in self.table.destinations() {
            for &(rid, _) in &d.config.resources {
                if let (Some(c), Some(n)) = (d.counter(rid), names.get(rid)) {
                    let field = format!("{}/{n}", d.config.id);
                    c.set_remote(sum.get(field.as_str()).copied().unwrap_or(0));
                }
            }
        }
    }

    /// Writes local status changes (active nodes only), applies the ones
    /// other nodes wrote. The value is `1:reason` or `0:reason` (reason as
    /// in `lb_list`: config, admin, probe, call_failure), so an operator's
    /// sticky disable stays sticky on every node.
    fn sync_status(&mut self) {
        let key = format!("{}:status", self.cfg.cluster);
        // Only an active node writes: a standby's view (its probes go out
        // from a VIP it does not hold) is not news to anyone.
        let writer = self.status.active.load(Ordering::Relaxed);
        let now_of = |d: &crate::lb::DestState| {
            let s = d.status();
            (s.up, s.reason)
        };
        let mut changed: Vec<(u32, String)> = Vec::new();
        for (i, d) in self.table.destinations().iter().enumerate() {
            let cur = now_of(d);
            if writer && self.last_status[i].is_some_and(|s| s != cur) {
                changed.push((d.config.id, status_text(cur)));
                self.last_status[i] = Some(cur);
            }
        }
        let mut p = redis::pipe();
        if !changed.is_empty() {
            p.cmd("HSET").arg(&key).arg(&changed).ignore();
        }
        p.cmd("HGETALL").arg(&key);
        let Some((remote,)) = self.pipe::<(HashMap<u32, String>,)>(&p) else {
            return;
        };
        let mut missing: Vec<(u32, String)> = Vec::new();
        let now = Instant::now();
        for (i, d) in self.table.destinations().iter().enumerate() {
            match remote.get(&d.config.id).and_then(|v| parse_status(v)) {
                Some(theirs) => {
                    if self.last_status[i] != Some(theirs) {
                        if now_of(d) != theirs {
                            tracing::info!(
                                destination = d.config.id,
                                up = theirs.0,
                                reason = theirs.1.as_str(),
                                "status set by another node"
                            );
                            d.set_status(theirs.0, theirs.1, None, Some(now));
                        }
                        self.last_status[i] = Some(theirs);
                    }
                }
                None => {
                    let cur = now_of(d);
                    self.last_status[i] = Some(cur);
                    missing.push((d.config.id, status_text(cur)));
                }
            }
        }
        if writer && !missing.is_empty() {
            let _ = self.query::<()>(redis::cmd("HSET").arg(&key).arg(&missing));
        }
    }
}

/// `1:probe`, `0:admin`...
fn status_text((up, reason): (bool, Reason)) -> String {
    format!("{}:{}", u8::from(up), reason.as_str())
}

/// Parses [`status_text`]; `None` for anything else.
fn parse_status(v: &str) -> Option<(bool, Reason)> {
    let (up, reason) = v.split_once(':')?;
    let up = match up {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    Some((up, Reason::ALL.into_iter().find(|r| r.as_str() == reason)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_round_trip() {
        for r in Reason::ALL {
            for up in [true, false] {
                assert_eq!(parse_status(&status_text((up, r))), Some((up, r)));
            }
        }
        assert_eq!(parse_status("1"), None);
        assert_eq!(parse_status("2:admin"), None);
        assert_eq!(parse_status("0:bogus"), None);
    }

    #[test]
    fn unix_ms_is_sane() {
        assert!(unix_ms() > 1_600_000_000_000);
    }
}
