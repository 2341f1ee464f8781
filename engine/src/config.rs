//! Configuration: the TOML file, parsed with serde and validated.
//!
//! Two layers:
//! - [`File`] mirrors the TOML one to one (`deny_unknown_fields` everywhere,
//!   so a misspelt key is an error, not a silent default).
//! - [`Config`] is the validated, ready-to-use form: addresses parsed,
//!   resources split, regexes compiled, rule targets resolved against the
//!   destination table. Building it never panics; every failure is a
//!   [`ConfigError`] that names the line of the offending value.
//!
//! See `examples/siplb.toml` for an annotated example and README.md for the
//! reference of every key.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dispatch::{Algorithm, DispatchFlags};
use crate::lb::{Flags, ResourceSet, MAX_RESOURCES};

/// A configuration error: what is wrong and, when known, where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A syntax or type error, or an invalid value.
    #[error("{}line {line}: {message}", file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    At {
        /// The file name, when loaded from a file.
        file: Option<String>,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An error about the configuration as a whole (no single line to blame).
    #[error("{0}")]
    Invalid(String),
}

/// The TOML file, key for key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `[server]`: sockets and threads.
    #[serde(default)]
    pub server: ServerFile,
    /// `[admin]`: the JSON-RPC management interface.
    #[serde(default)]
    pub admin: AdminFile,
    /// `[timers]`: transaction and dialog timers.
    #[serde(default)]
    pub timers: TimersFile,
    /// `[failover]`: what happens when a destination fails a call.
    #[serde(default)]
    pub failover: FailoverFile,
    /// `[limits]`: table sizes and caps.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[probing]`: health probes (OPTIONS) to the destinations.
    #[serde(default)]
    pub probing: ProbingFile,
    /// `[tcp]`: stream connections (TCP and TLS).
    #[serde(default)]
    pub tcp: TcpFile,
    /// `[tls]`: certificate, key and client verification for TLS.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// `[[destinations]]`: the backends.
    #[serde(default)]
    pub destinations: Vec<DestinationFile>,
    /// `[[sources]]`: more backends, from OpenSIPS tables (see [`crate::sources`]).
    #[serde(default)]
    pub sources: Vec<SourceFile>,
    /// `[[rules]]`: the routing policy for initial requests, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// `[ha]`: replication through Redis and shared load (see [`crate::ha`]).
    #[serde(default)]
    pub ha: crate::ha::HaFile,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Public addresses: `"127.0.0.1:5060"` or `"udp:127.0.0.1:5060"`
    /// (UDP), `"tcp:127.0.0.1:5060"`, `"tls:127.0.0.1:5061"`.
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    /// Worker threads; 0 or absent: one per core.
    #[serde(default)]
    pub workers: usize,
    /// Pin each worker to a core.
    #[serde(default = "yes")]
    pub pin_cores: bool,
    /// IP address of the backend-facing sockets (default: the first listen IP).
    #[serde(default)]
    pub internal_address: Option<Spanned<String>>,
    /// Port of worker 0's backend-facing socket; worker i uses base + i.
    #[serde(default = "default_internal_port_base")]
    pub internal_port_base: u16,
    /// `host[:port]` written into Record-Route (default: the first listen address).
    #[serde(default)]
    pub advertised_address: Option<Spanned<String>>,
    /// I/O backend: `"auto"`, `"epoll"` or `"io_uring"`.
    #[serde(default = "default_io")]
    pub io: Spanned<String>,
    /// Log filter (tracing env-filter syntax), overridden by `RUST_LOG` and `-v`.
    #[serde(default = "default_log")]
    pub log_level: String,
    /// Socket receive/send buffer size in bytes.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer: usize,
    /// Which worker owns a new call: `"socket"` (the one whose
    /// SO_REUSEPORT socket received it) or `"call-id"` (a hash of the
    /// Call-ID, which spreads the calls of a single source over all workers
    /// at the price of passing most of its requests between workers).
    #[serde(default = "default_ownership")]
    pub ownership: Spanned<String>,
    /// Bind the listen addresses even when they are not (yet) local
    /// (IP_FREEBIND): a standby binds the virtual IP before it owns it.
    #[serde(default)]
    pub freebind: bool,
}

impl Default for ServerFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Serve the admin API.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its TCP address (loopback by default).
    #[serde(default = "default_admin")]
    pub listen: Spanned<String>,
    /// Bearer token required on every request (`Authorization: Bearer
    /// TOKEN`); mandatory when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<Spanned<String>>,
}

impl Default for AdminFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[timers]`; durations are strings such as `"500ms"`, `"30s"`, `"2m"`, `"12h"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersFile {
    /// RFC 3261 T1, the first retransmission interval.
    #[serde(default = "default_t1")]
    pub t1: Spanned<String>,
    /// RFC 3261 T2, the cap of the retransmission interval.
    #[serde(default = "default_t2")]
    pub t2: Spanned<String>,
    /// No reply at all from a destination within this: local 408.
    #[serde(default = "default_fr")]
    pub fr_timeout: Spanned<String>,
    /// No final reply to an INVITE within this after a provisional: local 408.
    #[serde(default = "default_fr_inv")]
    pub fr_inv_timeout: Spanned<String>,
    /// A dialog older than this is ended and its load released.
    #[serde(default = "default_lifetime")]
    pub dialog_lifetime: Spanned<String>,
    /// How long a finished transaction stays to absorb retransmissions
    /// (RFC 3261 Timer J, RFC 6026 Timer L). Default 64*T1.
    #[serde(default)]
    pub linger: Option<Spanned<String>>,
}

impl Default for TimersFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[failover]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverFile {
    /// Final replies that make the call move to the next destination:
    /// codes (`503`) or classes (`"5xx"`). The local 408 is code 408.
    #[serde(default = "default_failover_codes")]
    pub codes: Spanned<Vec<CodeSpec>>,
    /// Disable a destination that failed a call (until re-enabled by probing or admin).
    #[serde(default)]
    pub disable_on_failure: bool,
    /// Most destinations tried for one call.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u8,
    /// After the last destination failed: `"503"` or `"last"` (relay the last reply).
    #[serde(default = "default_final_reply")]
    pub final_reply: Spanned<String>,
    /// Status code when no destination is eligible at all.
    #[serde(default = "default_no_destination_code")]
    pub no_destination_code: u16,
    /// Retry-After seconds in the 503 sent when every destination is full.
    #[serde(default = "default_retry_after")]
    pub retry_after: u32,
}

impl Default for FailoverFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// A failover code: a number or a class string like `"5xx"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum CodeSpec {
    /// One status code.
    Code(u16),
    /// A class (`"5xx"`) or a code as a string.
    Text(String),
}

/// `[probing]`: OPTIONS health probes (OpenSIPS `probing_*` parameters).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbingFile {
    /// Time between two probes of a destination (OpenSIPS `probing_interval`).
    #[serde(default = "default_probing_interval")]
    pub interval: Spanned<String>,
    /// No final reply within this: the probe failed (retransmitted as
    /// RFC 3261 Timer E meanwhile).
    #[serde(default = "default_probing_timeout")]
    pub timeout: Spanned<String>,
    /// From URI of the probes (OpenSIPS `probing_from`).
    #[serde(default = "default_probing_from")]
    pub from: Spanned<String>,
    /// Reply codes accepted besides 200 and the other codes below 400
    /// (OpenSIPS `probing_reply_codes`), such as 404.
    #[serde(default = "no_codes")]
    pub reply_codes: Spanned<Vec<u16>>,
    /// Failed probes in a row that take a destination down (`probing_threshold`).
    #[serde(default = "one")]
    pub threshold: u32,
    /// Accepted probes in a row that bring it back up.
    #[serde(default = "one")]
    pub recovery_threshold: u32,
    /// Local address of the prober's own socket (default: the internal
    /// address, any free port).
    #[serde(default)]
    pub address: Option<Spanned<String>>,
}

impl Default for ProbingFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Most live transactions per worker.
    #[serde(default = "default_max_transactions")]
    pub max_transactions: usize,
    /// Most live dialogs per worker.
    #[serde(default = "default_max_dialogs")]
    pub max_dialogs: usize,
    /// Largest datagram accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// Depth of each worker's hand-off queue.
    #[serde(default = "default_handoff")]
    pub handoff_queue: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[tcp]`: limits and timers of stream connections (TCP and TLS).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFile {
    /// Most open connections (inbound and outbound) in the process.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most inbound connections from one IP address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// A connection with no traffic for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Spanned<String>,
    /// Time allowed to send one complete message once its first byte
    /// arrived (slower senders are cut off).
    #[serde(default = "default_message_timeout")]
    pub message_timeout: Spanned<String>,
    /// Time allowed to connect to a backend (TLS handshake included).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Spanned<String>,
}

impl Default for TcpFile {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// `[tls]`: files are PEM; relative paths are taken from the working
/// directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Certificate chain presented to clients (and to backends that ask).
    pub certificate: String,
    /// Its private key.
    pub private_key: String,
    /// CA certificates for client certificates; with it, clients are
    /// asked for a certificate.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Refuse clients without a valid certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_certificate: bool,
    /// CA certificates that backends' certificates must chain to; without
    /// it, backend certificates are not verified.
    #[serde(default)]
    pub backend_ca: Option<String>,
}

/// `[[destinations]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// Unique id.
    pub id: Spanned<u32>,
    /// Group (OpenSIPS `group_id`).
    pub group: u32,
    /// SIP URI with an IP address host: `"sip:127.0.0.1:5081"`.
    pub uri: Spanned<String>,
    /// `"name=capacity;..."`; absent or empty for a destination that is
    /// only used by `dispatch` (no load semantics).
    #[serde(default = "no_resources")]
    pub resources: Spanned<String>,
    /// 0 never, 1 only while disabled, 2 always.
    #[serde(default)]
    pub probe_mode: u8,
    /// Dispatcher weight (default 1; 0: only when every weighted one failed).
    #[serde(default = "default_weight")]
    pub weight: Spanned<i64>,
    /// Dispatcher priority (`priority` algorithm: highest first; `srv`:
    /// lowest first, as DNS SRV).
    #[serde(default = "default_priority")]
    pub priority: Spanned<i64>,
    /// Free-form attributes shown by the admin API (OpenSIPS `attrs`).
    #[serde(default)]
    pub attrs: String,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
    /// Start disabled.
    #[serde(default)]
    pub disabled: bool,
    /// Failed probes in a row that take it down (default: `probing.threshold`).
    #[serde(default)]
    pub probing_threshold: Option<u32>,
    /// Accepted probes in a row that bring it back (default: `probing.recovery_threshold`).
    #[serde(default)]
    pub probing_recovery_threshold: Option<u32>,
}

/// `[[sources]]`: an OpenSIPS `load_balancer` or `dispatcher` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// `"text:///dir"` (dbtext; relative paths start at the config file's
    /// directory) or `"mysql://user:password@host[:port]/database"`.
    pub db_url: Spanned<String>,
    /// Table name (the file name for dbtext).
    #[serde(default = "default_table")]
    pub table: String,
}

fn default_table() -> String {
    "load_balancer".into()
}

/// `[[rules]]`: the match keys (all given ones must match) and exactly one action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// A name for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Method(s) to match (`"INVITE"` or `["INVITE", "MESSAGE"]`).
    #[serde(default)]
    pub method: Option<Spanned<OneOrMany>>,
    /// Regex on the Request-URI user part.
    #[serde(default)]
    pub ruri_user: Option<Spanned<String>>,
    /// Source network(s): `"10.0.0.0/8"` or a list; `"destinations"` matches
    /// any configured destination's address.
    #[serde(default)]
    pub source: Option<Spanned<OneOrMany>>,
    /// Action: choose a destination by load.
    #[serde(default)]
    pub load_balance: Option<LoadBalanceFile>,
    /// Action: choose a destination of a dispatcher set (no load).
    #[serde(default)]
    pub dispatch: Option<DispatchFile>,
    /// Action: relay to a fixed URI.
    #[serde(default)]
    pub relay: Option<RelayFile>,
    /// Action: answer locally.
    #[serde(default)]
    pub reply: Option<ReplyFile>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `load_balance = { group, resources, flags }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalanceFile {
    /// The destination group.
    pub group: u32,
    /// Resources to reserve, `"pstn"` or `"pstn;vm"`.
    pub resources: Spanned<String>,
    /// `r` relative, `n` negative availability allowed, `s` random among ties.
    #[serde(default = "no_flags")]
    pub flags: Spanned<String>,
}

/// `dispatch = { set, algorithm, flags }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFile {
    /// The dispatcher set: destinations whose `group` is this.
    pub set: Spanned<u32>,
    /// `hash-callid` (default), `hash-from`, `hash-from-user`, `hash-to`,
    /// `hash-ruri`, `round-robin`, `weighted-random`, `priority`, `srv`, or
    /// an OpenSIPS algorithm number.
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    /// `f` failover to the next destination, `u` hash the user part only.
    #[serde(default = "no_flags")]
    pub flags: Spanned<String>,
}

/// `relay = { uri }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// Where to send (IP address host).
    pub uri: Spanned<String>,
    /// Resources to count as load on the destination the call comes from
    /// (OpenSIPS `lb_count_call`), `"pstn"`; only for INVITEs whose source
    /// is a configured destination.
    #[serde(default)]
    pub count: Option<Spanned<String>>,
}

/// `reply = { code, reason }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyFile {
    /// Status code.
    pub code: Spanned<u16>,
    /// Reason phrase (default: the standard one).
    #[serde(default)]
    pub reason: Option<String>,
}

fn yes() -> bool {
    true
}
fn no_codes() -> Spanned<Vec<u16>> {
    Spanned::new(0..0, Vec::new())
}
fn one() -> u32 {
    1
}
fn default_probing_interval() -> Spanned<String> {
    dur("30s")
}
fn default_probing_timeout() -> Spanned<String> {
    dur("5s")
}
fn default_probing_from() -> Spanned<String> {
    Spanned::new(0..0, "sip:siplb@localhost".into())
}
fn default_listen() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "0.0.0.0:5060".into())]
}
fn default_internal_port_base() -> u16 {
    5070
}
fn no_resources() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}
fn default_weight() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}
fn default_priority() -> Spanned<i64> {
    Spanned::new(0..0, 0)
}
fn no_flags() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}
fn default_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "hash-callid".into())
}
fn default_io() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
fn default_log() -> String {
    "info".into()
}
fn default_ownership() -> Spanned<String> {
    Spanned::new(0..0, "socket".into())
}
fn default_socket_buffer() -> usize {
    4 << 20
}
fn default_max_connections() -> usize {
    16_384
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_idle_timeout() -> Spanned<String> {
    dur("120s")
}
fn default_message_timeout() -> Spanned<String> {
    dur("10s")
}
fn default_connect_timeout() -> Spanned<String> {
    dur("5s")
}
fn default_admin() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8888".into())
}
fn dur(s: &str) -> Spanned<String> {
    Spanned::new(0..0, s.into())
}
fn default_t1() -> Spanned<String> {
    dur("500ms")
}
fn default_t2() -> Spanned<String> {
    dur("4s")
}
fn default_fr() -> Spanned<String> {
    dur("5s")
}
fn default_fr_inv() -> Spanned<String> {
    dur("120s")
}
fn default_lifetime() -> Spanned<String> {
    dur("43200s")
}
fn default_failover_codes() -> Spanned<Vec<CodeSpec>> {
    Spanned::new(0..0, vec![CodeSpec::Text("5xx".into()), CodeSpec::Code(408)])
}
fn default_max_attempts() -> u8 {
    3
}
fn default_final_reply() -> Spanned<String> {
    Spanned::new(0..0, "503".into())
}
fn default_no_destination_code() -> u16 {
    503
}
fn default_retry_after() -> u32 {
    30
}
/// Each call leaves two transactions lingering for 64*T1 (32 s): a
/// million per worker sustains about 15,000 calls/s per worker before the
/// table answers 503, at roughly 0.5 KB each (INVITE ~0.3 KB, BYE with its
/// kept response ~0.7 KB).
fn default_max_transactions() -> usize {
    1_000_000
}
fn default_max_dialogs() -> usize {
    200_000
}
fn default_max_message() -> usize {
    65_535
}
fn default_handoff() -> usize {
    8192
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public UDP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Public TCP listen addresses.
    pub listen_tcp: Vec<SocketAddr>,
    /// Public TLS listen addresses.
    pub listen_tls: Vec<SocketAddr>,
    /// Worker threads (resolved: never 0).
    pub workers: usize,
    /// Pin workers to cores.
    pub pin_cores: bool,
    /// IP of the backend-facing sockets.
    pub internal_ip: IpAddr,
    /// Port of worker 0's backend-facing socket.
    pub internal_port_base: u16,
    /// Host and port written into Record-Route.
    pub advertised: SocketAddr,
    /// I/O backend.
    pub io: IoMode,
    /// Log filter.
    pub log_level: String,
    /// Socket buffer size.
    pub socket_buffer: usize,
    /// Spread new calls over workers by Call-ID hash instead of by socket.
    pub spread_by_call_id: bool,
    /// Admin API address, if enabled.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API requires, if any.
    pub admin_token: Option<String>,
    /// Health probing.
    pub probing: Probing,
    /// Timers.
    pub timers: Timers,
    /// Failover policy.
    pub failover: Failover,
    /// Limits.
    pub limits: Limits,
    /// Stream connections.
    pub tcp: Tcp,
    /// TLS files, when configured.
    pub tls: Option<Tls>,
    /// Destinations, in table order.
    pub destinations: Vec<Destination>,
    /// Resource names, indexed by resource id (bit in a [`ResourceSet`]).
    pub resource_names: Vec<String>,
    /// Routing rules, first match wins.
    pub rules: Vec<Rule>,
    /// Destination rows from `[[sources]]` that were skipped, with where and why.
    pub skipped: Vec<String>,
    /// Bind listen addresses with IP_FREEBIND.
    pub freebind: bool,
    /// Replication and shared load, when `[ha] redis` is set.
    pub ha: Option<crate::ha::HaConfig>,
}

/// Which I/O path the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when available, else epoll.
    Auto,
    /// epoll with recvmmsg/sendmmsg.
    Epoll,
    /// io_uring (falls back to epoll with a warning when unavailable).
    IoUring,
}

/// Timer values.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// T1.
    pub t1: Duration,
    /// T2.
    pub t2: Duration,
    /// No reply at all within this: 408.
    pub fr_timeout: Duration,
    /// No final reply to INVITE after a provisional within this: 408.
    pub fr_inv_timeout: Duration,
    /// Dialog lifetime.
    pub dialog_lifetime: Duration,
    /// How long a finished transaction lingers (Timer J / Timer L).
    pub linger: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            fr_timeout: Duration::from_secs(5),
            fr_inv_timeout: Duration::from_secs(120),
            dialog_lifetime: Duration::from_secs(43200),
            linger: Duration::from_secs(32),
        }
    }
}

/// Failover policy.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Bit per status code 0..=699: fail over on it.
    codes: Vec<bool>,
    /// Disable the failed destination.
    pub disable_on_failure: bool,
    /// Most destinations per call.
    pub max_attempts: u8,
    /// Relay the last reply instead of a 503 after the last destination.
    pub relay_last_reply: bool,
    /// Code when no destination is eligible.
    pub no_destination_code: u16,
    /// Retry-After in 503s.
    pub retry_after: u32,
}

impl Failover {
    /// True when `code` triggers failover.
    pub fn is_failover_code(&self, code: u16) -> bool {
        self.codes.get(usize::from(code)).copied().unwrap_or(false)
    }
}

impl Default for Failover {
    fn default() -> Self {
        let mut codes = vec![false; 700];
        codes[500..600].iter_mut().for_each(|c| *c = true);
        codes[408] = true;
        Failover {
            codes,
            disable_on_failure: false,
            max_attempts: 3,
            relay_last_reply: false,
            no_destination_code: 503,
            retry_after: 30,
        }
    }
}

/// Health probing settings.
#[derive(Debug, Clone)]
pub struct Probing {
    /// Time between two probes of a destination.
    pub interval: Duration,
    /// A probe without a final reply after this failed.
    pub timeout: Duration,
    /// From URI.
    pub from: String,
    /// Codes accepted besides 200 and the codes below 400.
    pub reply_codes: Vec<u16>,
    /// Default failed probes in a row to go down.
    pub threshold: u32,
    /// Default accepted probes in a row to come back up.
    pub recovery_threshold: u32,
    /// The prober's local address (port 0: any).
    pub address: SocketAddr,
}

impl Probing {
    /// True when a final reply `code` to a probe counts as success.
    pub fn accepts(&self, code: u16) -> bool {
        code < 400 || self.reply_codes.contains(&code)
    }

    /// (down, up) thresholds for `d`: its own, else the global ones.
    pub fn thresholds(&self, d: &Destination) -> (u32, u32) {
        (
            d.probing_threshold.unwrap_or(self.threshold),
            d.probing_recovery_threshold.unwrap_or(self.recovery_threshold),
        )
    }
}

/// Limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transactions per worker.
    pub max_transactions: usize,
    /// Dialogs per worker.
    pub max_dialogs: usize,
    /// Largest datagram.
    pub max_message_size: usize,
    /// Hand-off queue depth.
    pub handoff_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_transactions: 1_000_000,
            max_dialogs: 200_000,
            max_message_size: 65_535,
            handoff_queue: 8192,
        }
    }
}

/// Stream connection limits and timers.
#[derive(Debug, Clone, Copy)]
pub struct Tcp {
    /// Most open connections in the process.
    pub max_connections: usize,
    /// Most inbound connections from one IP.
    pub max_connections_per_ip: usize,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Time to send one complete message.
    pub message_timeout: Duration,
    /// Time to connect to a backend.
    pub connect_timeout: Duration,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            max_connections: 16_384,
            max_connections_per_ip: 256,
            idle_timeout: Duration::from_secs(120),
            message_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS files (PEM), loaded by the runtime at start.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain.
    pub certificate: std::path::PathBuf,
    /// Private key.
    pub private_key: std::path::PathBuf,
    /// CA for client certificates (asks clients for one).
    pub client_ca: Option<std::path::PathBuf>,
    /// Refuse clients without a valid certificate.
    pub require_client_certificate: bool,
    /// CA for backends' certificates (unverified without).
    pub backend_ca: Option<std::path::PathBuf>,
}

/// Largest dispatcher weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// A backend. Its `group` is also its dispatcher set.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Unique id.
    pub id: u32,
    /// Group.
    pub group: u32,
    /// URI as configured.
    pub uri: String,
    /// Where to send.
    pub addr: SocketAddr,
    /// (resource id, capacity).
    pub resources: Vec<(usize, u32)>,
    /// Probe mode 0/1/2.
    pub probe_mode: u8,
    /// Dispatcher weight (0 ..= [`MAX_WEIGHT`]).
    pub weight: u32,
    /// Dispatcher priority.
    pub priority: i32,
    /// Attributes.
    pub attrs: String,
    /// Description.
    pub description: String,
    /// Starts disabled.
    pub disabled: bool,
    /// Failed probes in a row to go down (`None`: `probing.threshold`).
    pub probing_threshold: Option<u32>,
    /// Accepted probes in a row to come back (`None`: `probing.recovery_threshold`).
    pub probing_recovery_threshold: Option<u32>,
}

impl Destination {
    /// The transport its URI names (`sips:`, `;transport=`), UDP by default.
    pub fn transport(&self) -> crate::core::Transport {
        crate::core::Transport::of_uri_bytes(self.uri.as_bytes())
    }
}

/// A routing rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs.
    pub name: String,
    /// Methods matched (empty: any).
    pub methods: Vec<String>,
    /// R-URI user regex.
    pub ruri_user: Option<regex::bytes::Regex>,
    /// Source networks (empty: any).
    pub sources: Vec<Network>,
    /// Also match when the source is a destination.
    pub from_destinations: bool,
    /// What to do.
    pub action: Action,
}

/// A rule's action.
#[derive(Debug, Clone)]
pub enum Action {
    /// Pick a destination by load.
    LoadBalance {
        /// Group.
        group: u32,
        /// Resources to reserve.
        resources: ResourceSet,
        /// Flags.
        flags: Flags,
    },
    /// Pick a destination of a dispatcher set (OpenSIPS `ds_select_dst`).
    Dispatch {
        /// The set (destination group).
        set: u32,
        /// How the set is ordered.
        algorithm: Algorithm,
        /// Failover, user-only hashing.
        flags: DispatchFlags,
    },
    /// Relay to a fixed address.
    Relay {
        /// Where.
        addr: SocketAddr,
        /// Over which transport (from the URI).
        transport: crate::core::Transport,
        /// Resources counted on the source destination for the call's
        /// lifetime (empty: none).
        count: ResourceSet,
    },
    /// Answer locally.
    Reply {
        /// Code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// An IP network (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// Address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Network {
    /// Parses `"a.b.c.d/n"` or a bare address.
    pub fn parse(s: &str) -> Option<Network> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Network { addr, prefix })
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl Config {
    /// Reads and validates a file (and reads the `[[sources]]` it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_seeded(path, &[])
    }

    /// [`Config::load`] for a reload: resource ids start from the running
    /// configuration's `resource_names` (so that the load held by calls in
    /// progress keeps its meaning), new names are appended.
    pub fn load_seeded(path: &Path, resource_names: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        Config::parse_at(&text, resource_names, base).map_err(|e| match e {
            ConfigError::At { line, message, .. } => ConfigError::At {
                file: Some(path.display().to_string()),
                line,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_seeded(text, &[])
    }

    /// [`Config::parse`] with resource ids seeded (see [`Config::load_seeded`]).
    pub fn parse_seeded(text: &str, resource_names: &[String]) -> Result<Config, ConfigError> {
        Config::parse_at(text, resource_names, None)
    }

    /// Relative dbtext directories in `[[sources]]` start at `base`.
    fn parse_at(text: &str, resource_names: &[String], base: Option<&Path>) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            ConfigError::At {
                file: None,
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        Validator {
            text,
            seed: resource_names,
            base,
        }
        .build(file)
    }
}

/// 1-based line number of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"12h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// Parses a `sip:` URI whose host is an IP address into a socket address.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let u = siplb_parser::Uri::parse(uri.as_bytes()).ok()?;
    let host = std::str::from_utf8(u.host).ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    let default = crate::core::Transport::of_uri(&u).unwrap_or_default().default_port();
    Some(SocketAddr::new(ip, u.port.unwrap_or(default)))
}

/// Standard reason phrase for a code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        603 => "Decline",
        _ => match code / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

struct Validator<'t> {
    text: &'t str,
    /// Resource names whose ids are fixed already (a reload's running ones).
    seed: &'t [String],
    /// Where relative source paths start.
    base: Option<&'t Path>,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            file: None,
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn duration(&self, v: &Spanned<String>, what: &str) -> Result<Duration, ConfigError> {
        parse_duration(v.get_ref()).filter(|d| !d.is_zero()).ok_or_else(|| {
            self.err(
                v.span(),
                format!(
                    "{what}: bad duration {:?} (use e.g. \"500ms\", \"30s\", \"2m\", \"12h\")",
                    v.get_ref()
                ),
            )
        })
    }

    /// Validates one destination; `taken` are the ones accepted so far,
    /// `resource_names` gains the new resource names it offers.
    fn destination(
        &self,
        d: &DestinationFile,
        destinations: &[Destination],
        resource_names: &mut Vec<String>,
    ) -> Result<Destination, ConfigError> {
        let id = *d.id.get_ref();
        if destinations.iter().any(|x: &Destination| x.id == id) {
            return Err(self.err(d.id.span(), format!("destination id {id} is used twice")));
        }
        let addr = uri_addr(d.uri.get_ref()).ok_or_else(|| {
            self.err(
                d.uri.span(),
                format!(
                    "destination {id}: uri {:?} is not a sip: URI with an IP address host",
                    d.uri.get_ref()
                ),
            )
        })?;
        let mut resources = Vec::new();
        for part in d
            .resources
            .get_ref()
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = || {
                self.err(
                    d.resources.span(),
                    format!("destination {id}: bad resource {part:?} (expected name=capacity)"),
                )
            };
            let (name, cap) = part.split_once('=').ok_or_else(bad)?;
            let (name, cap) = (name.trim(), cap.trim());
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(bad());
            }
            let cap: u32 = cap.parse().map_err(|_| bad())?;
            let rid = match resource_names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    if resource_names.len() == MAX_RESOURCES {
                        return Err(self.err(
                            d.resources.span(),
                            format!("at most {MAX_RESOURCES} distinct resource names"),
                        ));
                    }
                    resource_names.push(name.to_string());
                    resource_names.len() - 1
                }
            };
            if resources.iter().any(|&(r, _)| r == rid) {
                return Err(self.err(d.resources.span(), format!("destination {id}: resource {name} twice")));
            }
            resources.push((rid, cap));
        }
        if d.probe_mode > 2 {
            return Err(self.err(d.id.span(), format!("destination {id}: probe_mode must be 0, 1 or 2")));
        }
        let weight = u32::try_from(*d.weight.get_ref())
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .ok_or_else(|| {
                self.err(
                    d.weight.span(),
                    format!("destination {id}: weight must be in 0..={MAX_WEIGHT}"),
                )
            })?;
        let priority = i32::try_from(*d.priority.get_ref()).map_err(|_| {
            self.err(
                d.priority.span(),
                format!("destination {id}: priority must fit in 32 bits"),
            )
        })?;
        Ok(Destination {
            id,
            group: d.group,
            uri: d.uri.get_ref().clone(),
            addr,
            resources,
            probe_mode: d.probe_mode,
            weight,
            priority,
            attrs: d.attrs.clone(),
            description: d.description.clone(),
            disabled: d.disabled,
            probing_threshold: d.probing_threshold.map(|t| t.max(1)),
            probing_recovery_threshold: d.probing_recovery_threshold.map(|t| t.max(1)),
        })
    }

    fn build(&self, file: File) -> Result<Config, ConfigError> {
        let s = &file.server;
        let (mut listen, mut listen_tcp, mut listen_tls) = (Vec::new(), Vec::new(), Vec::new());
        let mut first = None;
        for l in &s.listen {
            let text = l.get_ref().as_str();
            let (list, rest) = match text.split_once(':') {
                Some(("udp", rest)) => (&mut listen, rest),
                Some(("tcp", rest)) => (&mut listen_tcp, rest),
                Some(("tls", rest)) => (&mut listen_tls, rest),
                _ => (&mut listen, text),
            };
            let a: SocketAddr = rest.parse().map_err(|_| {
                self.err(
                    l.span(),
                    format!("listen: {text:?} is not an IP:port address (optionally prefixed udp:, tcp: or tls:)"),
                )
            })?;
            if list.contains(&a) {
                return Err(self.err(l.span(), format!("listen: {text:?} is listed twice")));
            }
            list.push(a);
            first.get_or_insert(a);
        }
        let first =
            first.ok_or_else(|| ConfigError::Invalid("server.listen: at least one address is needed".into()))?;
        let internal_ip = match &s.internal_address {
            Some(a) => a.get_ref().parse().map_err(|_| {
                self.err(
                    a.span(),
                    format!("internal_address: {:?} is not an IP address", a.get_ref()),
                )
            })?,
            None => first.ip(),
        };
        let advertised = match &s.advertised_address {
            Some(a) => {
                let t = a.get_ref();
                t.parse::<SocketAddr>()
                    .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, first.port())))
                    .map_err(|_| {
                        self.err(
                            a.span(),
                            format!("advertised_address: {t:?} is not an IP or IP:port address"),
                        )
                    })?
            }
            None => first,
        };
        if advertised.ip().is_unspecified() {
            return Err(ConfigError::Invalid(
                "server.advertised_address is needed when listening on 0.0.0.0/:: (Record-Route must name a reachable address)"
                    .into(),
            ));
        }
        let io = match s.io.get_ref().as_str() {
            "auto" => IoMode::Auto,
            "epoll" => IoMode::Epoll,
            "io_uring" => IoMode::IoUring,
            other => {
                return Err(self.err(
                    s.io.span(),
                    format!("io: {other:?} is not one of auto, epoll, io_uring"),
                ))
            }
        };
        let spread_by_call_id = match s.ownership.get_ref().as_str() {
            "socket" => false,
            "call-id" => true,
            other => {
                return Err(self.err(
                    s.ownership.span(),
                    format!("ownership: {other:?} is not \"socket\" or \"call-id\""),
                ))
            }
        };
        let workers = if s.workers == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            s.workers
        };
        if workers > 256 {
            return Err(ConfigError::Invalid("server.workers: at most 256".into()));
        }
        if usize::from(s.internal_port_base) + workers > 65536 || s.internal_port_base == 0 {
            return Err(ConfigError::Invalid(
                "server.internal_port_base: ports base..base+workers must fit".into(),
            ));
        }
        let admin: Option<SocketAddr> = if file.admin.enabled {
            let l = &file.admin.listen;
            Some(
                l.get_ref()
                    .parse()
                    .map_err(|_| self.err(l.span(), format!("admin.listen: {:?} is not IP:port", l.get_ref())))?,
            )
        } else {
            None
        };
        let admin_token = match &file.admin.token {
            Some(t) if t.get_ref().trim().is_empty() || t.get_ref().chars().any(|c| c.is_whitespace()) => {
                return Err(self.err(t.span(), "admin.token must be non-empty, without white space"))
            }
            Some(t) => Some(t.get_ref().clone()),
            None => None,
        };
        if let Some(a) = admin.filter(|a| !a.ip().is_loopback()) {
            if admin_token.is_none() {
                return Err(self.err(
                    file.admin.listen.span(),
                    format!(
                        "admin.listen: {a} is not a loopback address, so admin.token is required \
                         (requests must carry Authorization: Bearer TOKEN)"
                    ),
                ));
            }
        }

        let p = &file.probing;
        let probing = Probing {
            interval: self.duration(&p.interval, "probing.interval")?,
            timeout: self.duration(&p.timeout, "probing.timeout")?,
            from: {
                let f = p.from.get_ref();
                if siplb_parser::Uri::parse(f.as_bytes()).is_err() || f.contains(['\r', '\n', '<', '>']) {
                    return Err(self.err(p.from.span(), format!("probing.from: {f:?} is not a SIP URI")));
                }
                f.clone()
            },
            reply_codes: {
                let codes = p.reply_codes.get_ref();
                if codes.iter().any(|c| !(200..700).contains(c)) {
                    return Err(self.err(p.reply_codes.span(), "probing.reply_codes: codes are 200..=699"));
                }
                codes.clone()
            },
            threshold: p.threshold.max(1),
            recovery_threshold: p.recovery_threshold.max(1),
            address: match &p.address {
                Some(a) => {
                    let t = a.get_ref();
                    t.parse::<SocketAddr>()
                        .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                        .map_err(|_| self.err(a.span(), format!("probing.address: {t:?} is not IP[:port]")))?
                }
                None => SocketAddr::new(internal_ip, 0),
            },
        };

        let t = &file.timers;
        let t1 = self.duration(&t.t1, "t1")?;
        let timers = Timers {
            t1,
            t2: self.duration(&t.t2, "t2")?,
            fr_timeout: self.duration(&t.fr_timeout, "fr_timeout")?,
            fr_inv_timeout: self.duration(&t.fr_inv_timeout, "fr_inv_timeout")?,
            dialog_lifetime: self.duration(&t.dialog_lifetime, "dialog_lifetime")?,
            linger: match &t.linger {
                Some(l) => self.duration(l, "linger")?,
                None => 64 * t1,
            },
        };
        if timers.t2 < timers.t1 {
            return Err(self.err(t.t2.span(), "t2 must not be below t1"));
        }

        let f = &file.failover;
        let mut codes = vec![false; 700];
        for c in f.codes.get_ref() {
            let bad = || {
                self.err(
                    f.codes.span(),
                    format!("failover.codes: bad code {c:?} (use 503 or \"5xx\")"),
                )
            };
            match c {
                CodeSpec::Code(n) if (300..700).contains(n) => codes[usize::from(*n)] = true,
                CodeSpec::Text(t) if t.len() == 3 && t.ends_with("xx") => {
                    let class = t[..1]
                        .parse::<usize>()
                        .ok()
                        .filter(|c| (3..=6).contains(c))
                        .ok_or_else(bad)?;
                    codes[class * 100..class * 100 + 100].iter_mut().for_each(|c| *c = true);
                }
                CodeSpec::Text(t) => match t.parse::<usize>() {
                    Ok(n) if (300..700).contains(&n) => codes[n] = true,
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            }
        }
        let relay_last_reply = match f.final_reply.get_ref().as_str() {
            "503" => false,
            "last" => true,
            other => {
                return Err(self.err(
                    f.final_reply.span(),
                    format!("final_reply: {other:?} is not \"503\" or \"last\""),
                ))
            }
        };
        if f.max_attempts == 0 {
            return Err(ConfigError::Invalid("failover.max_attempts must be at least 1".into()));
        }
        if !(300..700).contains(&f.no_destination_code) {
            return Err(ConfigError::Invalid(
                "failover.no_destination_code must be in 300..=699".into(),
            ));
        }
        let failover = Failover {
            codes,
            disable_on_failure: f.disable_on_failure,
            max_attempts: f.max_attempts.min(crate::lb::MAX_TRIES as u8),
            relay_last_reply,
            no_destination_code: f.no_destination_code,
            retry_after: f.retry_after,
        };
        let l = &file.limits;
        let limits = Limits {
            max_transactions: l.max_transactions.max(16),
            max_dialogs: l.max_dialogs.max(16),
            max_message_size: l.max_message_size.clamp(1024, 65_535),
            handoff_queue: l.handoff_queue.max(16),
        };

        let t = &file.tcp;
        let tcp = Tcp {
            max_connections: t.max_connections.max(1),
            max_connections_per_ip: t.max_connections_per_ip.max(1),
            idle_timeout: self.duration(&t.idle_timeout, "tcp.idle_timeout")?,
            message_timeout: self.duration(&t.message_timeout, "tcp.message_timeout")?,
            connect_timeout: self.duration(&t.connect_timeout, "tcp.connect_timeout")?,
        };
        let tls = file.tls.as_ref().map(|t| Tls {
            certificate: t.certificate.clone().into(),
            private_key: t.private_key.clone().into(),
            client_ca: t.client_ca.clone().map(Into::into),
            require_client_certificate: t.require_client_certificate,
            backend_ca: t.backend_ca.clone().map(Into::into),
        });
        if let Some(t) = &tls {
            if t.require_client_certificate && t.client_ca.is_none() {
                return Err(ConfigError::Invalid(
                    "tls.require_client_certificate needs tls.client_ca".into(),
                ));
            }
        }
        if !listen_tls.is_empty() && tls.is_none() {
            return Err(ConfigError::Invalid(
                "a tls: listen address needs a [tls] section (certificate, private_key)".into(),
            ));
        }

        let mut resource_names: Vec<String> = self.seed.to_vec();
        let mut destinations = Vec::new();
        for d in &file.destinations {
            let dest = self.destination(d, &destinations, &mut resource_names)?;
            destinations.push(dest);
        }
        // Destinations from [[sources]]: a bad row is skipped and reported.
        let mut skipped = Vec::new();
        for src in &file.sources {
            let rows = crate::sources::read(src.db_url.get_ref(), &src.table, self.base).map_err(|e| {
                self.err(
                    src.db_url.span(),
                    format!("source {}: {e}", crate::sources::hide_password(src.db_url.get_ref())),
                )
            })?;
            skipped.extend(rows.skipped);
            for row in rows.rows {
                let mut names = resource_names.clone();
                match self.destination(&row.to_file(), &destinations, &mut names) {
                    Ok(dest) => {
                        destinations.push(dest);
                        resource_names = names;
                    }
                    Err(ConfigError::At { message, .. }) | Err(ConfigError::Invalid(message)) => {
                        skipped.push(format!("{}: {message}", row.origin))
                    }
                    Err(e) => skipped.push(format!("{}: {e}", row.origin)),
                }
            }
        }

        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
            let methods = match &r.method {
                Some(m) => {
                    let items = m.get_ref().items();
                    if items
                        .iter()
                        .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric()))
                    {
                        return Err(self.err(m.span(), format!("{name}: bad method name")));
                    }
                    items
                }
                None => Vec::new(),
            };
            let ruri_user = match &r.ruri_user {
                Some(re) => Some(
                    regex::bytes::Regex::new(re.get_ref())
                        .map_err(|e| self.err(re.span(), format!("{name}: bad ruri_user regex: {e}")))?,
                ),
                None => None,
            };
            let mut sources = Vec::new();
            let mut from_destinations = false;
            if let Some(src) = &r.source {
                for s in src.get_ref().items() {
                    if s == "destinations" {
                        from_destinations = true;
                        continue;
                    }
                    sources.push(Network::parse(&s).ok_or_else(|| {
                        self.err(
                            src.span(),
                            format!("{name}: source {s:?} is not a network like 10.0.0.0/8"),
                        )
                    })?);
                }
            }
            let n_actions = usize::from(r.load_balance.is_some())
                + usize::from(r.dispatch.is_some())
                + usize::from(r.relay.is_some())
                + usize::from(r.reply.is_some());
            let rule_line = r
                .method
                .as_ref()
                .map(|m| m.span())
                .or_else(|| r.ruri_user.as_ref().map(|m| m.span()))
                .or_else(|| r.dispatch.as_ref().map(|d| d.set.span()));
            if n_actions != 1 {
                let msg = format!("{name}: exactly one of load_balance, dispatch, relay, reply is needed");
                return Err(match rule_line {
                    Some(s) => self.err(s, msg),
                    None => ConfigError::Invalid(msg),
                });
            }
            let action = if let Some(lb) = &r.load_balance {
                if !destinations.iter().any(|d: &Destination| d.group == lb.group) {
                    return Err(self.err(
                        lb.resources.span(),
                        format!("{name}: load_balance group {} has no destination", lb.group),
                    ));
                }
                let mut set = ResourceSet::EMPTY;
                for res in lb
                    .resources
                    .get_ref()
                    .split(';')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    let rid = resource_names
                        .iter()
                        .position(|n| n == res)
                        .ok_or_else(|| self.err(lb.resources.span(), format!("{name}: unknown resource {res:?}")))?;
                    set = set.with(rid);
                }
                if set.is_empty() {
                    return Err(self.err(lb.resources.span(), format!("{name}: load_balance needs a resource")));
                }
                let flags = Flags::parse(lb.flags.get_ref()).ok_or_else(|| {
                    self.err(
                        lb.flags.span(),
                        format!("{name}: flags {:?}: only r, n, s", lb.flags.get_ref()),
                    )
                })?;
                Action::LoadBalance {
                    group: lb.group,
                    resources: set,
                    flags,
                }
            } else if let Some(ds) = &r.dispatch {
                let set = *ds.set.get_ref();
                if !destinations.iter().any(|d: &Destination| d.group == set) {
                    return Err(self.err(ds.set.span(), format!("{name}: dispatch set {set} has no destination")));
                }
                let algorithm = Algorithm::parse(ds.algorithm.get_ref()).ok_or_else(|| {
                    self.err(
                        ds.algorithm.span(),
                        format!(
                            "{name}: algorithm {:?} is not one of hash-callid, hash-from, hash-from-user, hash-to, \
                             hash-ruri, round-robin, weighted-random, priority, srv (or 0-4, 6, 8)",
                            ds.algorithm.get_ref()
                        ),
                    )
                })?;
                let flags = DispatchFlags::parse(ds.flags.get_ref()).ok_or_else(|| {
                    self.err(
                        ds.flags.span(),
                        format!("{name}: dispatch flags {:?}: only f, u", ds.flags.get_ref()),
                    )
                })?;
                Action::Dispatch { set, algorithm, flags }
            } else if let Some(relay) = &r.relay {
                let addr = uri_addr(relay.uri.get_ref()).ok_or_else(|| {
                    self.err(
                        relay.uri.span(),
                        format!("{name}: relay uri must be a sip: URI with an IP address host"),
                    )
                })?;
                let mut count = ResourceSet::EMPTY;
                if let Some(c) = &relay.count {
                    for res in c.get_ref().split(';').map(str::trim).filter(|p| !p.is_empty()) {
                        let rid = resource_names
                            .iter()
                            .position(|n| n == res)
                            .ok_or_else(|| self.err(c.span(), format!("{name}: unknown resource {res:?}")))?;
                        count = count.with(rid);
                    }
                }
                let transport = crate::core::Transport::of_uri_bytes(relay.uri.get_ref().as_bytes());
                Action::Relay { addr, transport, count }
            } else if let Some(reply) = &r.reply {
                let code = *reply.code.get_ref();
                if !(200..700).contains(&code) {
                    return Err(self.err(reply.code.span(), format!("{name}: reply code must be in 200..=699")));
                }
                Action::Reply {
                    code,
                    reason: reply.reason.clone().unwrap_or_else(|| reason_phrase(code).to_string()),
                }
            } else {
                unreachable!("exactly one action checked above")
            };
            rules.push(Rule {
                name,
                methods,
                ruri_user,
                sources,
                from_destinations,
                action,
            });
        }

        Ok(Config {
            listen,
            listen_tcp,
            listen_tls,
            workers,
            pin_cores: s.pin_cores,
            internal_ip,
            internal_port_base: s.internal_port_base,
            advertised,
            io,
            log_level: s.log_level.clone(),
            socket_buffer: s.socket_buffer,
            spread_by_call_id,
            admin,
            admin_token,
            probing,
            timers,
            failover,
            limits,
            tcp,
            tls,
            destinations,
            resource_names,
            rules,
            skipped,
            freebind: s.freebind,
            ha: crate::ha::HaConfig::build(&file.ha, internal_ip, s.internal_port_base)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/siplb.toml");

    #[test]
    fn example_loads() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(c.admin, Some("127.0.0.1:8888".parse().unwrap()));
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.resource_names, vec!["pstn".to_string(), "vm".to_string()]);
        assert_eq!(c.destinations[1].addr, "127.0.0.1:5082".parse().unwrap());
        assert_eq!(c.rules.len(), 5);
        assert!(c.failover.is_failover_code(503));
        assert!(c.failover.is_failover_code(408));
        assert!(!c.failover.is_failover_code(486));
    }

    #[test]
    fn defaults() {
        let c = Config::parse("[server]\nlisten = [\"127.0.0.1:5999\"]\n").unwrap();
        assert_eq!(c.timers.t1, Duration::from_millis(500));
        assert_eq!(c.timers.dialog_lifetime, Duration::from_secs(43200));
        assert_eq!(c.timers.linger, Duration::from_secs(32), "64*T1");
        assert_eq!(c.limits.max_transactions, 1_000_000);
        assert_eq!(c.advertised, "127.0.0.1:5999".parse().unwrap());
        assert!(c.workers >= 1);
        let c = Config::parse("[server]\nlisten = [\"127.0.0.1:5999\"]\n[timers]\nt1 = \"250ms\"\n").unwrap();
        assert_eq!(c.timers.linger, Duration::from_secs(16), "follows T1");
        let c = Config::parse("[server]\nlisten = [\"127.0.0.1:5999\"]\n[timers]\nlinger = \"5s\"\n").unwrap();
        assert_eq!(c.timers.linger, Duration::from_secs(5));
    }

    fn line_err(text: &str) -> (usize, String) {
        match Config::parse(text) {
            Err(ConfigError::At { line, message, .. }) => (line, message),
            other => panic!("expected a located error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let (line, msg) = line_err("[server]\nlisten = [\"127.0.0.1:5060\"]\nworkrs = 2\n");
        assert_eq!(line, 3);
        assert!(msg.contains("workrs"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let base = "[server]\nlisten = [\"127.0.0.1:5060\"]\n";
        let (line, msg) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:5081\"\nresources = \"pstn=x\"\n"
        ));
        assert_eq!(line, 7, "{msg}");
        let (line, _) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:media.example.com\"\nresources = \"pstn=1\"\n"
        ));
        assert_eq!(line, 6);
        let (line, msg) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1\"\nresources = \"pstn=1\"\n\
             [[rules]]\nmethod = \"INVITE\"\nruri_user = \"^(\"\nload_balance = {{ group = 1, resources = \"pstn\" }}\n"
        ));
        assert_eq!(line, 10, "{msg}");
        let (line, msg) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1\"\nresources = \"pstn=1\"\n\
             [[rules]]\nmethod = \"INVITE\"\nload_balance = {{ group = 1, resources = \"gold\" }}\n"
        ));
        assert_eq!(line, 10, "{msg}");
        assert!(msg.contains("gold"));
        let (line, _) = line_err(&format!("{base}[timers]\nt1 = \"soon\"\n"));
        assert_eq!(line, 4);
        let (line, _) = line_err(&format!("{base}[failover]\ncodes = [\"9xx\"]\n"));
        assert_eq!(line, 4);
        let (line, _) = line_err("[server]\nlisten = [\"localhost:5060\"]\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn dispatcher_fields_of_a_destination() {
        let base = "[server]\nlisten = [\"127.0.0.1:5060\"]\n";
        let c = Config::parse(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 2\nuri = \"sip:127.0.0.1:5081\"\n\
             weight = 5\npriority = -3\nattrs = \"duid=a;maxload=10\"\n\
             [[destinations]]\nid = 2\ngroup = 2\nuri = \"sip:127.0.0.1:5082\"\n"
        ))
        .unwrap();
        let (a, b) = (&c.destinations[0], &c.destinations[1]);
        assert_eq!((a.weight, a.priority, a.attrs.as_str()), (5, -3, "duid=a;maxload=10"));
        assert!(
            a.resources.is_empty(),
            "resources are optional for dispatcher-only destinations"
        );
        assert_eq!((b.weight, b.priority), (1, 0), "defaults");
        let (line, msg) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 2\nuri = \"sip:127.0.0.1:5081\"\nweight = -1\n"
        ));
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("weight"), "{msg}");
        let (line, msg) = line_err(&format!(
            "{base}[[destinations]]\nid = 1\ngroup = 2\nuri = \"sip:127.0.0.1:5081\"\npriority = 9999999999\n"
        ));
        assert_eq!(line, 7, "{msg}");
    }

    #[test]
    fn destinations_from_a_dbtext_source_bad_rows_skipped() {
        let dir = std::env::temp_dir().join(format!("siplb-config-dbtext-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(
            dir.join("db/load_balancer"),
            "id(int,auto) group_id(int) dst_uri(string) resources(string) probe_mode(int) description(string)\n\
             2:1:sip\\:127.0.0.1\\:5082:pstn=10:0:ok\n\
             3:1:sip\\:gw.example.com:pstn=10:0:not an IP\n\
             1:1:sip\\:127.0.0.1\\:5083:pstn=10:0:id taken by the TOML one\n\
             4:1:sip\\:127.0.0.1\\:5084:pstn=x:0:bad capacity\n\
             5:1:sip\\:127.0.0.1\\:5085:vm=3:0:ok\n",
        )
        .unwrap();
        let path = dir.join("siplb.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = [\"127.0.0.1:5060\"]\n\
             [[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:5081\"\nresources = \"pstn=1\"\n\
             [[sources]]\ndb_url = \"text://db\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let ids: Vec<u32> = c.destinations.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![1, 2, 5]);
        assert_eq!(c.resource_names, vec!["pstn".to_string(), "vm".to_string()]);
        assert_eq!(c.skipped.len(), 3, "{:?}", c.skipped);
        assert!(
            c.skipped[0].contains("load_balancer: line 3: destination 3: uri"),
            "{:?}",
            c.skipped
        );
        assert!(
            c.skipped[1].contains("line 4: destination id 1 is used twice"),
            "{:?}",
            c.skipped
        );
        assert!(
            c.skipped[2].contains("line 5: destination 4: bad resource"),
            "{:?}",
            c.skipped
        );
        // A source that cannot be read rejects the file, naming its line.
        std::fs::write(
            &path,
            "[server]\nlisten = [\"127.0.0.1:5060\"]\n[[sources]]\ndb_url = \"text://nowhere\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("siplb.toml: line 4: source text://nowhere: cannot read"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_off_loopback_needs_a_token_and_probing_parses() {
        let base = "[server]\nlisten = [\"127.0.0.1:5060\"]\n";
        let (line, msg) = line_err(&format!("{base}[admin]\nlisten = \"0.0.0.0:8888\"\n"));
        assert_eq!(line, 4);
        assert!(msg.contains("admin.token is required"), "{msg}");
        let c = Config::parse(&format!(
            "{base}[admin]\nlisten = \"0.0.0.0:8888\"\ntoken = \"s3cret\"\n"
        ))
        .unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        let (line, _) = line_err(&format!("{base}[admin]\ntoken = \"two words\"\n"));
        assert_eq!(line, 4);
        let c = Config::parse(&format!(
            "{base}[probing]\ninterval = \"2s\"\nreply_codes = [404]\nthreshold = 3\n\
             [[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:5081\"\nresources = \"pstn=1\"\n\
             probing_recovery_threshold = 2\n"
        ))
        .unwrap();
        assert_eq!(c.probing.interval, Duration::from_secs(2));
        assert!(c.probing.accepts(404) && c.probing.accepts(200) && c.probing.accepts(302));
        assert!(!c.probing.accepts(503) && !c.probing.accepts(408));
        assert_eq!(c.probing.thresholds(&c.destinations[0]), (3, 2));
        assert_eq!(c.probing.address, "127.0.0.1:0".parse().unwrap());
        let (line, _) = line_err(&format!("{base}[probing]\nfrom = \"not a uri\"\n"));
        assert_eq!(line, 4);
    }

    #[test]
    fn dispatch_rules() {
        let base = "[server]\nlisten = [\"127.0.0.1:5060\"]\n[[destinations]]\nid = 1\ngroup = 2\n\
                    uri = \"sip:127.0.0.1:5081\"\n";
        let c = Config::parse(&format!(
            "{base}[[rules]]\nmethod = \"REGISTER\"\ndispatch = {{ set = 2, algorithm = \"round-robin\", flags = \"fu\" }}\n\
             [[rules]]\ndispatch = {{ set = 2 }}\n"
        ))
        .unwrap();
        match &c.rules[0].action {
            Action::Dispatch { set, algorithm, flags } => {
                assert_eq!((*set, *algorithm), (2, Algorithm::RoundRobin));
                assert!(flags.failover && flags.user_only);
            }
            other => panic!("{other:?}"),
        }
        match &c.rules[1].action {
            Action::Dispatch { algorithm, flags, .. } => {
                assert_eq!(*algorithm, Algorithm::Hash(crate::dispatch::HashKey::CallId), "default");
                assert_eq!(*flags, DispatchFlags::default());
            }
            other => panic!("{other:?}"),
        }
        let (line, msg) = line_err(&format!(
            "{base}[[rules]]\nmethod = \"REGISTER\"\ndispatch = {{ set = 3 }}\n"
        ));
        assert_eq!(line, 9, "{msg}");
        assert!(msg.contains("set 3"), "{msg}");
        let (line, msg) = line_err(&format!(
            "{base}[[rules]]\nmethod = \"REGISTER\"\ndispatch = {{ set = 2, algorithm = \"fastest\" }}\n"
        ));
        assert_eq!(line, 9, "{msg}");
        assert!(msg.contains("fastest"), "{msg}");
        let (line, msg) = line_err(&format!(
            "{base}[[rules]]\nmethod = \"REGISTER\"\n\ndispatch = {{ set = 2, flags = \"x\" }}\n"
        ));
        assert_eq!(line, 10, "{msg}");
        let (line, msg) = line_err(&format!(
            "{base}[[rules]]\nmethod = \"REGISTER\"\ndispatch = {{ set = 2 }}\nreply = {{ code = 200 }}\n"
        ));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("exactly one"), "{msg}");
    }

    #[test]
    fn rule_needs_exactly_one_action() {
        let (line, msg) = line_err(
            "[server]\nlisten = [\"127.0.0.1:5060\"]\n[[rules]]\nmethod = \"OPTIONS\"\n\
             reply = { code = 200 }\nrelay = { uri = \"sip:127.0.0.1:5090\" }\n",
        );
        assert_eq!(line, 4);
        assert!(msg.contains("exactly one"));
    }

    #[test]
    fn durations_and_networks() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(43200)));
        assert_eq!(parse_duration("12"), None);
        assert_eq!(parse_duration("x"), None);
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("::1").unwrap().contains("::1".parse().unwrap()));
    }

    #[test]
    fn listen_transports_and_tls() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.listen_tcp, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert!(c.listen_tls.is_empty() && c.tls.is_none());
        let c = Config::parse(
            "[server]\nlisten = [\"udp:127.0.0.1:5060\", \"tcp:127.0.0.1:5060\", \"tls:127.0.0.1:5061\"]\n\
             [tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n\
             [tcp]\nidle_timeout = \"30s\"\nmax_connections_per_ip = 4\n\
             [[destinations]]\nid = 1\ngroup = 1\nuri = \"sips:127.0.0.1\"\nresources = \"pstn=1\"\n\
             [[destinations]]\nid = 2\ngroup = 1\nuri = \"sip:127.0.0.1:5090;transport=tcp\"\nresources = \"pstn=1\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(c.listen_tls, vec!["127.0.0.1:5061".parse().unwrap()]);
        assert_eq!(c.tcp.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.tcp.max_connections_per_ip, 4);
        assert_eq!(c.destinations[0].addr, "127.0.0.1:5061".parse().unwrap());
        assert_eq!(c.destinations[0].transport(), crate::core::Transport::Tls);
        assert_eq!(c.destinations[1].transport(), crate::core::Transport::Tcp);
        // TLS listening needs the files.
        let e = Config::parse("[server]\nlisten = [\"tls:127.0.0.1:5061\"]\n").unwrap_err();
        assert!(e.to_string().contains("[tls]"), "{e}");
        let (line, _) = line_err("[server]\nlisten = [\"sctp:127.0.0.1:5061\"]\n");
        assert_eq!(line, 2);
    }
}
