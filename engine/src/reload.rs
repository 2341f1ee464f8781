//! Reload: the running configuration and destination table as one
//! atomically swapped snapshot.
//!
//! [`Live`] holds the current [`Snapshot`] (configuration + [`Table`]) in an
//! `ArcSwap`, plus a generation counter. Workers never lock: once per loop
//! turn each reads the generation (one relaxed atomic load) and, when it
//! moved, takes the new snapshot and hands it to its proxy
//! (`Proxy::reload`). Workers do that right after waking, before handling
//! what woke them, so a request sent after a reload was acknowledged is
//! routed by the new snapshot. The admin thread (`lb_reload`, `ds_reload`) and the
//! main thread (SIGHUP) call [`Live::reload`]; reloads are serialised by a
//! mutex that only they take.
//!
//! A reload re-reads the configuration file (and the destination source it
//! names) and validates it as a whole: any error rejects it and the running
//! snapshot stays. What a reload changes: destinations, routing rules,
//! timers, failover policy. What it cannot change without a restart
//! (sockets, threads, table sizes: `[server]`, `[admin]`, `[limits]`) is
//! kept as running and reported in [`Reloaded::not_reloaded`].
//!
//! Destinations that keep their id and URI keep their load counters and
//! status; removed ones take no new calls and are freed when their last
//! call ends (see the `lb` module docs on slots).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::lb::{ReloadReport, Table, TableError};

/// One consistent state: the configuration and its destination table.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration.
    pub config: Arc<Config>,
    /// The destinations and their load.
    pub table: Arc<Table>,
}

/// Why a reload was refused (the running snapshot stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration (or its destination source) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new destination list does not fit the running table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// Started without a configuration file.
    #[error("no configuration file to reload")]
    NoFile,
}

/// What a successful reload did.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    /// Configured destinations now.
    pub destinations: usize,
    /// Routing rules now.
    pub rules: usize,
    /// Destinations kept, added, removed (and still draining).
    pub report: ReloadReport,
    /// Bad destination rows that were reported and skipped.
    pub skipped: Vec<String>,
    /// Settings that changed in the file but need a restart; the running
    /// values stay.
    pub not_reloaded: Vec<&'static str>,
}

impl Reloaded {
    /// Logs the outcome once; `trigger` says what asked for the reload
    /// (an admin command or `SIGHUP`).
    pub fn log(&self, trigger: &str) {
        tracing::info!(
            trigger,
            destinations = self.destinations,
            rules = self.rules,
            kept = ?self.report.kept,
            added = ?self.report.added,
            removed = ?self.report.removed,
            draining = ?self.report.draining,
            skipped = ?self.skipped,
            not_reloaded = ?self.not_reloaded,
            "reloaded"
        );
    }
}

/// The running state, shared by workers, the admin thread and `main`.
#[derive(Debug)]
pub struct Live {
    path: Option<PathBuf>,
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    lock: Mutex<()>,
}

impl Live {
    /// Starts from `config` (read from `path`, which reloads re-read).
    pub fn new(config: Arc<Config>, path: Option<PathBuf>) -> Live {
        let table = Arc::new(Table::new(&config.destinations, &config.resource_names));
        Live {
            path,
            current: ArcSwap::from_pointee(Snapshot { config, table }),
            generation: AtomicU64::new(0),
            lock: Mutex::new(()),
        }
    }

    /// Counts the snapshots installed so far; workers compare it with the
    /// one they hold.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current destination table.
    pub fn table(&self) -> Arc<Table> {
        self.current.load().table.clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.current.load().config.clone()
    }

    /// Re-reads the configuration file and installs it (see the module docs).
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.snapshot();
        let config = Config::load_seeded(path, running.table.resource_names())?;
        self.install(&running, config)
    }

    /// Installs an already parsed configuration (built with
    /// `Config::parse_seeded` from the running resource names).
    pub fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.snapshot();
        self.install(&running, config)
    }

    fn install(&self, running: &Snapshot, mut config: Config) -> Result<Reloaded, ReloadError> {
        let not_reloaded = keep_static(&running.config, &mut config);
        let (table, report) = running.table.reload(&config.destinations, &config.resource_names)?;
        let done = Reloaded {
            destinations: config.destinations.len(),
            rules: config.rules.len(),
            report,
            skipped: config.skipped.clone(),
            not_reloaded,
        };
        self.current.store(Arc::new(Snapshot {
            config: Arc::new(config),
            table: Arc::new(table),
        }));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(done)
    }
}

/// Copies into `new` what a reload cannot change; returns the names of
/// those that differ.
fn keep_static(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($field:ident, $name:expr) => {
            if format!("{:?}", new.$field) != format!("{:?}", running.$field) {
                changed.push($name);
                new.$field = running.$field.clone();
            }
        };
    }
    keep!(listen, "server.listen");
    keep!(workers, "server.workers");
    keep!(pin_cores, "server.pin_cores");
    keep!(internal_ip, "server.internal_address");
    keep!(internal_port_base, "server.internal_port_base");
    keep!(advertised, "server.advertised_address");
    keep!(io, "server.io");
    keep!(log_level, "server.log_level");
    keep!(socket_buffer, "server.socket_buffer");
    keep!(spread_by_call_id, "server.ownership");
    keep!(admin, "admin");
    keep!(admin_token, "admin.token");
    keep!(probing, "probing");
    keep!(limits, "limits");
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{Flags, Tried};

    const BASE: &str = "[server]\nlisten = [\"127.0.0.1:5060\"]\nworkers = 2\n";

    fn dest(id: u32, port: u16, res: &str) -> String {
        format!("[[destinations]]\nid = {id}\ngroup = 1\nuri = \"sip:127.0.0.1:{port}\"\nresources = \"{res}\"\n")
    }

    fn parse(live: &Live, text: &str) -> Config {
        let names = live.table().resource_names().to_vec();
        Config::parse_seeded(text, &names).unwrap()
    }

    fn pick(t: &Table) -> crate::lb::Hold {
        let set = crate::lb::ResourceSet::EMPTY.with(0);
        t.load_balance(1, set, Flags::default(), &Tried::default(), &mut |_| 0)
            .unwrap()
    }

    #[test]
    fn kept_destinations_keep_load_and_status_removed_ones_drain() {
        let live = Live::new(
            Arc::new(
                Config::parse(&format!(
                    "{BASE}{}{}",
                    dest(1, 5081, "pstn=10"),
                    dest(2, 5082, "pstn=10")
                ))
                .unwrap(),
            ),
            None,
        );
        let g0 = live.generation();
        let old = live.table();
        let h1 = pick(&old); // dest 1 (tie: first)
        let h2 = pick(&old); // dest 2
        assert_eq!((h1.dest, h2.dest), (0, 1));
        old.destinations()[0].set_enabled(false);

        // Dest 2 removed, dest 1 resized, dest 3 added; "vm" is new.
        let text = format!("{BASE}{}{}", dest(3, 5083, "vm=1;pstn=5"), dest(1, 5081, "pstn=20"));
        let r = live.apply(parse(&live, &text)).unwrap();
        assert!(live.generation() > g0);
        assert_eq!(r.report.kept, vec![1]);
        assert_eq!(r.report.added, vec![3]);
        assert_eq!(r.report.removed, vec![2]);
        assert_eq!(r.report.draining, vec![2]);
        assert!(r.not_reloaded.is_empty());
        let new = live.table();
        assert_eq!(new.resource_names(), &["pstn".to_string(), "vm".to_string()]);
        // Table order is the new file's; dest 1 keeps slot 0, load and status.
        let order: Vec<(u16, u32)> = new.configured().map(|(i, d)| (i, d.config.id)).collect();
        assert_eq!(order, vec![(2, 3), (0, 1)]);
        let d1 = new.by_id(1).unwrap().1;
        assert_eq!(d1.counter(0).unwrap().load(), 1);
        assert_eq!(d1.counter(0).unwrap().capacity(), 20);
        assert!(!d1.enabled());
        // Dest 2 is retired: no new calls, still listed as draining.
        assert!(new.by_id(2).is_none());
        assert_eq!(new.draining().map(|(_, d)| d.config.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(pick(&new).dest, 2);
        // Calls reserved on the old snapshot are released on the new one.
        new.release(h1);
        new.release(h2);
        assert_eq!(new.draining().count(), 0);
        assert_eq!(new.underflows(), 0);

        // Next reload: a new destination reuses the drained slot with a new
        // generation; a stale hold on the old one releases nothing.
        let text = format!(
            "{BASE}{}{}{}",
            dest(3, 5083, "pstn=5"),
            dest(1, 5081, "pstn=20"),
            dest(4, 5084, "pstn=9")
        );
        let r = live.apply(parse(&live, &text)).unwrap();
        assert_eq!(r.report.added, vec![4]);
        let t = live.table();
        let (slot, d4) = t.by_id(4).unwrap();
        assert_eq!(slot, 1);
        assert_eq!(d4.counter(0).unwrap().load(), 0);
        t.release(h2);
        assert_eq!(t.underflows(), 0);
        assert_eq!(t.total_load(), 1);
    }

    #[test]
    fn static_settings_are_kept_and_named() {
        let live = Live::new(
            Arc::new(Config::parse(&format!("{BASE}{}", dest(1, 5081, "pstn=1"))).unwrap()),
            None,
        );
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:5999\"]\nworkers = 3\n[timers]\nt1 = \"100ms\"\n{}",
            dest(1, 5081, "pstn=1")
        );
        let r = live.apply(parse(&live, &text)).unwrap();
        assert_eq!(
            r.not_reloaded,
            vec!["server.listen", "server.workers", "server.advertised_address"]
        );
        let c = live.config();
        assert_eq!(c.listen, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(c.workers, 2);
        assert_eq!(c.timers.t1, std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_bad_file_is_refused_and_the_running_one_stays() {
        let dir = std::env::temp_dir().join(format!("siplb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("siplb.toml");
        std::fs::write(&path, format!("{BASE}{}", dest(1, 5081, "pstn=1"))).unwrap();
        let live = Live::new(Arc::new(Config::load(&path).unwrap()), Some(path.clone()));
        std::fs::write(&path, format!("{BASE}{}", dest(1, 5081, "pstn=x"))).unwrap();
        let e = live.reload().unwrap_err().to_string();
        assert!(e.contains("siplb.toml: line 8"), "{e}");
        assert_eq!(live.generation(), 0);
        assert_eq!(live.table().by_id(1).unwrap().1.counter(0).unwrap().capacity(), 1);
        std::fs::write(&path, format!("{BASE}{}", dest(1, 5081, "pstn=7"))).unwrap();
        live.reload().unwrap();
        assert_eq!(live.table().by_id(1).unwrap().1.counter(0).unwrap().capacity(), 7);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
