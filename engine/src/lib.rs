//! siplb: a SIP load balancer for carrier edges.
//!
//! Layers, top down (dependencies point down only):
//! - `main.rs` (the `siplb` binary): command line, logging, signals.
//! - [`runtime`]: worker threads, sockets, timers, hand-off; the only place
//!   with syscalls and `unsafe`.
//! - [`admin`]: the JSON-RPC management API, on its own thread; [`ctl`]
//!   its command-line client (`siplb ctl`).
//! - [`core`]: the sans-IO proxy (transactions, dialogs, failover). No
//!   sockets, no clock, no threads: time and datagrams go in, datagrams and
//!   timer deadlines come out.
//! - [`lb`]: destinations and their lock-free load counters.
//! - [`reload`]: the running configuration and table as an atomically
//!   swapped snapshot; `lb_reload`/SIGHUP.
//! - [`dispatch`]: dispatcher algorithms (hash, round-robin, weighted
//!   random, priority, SRV), pure functions over a destination set.
//! - [`metrics`]: the Prometheus exposition.
//! - [`probe`]: health probing (OPTIONS), sans-IO.
//! - [`ha`]: replication through Redis, takeover, shared load (its own thread).
//! - [`config`]: the TOML configuration.
//! - [`sources`]: destinations from OpenSIPS tables (dbtext file, MySQL).

pub mod admin;
pub mod config;
pub mod core;
pub mod ctl;
pub mod dispatch;
pub mod ha;
pub mod lb;
pub mod metrics;
pub mod probe;
pub mod reload;
pub mod runtime;
pub mod sources;

pub use siplb_parser as parser;
