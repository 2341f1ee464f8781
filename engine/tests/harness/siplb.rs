//! The `siplb` binary under test: its config, its process and its admin
//! API (JSON-RPC on `/mi`, `/health`, `/metrics`).

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{wait_until, workdir};

/// The tables a test config starts with: `[server]` (two unpinned workers
/// on loopback, the log level from `SIPLB_TEST_LOG`, `info` by default),
/// `[admin]` and `[timers]`. [`ServerConfig::new`] gives the usual ports;
/// change a field with struct update syntax and append the rest of the
/// config (more tables, destinations, rules) to its `to_string()`.
pub struct ServerConfig {
    /// `server.listen` entries, e.g. `127.0.0.1:5060`, `tcp:127.0.0.1:5060`.
    pub listen: Vec<String>,
    /// Port of worker 0's backend-facing socket.
    pub internal_port_base: u16,
    /// `epoll` or `io_uring`.
    pub io: String,
    /// Admin API port.
    pub admin: u16,
    /// Bearer token the admin API requires, if any.
    pub token: Option<String>,
    /// Non-INVITE transaction timeout, e.g. `2s`.
    pub fr_timeout: String,
}

impl ServerConfig {
    /// UDP on `base`, internal ports from base+1, admin on base+9,
    /// `fr_timeout` 2 s, no token.
    pub fn new(base: u16, io: &str) -> ServerConfig {
        ServerConfig {
            listen: vec![format!("127.0.0.1:{base}")],
            internal_port_base: base + 1,
            io: io.to_string(),
            admin: base + 9,
            token: None,
            fr_timeout: "2s".to_string(),
        }
    }
}

impl fmt::Display for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listen: Vec<String> = self.listen.iter().map(|l| format!("\"{l}\"")).collect();
        let log_level = std::env::var("SIPLB_TEST_LOG").unwrap_or_else(|_| "info".into());
        writeln!(f, "[server]\nlisten = [{}]", listen.join(", "))?;
        writeln!(f, "workers = 2\npin_cores = false\ninternal_address = \"127.0.0.1\"")?;
        writeln!(f, "internal_port_base = {}", self.internal_port_base)?;
        writeln!(f, "io = \"{}\"\nlog_level = \"{log_level}\"", self.io)?;
        writeln!(f, "[admin]\nlisten = \"127.0.0.1:{}\"", self.admin)?;
        if let Some(t) = &self.token {
            writeln!(f, "token = \"{t}\"")?;
        }
        writeln!(
            f,
            "[timers]\nfr_timeout = \"{}\"\nfr_inv_timeout = \"10s\"",
            self.fr_timeout
        )
    }
}

/// One `[[destinations]]` table; `extra` holds more `key = value` lines
/// (resources, weight, probe_mode...).
pub fn destination(id: u32, group: u32, uri: &str, extra: &str) -> String {
    format!("[[destinations]]\nid = {id}\ngroup = {group}\nuri = \"{uri}\"\n{extra}\n")
}

/// A config for the reload and sources tests: listen on `base`, admin on
/// base+9, destinations (id, port, resources) in group 1, INVITE
/// load-balanced on `pstn`, anything else answered 405.
pub fn config(base: u16, dests: &[(u32, u16, &str)]) -> String {
    let mut cfg = ServerConfig::new(base, "epoll").to_string();
    for (id, port, res) in dests {
        let uri = format!("sip:127.0.0.1:{port}");
        cfg.push_str(&destination(*id, 1, &uri, &format!("resources = \"{res}\"")));
    }
    cfg.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    cfg
}

/// One HTTP/1.1 request to `127.0.0.1:port`, with a bearer `token` if
/// given: (status, body), `None` when nothing (readable) came back within
/// 5 s.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    Some((status, resp.split_once("\r\n\r\n")?.1.to_string()))
}

/// A running `siplb` process and its admin API. Dropping it stops the
/// process: SIGTERM, then SIGKILL after 5 s.
pub struct Siplb {
    child: Option<Child>,
    /// Admin API port.
    pub admin: u16,
    /// Bearer token sent with every admin request.
    pub token: Option<String>,
    /// The config file (rewrite it, then `lb_reload` or SIGHUP).
    pub path: PathBuf,
    /// The work directory holding the config and the log.
    pub dir: PathBuf,
    log: PathBuf,
}

impl Siplb {
    /// Writes `text` to `workdir(name)/siplb.toml`, starts siplb on it
    /// with the admin API on base+9 and waits up to `up_within` for that
    /// to answer.
    pub fn start(name: &str, base: u16, text: &str, up_within: Duration) -> Siplb {
        let s = Siplb::spawn(&workdir(name), "siplb", text, base + 9);
        s.wait_up(up_within);
        s
    }

    /// Writes `text` to `dir/{stem}.toml` and starts siplb on it, its
    /// stderr appended to `dir/{stem}.log`; does not wait (see
    /// [`Siplb::wait_up`]).
    pub fn spawn(dir: &Path, stem: &str, text: &str, admin: u16) -> Siplb {
        let path = dir.join(format!("{stem}.toml"));
        std::fs::write(&path, text).unwrap();
        let log = dir.join(format!("{stem}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_siplb"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start siplb");
        Siplb {
            child: Some(child),
            admin,
            token: None,
            path,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// Waits up to `limit` for the admin API to answer.
    pub fn wait_up(&self, limit: Duration) {
        wait_until(limit, "siplb to come up", || self.call("which", json!({})).is_ok());
    }

    /// SIGKILL: no shutdown, no last word to anyone (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGHUP: reread the config file.
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One admin HTTP request with this instance's token: (status, body).
    pub fn http(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        http(self.admin, method, path, self.token.as_deref(), body)
    }

    /// A JSON-RPC call: the whole response object, `None` when no
    /// (JSON) answer came.
    pub fn response(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "1"}).to_string();
        let (_, text) = self.http("POST", "/mi", &body)?;
        serde_json::from_str(&text).ok()
    }

    /// A JSON-RPC call: the result, or the error object (`"no answer"`
    /// when nothing came back).
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let v = self.response(method, params).ok_or_else(|| json!("no answer"))?;
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(v["error"].clone()),
        }
    }

    /// A JSON-RPC call that must succeed: its result.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// One statistic of `get_statistics`, e.g. `dialog:active_dialogs`.
    pub fn stat(&self, name: &str) -> u64 {
        let r = self.rpc("get_statistics", json!({"statistics": ["all"]}));
        r[name].as_u64().unwrap_or_else(|| panic!("no statistic {name} in {r}"))
    }

    /// Waits up to `limit` until statistic `name` equals `want`.
    pub fn wait_stat(&self, name: &str, want: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.stat(name);
            if v == want {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is {v}, expected {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `lb_list` entries, in order.
    pub fn destinations(&self) -> Vec<Value> {
        let r = self.rpc("lb_list", json!([]));
        r["Destinations"].as_array().cloned().unwrap_or_default()
    }

    /// The `lb_list` entry of destination `id`.
    pub fn dest(&self, id: u64) -> Value {
        let all = self.destinations();
        all.iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no destination {id} in {all:?}"))
    }

    /// The load of destination `id`, over all its resources.
    pub fn load(&self, id: u64) -> u64 {
        self.dest(id)["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["load"].as_u64().unwrap())
            .sum()
    }

    /// Every (destination, resource) load, in `lb_list` order.
    pub fn loads(&self) -> Vec<u64> {
        self.destinations()
            .iter()
            .flat_map(|d| d["Resources"].as_array().unwrap().clone())
            .map(|r| r["load"].as_u64().unwrap())
            .collect()
    }

    /// (id, load, max, removed) of every destination, from its first
    /// resource.
    pub fn list(&self) -> Vec<(u64, u64, u64, bool)> {
        self.destinations()
            .iter()
            .map(|d| {
                let r = &d["Resources"][0];
                (
                    d["id"].as_u64().unwrap(),
                    r["load"].as_u64().unwrap(),
                    r["max"].as_u64().unwrap(),
                    d.get("removed").is_some(),
                )
            })
            .collect()
    }

    /// `GET /health`: (HTTP status, body).
    pub fn health(&self) -> Option<(u16, Value)> {
        let (status, body) = self.http("GET", "/health", "")?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// A Prometheus scrape of `/metrics`, which must answer 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.http("GET", "/metrics", "").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// One sample's value from a scrape: `name{labels}` exactly as written.
    pub fn sample(&self, series: &str) -> f64 {
        let m = self.metrics();
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{m}"))
    }

    /// Waits up to `limit` until every load and the active and early
    /// dialog gauges are zero, and so are the statistics in `also`
    /// (e.g. `siplb:tcp_connections`).
    pub fn assert_idle(&self, limit: Duration, also: &[&str]) {
        let deadline = Instant::now() + limit;
        loop {
            let loads = self.loads();
            let gauges: Vec<(&str, u64)> = ["dialog:active_dialogs", "dialog:early_dialogs"]
                .iter()
                .chain(also)
                .map(|&g| (g, self.stat(g)))
                .collect();
            if loads.iter().all(|&l| l == 0) && gauges.iter().all(|g| g.1 == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not idle: loads {loads:?}, {gauges:?}; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Siplb {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = wait_exit(&mut child, Duration::from_secs(5));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits up to `limit` for `child` to exit: its status, `None` when it
/// is still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
