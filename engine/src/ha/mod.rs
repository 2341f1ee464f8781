//! High availability and scale-out through Redis: dialog replication, a
//! takeover that loads the replicated dialogs, shared load between active
//! nodes, and the virtual-IP role of an active/standby pair.
//!
//! # Threads and queues
//! Workers never wait for Redis. Each worker's [`Proxy`] queues
//! [`DialogEvent`]s (confirmed, ended); the worker moves them, after each
//! batch, into one bounded lock-free queue ([`crossbeam_queue::ArrayQueue`];
//! full: the event is dropped and counted). The HA thread (`siplb-ha`)
//! drains that queue every few milliseconds into its *mirror* (the live
//! replicated records of this node) and writes the changes to Redis in one
//! pipeline: `SET key record PX ttl` on confirm (TTL = the dialog's
//! remaining lifetime), `DEL key` on end.
//!
//! # Redis unreachable
//! Connections have short timeouts (200 ms). On an error the thread logs
//! once, counts, marks the node degraded (metrics, `health`) and retries
//! once a second; meanwhile events still go into the mirror, and ended
//! dialogs into a list of keys to delete. When Redis answers again the
//! thread writes the whole mirror and the pending deletions (a resync), so
//! Redis catches up with the live state.
//!
//! # Roles and takeover
//! Without `vip` a node is always active. With `vip`, it is active while
//! that address is assigned to one of its interfaces (keepalived moves
//! it); the thread checks every `interval`. On becoming active (and at
//! start when active) it loads the records of its scope (the advertised
//! address) and hands each to the worker its Call-ID hashes to
//! ([`Control::Adopt`]); the worker counts the load again and indexes the
//! dialog by Call-ID (see `core::replica`). On losing the address the
//! node drops its dialogs without touching Redis ([`Control::ReleaseAll`]):
//! the new active owns them.
//!
//! # Shared load (active/active)
//! Every `interval` each node replaces its hash `{cluster}:load:{node}`
//! (field `destination_id/resource`, value = its own load) atomically,
//! with a TTL of `load_ttl`, registers in the sorted set
//! `{cluster}:nodes`, reads the other nodes' hashes, and stores their sum
//! per destination and resource in the counters' `remote` part, which
//! selection adds to the local load (`lb.rs`). A dead node's hash expires
//! with its TTL, and its share with it. While Redis is unreachable the
//! last remote counts stay in force.
//!
//! Over-admission bound: a node sees another node's admissions at most
//! `2 * interval + rtt` late (the other's publish period plus its own read
//! period), so a destination can exceed its capacity by at most the calls
//! the *other* nodes admit on it within that window:
//! `excess <= rate_others * (2 * interval + rtt)`, and never more than
//! `(nodes - 1) * capacity`.
//!
//! # Destination status
//! The enabled flag of every destination is mirrored in the hash
//! `{cluster}:status`: a local change (admin, probing) is written, a change
//! written by another node is applied.

mod record;
mod replicator;
pub mod vip;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::ArrayQueue;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{parse_duration, Config, ConfigError};
use crate::core::replica::{Adopted, DialogEvent};
use crate::core::Proxy;
use crate::lb::Table;
use crate::reload::Live;
use crate::runtime::udp::EventFd;

pub use record::Record;

/// `[ha]` in the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaFile {
    /// Redis URL (`redis://127.0.0.1:6379/0`); absent: no replication.
    #[serde(default)]
    pub redis: Option<String>,
    /// This node's name (unique in the group); default hostname/internal address.
    #[serde(default)]
    pub node: Option<String>,
    /// Key prefix shared by the nodes of one group.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Shared-load publish period, role check period.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// TTL of a node's published load (default 10 x interval, at least 1 s).
    #[serde(default)]
    pub load_ttl: Option<String>,
    /// Publish this node's load and add the others' (active/active);
    /// default: on without `vip`, off with it (a pair has one active).
    #[serde(default)]
    pub share_load: Option<bool>,
    /// Virtual IP: active only while it is local (active/standby pair).
    #[serde(default)]
    pub vip: Option<String>,
    /// Depth of the event queue from the workers.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for HaFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_cluster() -> String {
    "siplb".into()
}
fn default_interval() -> String {
    "100ms".into()
}
fn default_queue() -> usize {
    65536
}

/// Validated `[ha]`.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Redis URL.
    pub redis: String,
    /// Node name.
    pub node: String,
    /// Key prefix.
    pub cluster: String,
    /// Publish / role check period.
    pub interval: Duration,
    /// TTL of the published load.
    pub load_ttl: Duration,
    /// Active/active load sharing.
    pub share_load: bool,
    /// Virtual IP of an active/standby pair.
    pub vip: Option<IpAddr>,
    /// Event queue depth.
    pub queue: usize,
}

impl HaConfig {
    /// Validates `[ha]`; `None` when no Redis is configured.
    pub fn build(f: &HaFile, internal_ip: IpAddr, internal_port: u16) -> Result<Option<HaConfig>, ConfigError> {
        let Some(redis) = f.redis.clone() else {
            if f.vip.is_some() {
                return Err(ConfigError::Invalid("ha.vip needs ha.redis".into()));
            }
            return Ok(None);
        };
        if redis::Client::open(redis.as_str()).is_err() {
            return Err(ConfigError::Invalid(format!(
                "ha.redis: {redis:?} is not a redis:// URL"
            )));
        }
        let dur = |s: &str, what: &str| {
            parse_duration(s)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Invalid(format!("ha.{what}: bad duration {s:?}")))
        };
        let interval = dur(&f.interval, "interval")?;
        let load_ttl = match &f.load_ttl {
            Some(t) => dur(t, "load_ttl")?,
            None => (interval * 10).max(Duration::from_secs(1)),
        };
        if load_ttl <= interval {
            return Err(ConfigError::Invalid(
                "ha.load_ttl must be longer than ha.interval".into(),
            ));
        }
        let vip = match &f.vip {
            Some(v) => Some(
                v.parse::<IpAddr>()
                    .map_err(|_| ConfigError::Invalid(format!("ha.vip: {v:?} is not an IP address")))?,
            ),
            None => None,
        };
        let bad_name = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '*');
        let node = match &f.node {
            Some(n) => n.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}/{internal_ip}:{internal_port}", host.trim())
            }
        };
        if bad_name(&node) || bad_name(&f.cluster) {
            return Err(ConfigError::Invalid(
                "ha.node and ha.cluster must be non-empty, without spaces or '*'".into(),
            ));
        }
        Ok(Some(HaConfig {
            redis,
            node,
            cluster: f.cluster.clone(),
            interval,
            load_ttl,
            share_load: f.share_load.unwrap_or(vip.is_none()),
            vip,
            queue: f.queue.clamp(1024, 1 << 22),
        }))
    }
}

/// A command from the HA thread to a worker.
#[derive(Debug)]
pub enum Control {
    /// Take over these replicated dialogs.
    Adopt(Vec<Adopted>),
    /// Drop every dialog without replication events (the VIP left).
    ReleaseAll,
}

/// HA state shared with the admin API (relaxed atomics).
#[derive(Debug, Default)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// Redis answered the last command.
    pub redis_up: AtomicBool,
    /// This node is active (holds the VIP, or has none).
    pub active: AtomicBool,
    /// Records written (SET).
    pub writes: AtomicU64,
    /// Records deleted (DEL).
    pub deletes: AtomicU64,
    /// Redis commands or connections that failed.
    pub redis_errors: AtomicU64,
    /// Events lost because the queue was full.
    pub events_dropped: AtomicU64,
    /// Full rewrites of the live state after Redis came back.
    pub resyncs: AtomicU64,
    /// Times this node became active and loaded the replicated dialogs.
    pub takeovers: AtomicU64,
    /// Dialogs loaded on takeovers.
    pub adopted: AtomicU64,
    /// Live records this node replicates now.
    pub records: AtomicU64,
    /// Other nodes whose load was read at the last interval.
    pub peers: AtomicU64,
    /// Oldest view of another node's load used so far, in ms (its
    /// publication to the read that replaced it): the measured Δ of the
    /// over-admission bound.
    pub max_remote_age_ms: AtomicU64,
    /// Shared load on.
    pub share_load: bool,
}

impl Status {
    /// True when Redis is down (serving goes on, replication is behind).
    pub fn degraded(&self) -> bool {
        !self.redis_up.load(Ordering::Relaxed)
    }

    /// The `health` answer's HA part.
    pub fn health(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "node": self.node,
            "role": if self.active.load(Ordering::Relaxed) { "active" } else { "standby" },
            "redis": if self.degraded() { "down" } else { "up" },
            "replicated_dialogs": g(&self.records),
            "peers": g(&self.peers),
            "max_remote_age_ms": g(&self.max_remote_age_ms),
            "share_load": self.share_load,
            "events_dropped": g(&self.events_dropped),
            "takeovers": g(&self.takeovers),
            "adopted_dialogs": g(&self.adopted),
        })
    }
}

/// The `health` answer: `status` is `"ok"`, or `"degraded"` when Redis is
/// unreachable (the node still serves; keepalived should not fail over
/// for that, since the peer sees the same Redis).
pub fn health(ha: Option<&Status>, workers: usize) -> Value {
    match ha {
        None => json!({"status": "ok", "role": "active", "redis": "off", "workers": workers}),
        Some(s) => {
            let mut v = s.health();
            v["status"] = json!(if s.degraded() { "degraded" } else { "ok" });
            v["workers"] = json!(workers);
            v
        }
    }
}

/// Prometheus families (with `# HELP` and `# TYPE`) for the HA state and
/// the remote load; appended to `/metrics` when `[ha]` is configured.
pub fn metrics(ha: &Status, table: &Table, out: &mut String) {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let b = |a: &AtomicBool| u64::from(a.load(Ordering::Relaxed));
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP siplb_ha_{name} {help}\n# TYPE siplb_ha_{name} {kind}\nsiplb_ha_{name} {value}\n"
        ));
    };
    family(
        "redis_up",
        "gauge",
        "1 while Redis answers.",
        b(&ha.redis_up).to_string(),
    );
    family(
        "active",
        "gauge",
        "1 while this node is active (holds the VIP, or has none).",
        b(&ha.active).to_string(),
    );
    for (name, help, v) in [
        ("writes_total", "Dialog records written to Redis.", &ha.writes),
        ("deletes_total", "Dialog records deleted from Redis.", &ha.deletes),
        (
            "redis_errors_total",
            "Redis commands or connections that failed.",
            &ha.redis_errors,
        ),
        (
            "events_dropped_total",
            "Dialog events lost because the queue was full.",
            &ha.events_dropped,
        ),
        (
            "resyncs_total",
            "Rewrites of the live state after Redis came back.",
            &ha.resyncs,
        ),
        (
            "takeovers_total",
            "Times this node became active and loaded the replicated dialogs.",
            &ha.takeovers,
        ),
        ("adopted_dialogs_total", "Dialogs loaded on takeovers.", &ha.adopted),
    ] {
        family(name, "counter", help, g(v).to_string());
    }
    family(
        "replicated_dialogs",
        "gauge",
        "Live dialog records of this node.",
        g(&ha.records).to_string(),
    );
    family(
        "peers",
        "gauge",
        "Other nodes whose load was read at the last interval.",
        g(&ha.peers).to_string(),
    );
    family(
        "remote_load_age_max_seconds",
        "gauge",
        "Oldest view of another node's load used so far.",
        (g(&ha.max_remote_age_ms) as f64 / 1000.0).to_string(),
    );
    out.push_str("# HELP siplb_destination_remote_load Load the other nodes hold on a destination, as last read.\n");
    out.push_str("# TYPE siplb_destination_remote_load gauge\n");
    let names = table.resource_names();
    for d in table.destinations() {
        for &(rid, _) in &d.config.resources {
            if let (Some(c), Some(r)) = (d.counter(rid), names.get(rid)) {
                out.push_str(&format!(
                    "siplb_destination_remote_load{{group=\"{}\",destination=\"{}\",resource=\"{r}\"}} {}\n",
                    d.config.group,
                    d.config.id,
                    c.remote()
                ));
            }
        }
    }
}

/// A worker's end of the HA plumbing.
pub struct WorkerLink {
    events: Arc<ArrayQueue<DialogEvent>>,
    control: Receiver<Control>,
    status: Arc<Status>,
}

impl WorkerLink {
    /// Applies pending commands, then moves the proxy's dialog events into
    /// the queue (never blocks). Call after each batch.
    pub fn pump(&self, proxy: &mut Proxy, now: Instant) {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::Adopt(list) => {
                    for a in list {
                        proxy.adopt(now, a);
                    }
                }
                Control::ReleaseAll => proxy.release_all(),
            }
        }
        while let Some(e) = proxy.poll_event() {
            if self.events.push(e).is_err() {
                self.status.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The HA plumbing before the thread starts.
pub struct Ha {
    cfg: HaConfig,
    events: Arc<ArrayQueue<DialogEvent>>,
    controls: Vec<Sender<Control>>,
    receivers: Vec<Receiver<Control>>,
    status: Arc<Status>,
}

impl Ha {
    /// The queues for `workers` workers, when `[ha]` is configured.
    pub fn new(config: &Config) -> Option<Ha> {
        let cfg = config.ha.clone()?;
        let (controls, receivers) = (0..config.workers).map(|_| crossbeam_channel::bounded(64)).unzip();
        let status = Arc::new(Status {
            node: cfg.node.clone(),
            share_load: cfg.share_load,
            active: AtomicBool::new(cfg.vip.is_none()),
            ..Status::default()
        });
        Some(Ha {
            events: Arc::new(ArrayQueue::new(cfg.queue)),
            controls,
            receivers,
            status,
            cfg,
        })
    }

    /// Worker `i`'s link.
    pub fn link(&self, i: usize) -> WorkerLink {
        WorkerLink {
            events: self.events.clone(),
            control: self.receivers[i].clone(),
            status: self.status.clone(),
        }
    }

    /// The shared status.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Starts the HA thread; it exits (after a last flush) when `stop` is set.
    pub fn start(
        self,
        config: Arc<Config>,
        live: Arc<Live>,
        wakers: Vec<Arc<EventFd>>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let r = replicator::Replicator::new(self.cfg, config, live, self.events, self.controls, wakers, self.status);
        std::thread::Builder::new()
            .name("siplb-ha".into())
            .spawn(move || r.run(&stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(extra: &str) -> Result<Option<HaConfig>, ConfigError> {
        let text = format!("[server]\nlisten = [\"127.0.0.1:5060\"]\n[ha]\n{extra}");
        Config::parse(&text).map(|c| c.ha)
    }

    #[test]
    fn config_defaults_and_errors() {
        assert!(ha("").unwrap().is_none());
        let h = ha("redis = \"redis://127.0.0.1:6379\"\nnode = \"a\"").unwrap().unwrap();
        assert_eq!(h.interval, Duration::from_millis(100));
        assert_eq!(h.load_ttl, Duration::from_secs(1));
        assert!(h.share_load && h.vip.is_none());
        assert_eq!(h.cluster, "siplb");
        assert!(ha("vip = \"10.0.0.1\"").is_err(), "vip without redis");
        assert!(ha("redis = \"nope\"").is_err());
        assert!(ha("redis = \"redis://x\"\ninterval = \"0s\"").is_err());
        assert!(ha("redis = \"redis://x\"\nload_ttl = \"50ms\"").is_err());
        assert!(ha("redis = \"redis://x\"\nnode = \"a b\"").is_err());
        assert!(ha("redis = \"redis://x\"\nbogus = 1").is_err());
        let h = ha("redis = \"redis://x\"\nvip = \"10.0.0.100\"").unwrap().unwrap();
        assert_eq!(h.vip, Some("10.0.0.100".parse().unwrap()));
        assert!(!h.share_load, "a pair shares no load by default");
        assert!(h.node.ends_with("/127.0.0.1:5070"), "{}", h.node);
    }

    #[test]
    fn health_without_ha_is_ok() {
        let v = health(None, 2);
        assert_eq!(v["status"], "ok");
        let s = Status::default();
        assert_eq!(health(Some(&s), 2)["status"], "degraded");
        s.redis_up.store(true, Ordering::Relaxed);
        assert_eq!(health(Some(&s), 2)["status"], "ok");
        assert_eq!(health(Some(&s), 2)["role"], "standby");
    }
}

#[cfg(test)]
mod example_tests {
    use crate::config::Config;

    #[test]
    fn shipped_ha_examples_are_valid() {
        let pair = Config::parse(include_str!("../../../examples/keepalived/siplb-lb1.toml")).unwrap();
        assert!(pair.freebind);
        let ha = pair.ha.unwrap();
        assert_eq!(ha.vip, Some("192.0.2.100".parse().unwrap()));
        assert_eq!(ha.node, "lb1");
        let aa = Config::parse(include_str!("../../../examples/keepalived/siplb-active-active.toml")).unwrap();
        assert!(aa.ha.unwrap().share_load);
    }
}
