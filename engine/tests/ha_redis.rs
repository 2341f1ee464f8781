//! HA with a real Redis on loopback: takeover after a kill, Redis stopped
//! and restarted under load, and two active nodes sharing one capacity.
//!
//! Each test starts its own `redis-server --port P --save '' --appendonly
//! no`, `siplb` processes and SIPp peers on ports `port(19000..)`. Skipped,
//! with a message, when `redis-server` or `sipp` is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn have(cmd: &str, arg: &str) -> bool {
    let ok = Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipping: {cmd} is not installed (Debian packages redis-server, sip-tester)");
    }
    ok
}

fn available() -> bool {
    have("redis-server", "--version") && have("sipp", "-v")
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("siplb-ha-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private Redis on loopback.
struct Redis {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(name: &str, port: u16) -> Redis {
        let mut r = Redis {
            proc: None,
            port,
            dir: workdir(name),
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.con().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn con(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(self.url()).ok()?;
        let mut con = c.get_connection_with_timeout(Duration::from_millis(200)).ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    /// Dialog records stored now.
    fn dialogs(&self) -> usize {
        let mut con = self.con().expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS").arg("siplb:dlg:*").query(&mut con).unwrap();
        keys.len()
    }
}

/// A siplb process with its admin port.
struct Siplb {
    proc: Option<Proc>,
    admin: u16,
}

impl Siplb {
    /// `base`: listen port; base+1, base+2 internal ports; base+9 admin.
    fn start(name: &str, base: u16, redis: &str, node: &str, dest: u16, capacity: u32, extra: &str) -> Siplb {
        let cfg = format!(
            "[server]\nlisten = [\"127.0.0.1:{base}\"]\nworkers = 2\npin_cores = false\n\
             internal_address = \"127.0.0.1\"\ninternal_port_base = {}\nio = \"epoll\"\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n\
             [timers]\nfr_timeout = \"2s\"\nfr_inv_timeout = \"10s\"\n\
             [ha]\nredis = \"{redis}\"\nnode = \"{node}\"\n{extra}\n\
             [[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:{dest}\"\nresources = \"pstn={capacity}\"\n\
             [[rules]]\nmethod = \"INVITE\"\nload_balance = {{ group = 1, resources = \"pstn\" }}\n\
             [[rules]]\nreply = {{ code = 405 }}\n",
            base + 1,
            base + 9
        );
        let dir = workdir(name);
        let path = dir.join(format!("{node}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{node}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_siplb"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start siplb");
        let s = Siplb {
            proc: Some(Proc(child)),
            admin: base + 9,
        };
        s.wait_for("up", Duration::from_secs(10), |s| s.rpc("which", json!({})).is_some());
        s
    }

    fn http(&self, request: &str) -> Option<String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(request.as_bytes()).ok()?;
        let mut resp = String::new();
        c.read_to_string(&mut resp).ok()?;
        Some(resp)
    }

    fn rpc(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "1"}).to_string();
        let resp = self.http(&format!(
            "POST /mi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))?;
        serde_json::from_str::<Value>(resp.split("\r\n\r\n").nth(1)?)
            .ok()?
            .get("result")
            .cloned()
    }

    /// `GET /health`: (HTTP status, body).
    fn health(&self) -> Option<(u16, Value)> {
        let resp = self.http("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(resp.split("\r\n\r\n").nth(1)?).ok()?))
    }

    fn stat(&self, name: &str) -> u64 {
        let r = self
            .rpc("get_statistics", json!({"statistics": ["all"]}))
            .expect("stats");
        r[name].as_u64().unwrap_or_else(|| panic!("no {name} in {r}"))
    }

    /// This node's own load on destination 1.
    fn load(&self) -> u64 {
        let r = self.rpc("lb_list", json!({})).expect("lb_list");
        r["Destinations"][0]["Resources"][0]["load"].as_u64().unwrap()
    }

    fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut(&Siplb) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_idle(&self) {
        self.wait_for("idle counters", Duration::from_secs(10), |s| {
            s.load() == 0 && s.stat("dialog:active_dialogs") == 0 && s.stat("dialog:early_dialogs") == 0
        });
    }

    /// SIGKILL: no shutdown, no last word to Redis (a crash).
    fn kill(&mut self) {
        self.proc = None;
    }
}

impl Drop for Siplb {
    fn drop(&mut self) {
        if let Some(p) = &self.proc {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(p.0.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Some(p) = &mut self.proc {
                    if let Ok(Some(_)) = p.0.try_wait() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn sipp_uas(name: &str, port: u16) -> Proc {
    let child = Command::new("sipp")
        .current_dir(workdir(name))
        .arg("-sf")
        .arg(scenarios().join("uas.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp uas");
    Proc(child)
}

/// A SIPp UAC running in the background.
fn sipp_uac(name: &str, scenario: &Path, target: u16, port: u16, args: &[&str]) -> Proc {
    let child = Command::new("sipp")
        .current_dir(workdir(name))
        .arg("-sf")
        .arg(scenario)
        .arg(format!("127.0.0.1:{target}"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-s", "1234", "-nostdin"])
        .args(["-trace_err", "-trace_stat", "-fd", "1"])
        .args(["-timeout", "60", "-timeout_error"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp uac");
    Proc(child)
}

/// Waits for a UAC; true when every call succeeded.
fn finished(mut uac: Proc, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = uac.0.try_wait() {
            return st.success();
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn takeover_after_a_kill_relays_the_byes_of_established_calls() {
    if !available() {
        return;
    }
    let name = "takeover";
    let redis = Redis::start(name, port(19000));
    let (lb, uas_port, uac_port) = (port(19010), port(19020), port(19030));
    let _uas = sipp_uas(name, uas_port);
    let mut a = Siplb::start(name, lb, &redis.url(), "a", uas_port, 1000, "");
    assert_eq!(a.health().unwrap().1["redis"], "up");
    // 20 calls held 5 s: established well before the kill.
    let uac = sipp_uac(
        name,
        &scenarios().join("uac.xml"),
        lb,
        uac_port,
        &["-m", "20", "-r", "40", "-d", "5000"],
    );
    a.wait_for("20 confirmed calls", Duration::from_secs(10), |s| {
        s.stat("dialog:active_dialogs") == 20
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.dialogs() < 20 {
        assert!(Instant::now() < deadline, "records not replicated: {}", redis.dialogs());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill();
    let b = Siplb::start(name, lb, &redis.url(), "b", uas_port, 1000, "");
    b.wait_for("the takeover", Duration::from_secs(5), |s| {
        s.health().is_some_and(|h| h.1["adopted_dialogs"] == 20)
    });
    assert_eq!(b.load(), 20, "the adopted calls count on the destination");
    assert_eq!(b.stat("dialog:active_dialogs"), 20);
    assert!(
        finished(uac, Duration::from_secs(40)),
        "a call failed; see {:?}",
        workdir(name)
    );
    b.assert_idle();
    assert_eq!(b.stat("siplb:unknown_dialogs"), 0, "no BYE was refused");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.dialogs() != 0 {
        assert!(Instant::now() < deadline, "records left in redis: {}", redis.dialogs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn redis_stopped_and_restarted_under_load_loses_no_call() {
    if !available() {
        return;
    }
    let name = "redis-restart";
    let mut redis = Redis::start(name, port(19100));
    let (lb, uas_port, uac_port) = (port(19110), port(19120), port(19130));
    let _uas = sipp_uas(name, uas_port);
    let a = Siplb::start(name, lb, &redis.url(), "a", uas_port, 1000, "");
    // 50 calls/s for 6 s, 2 s holds: Redis is down for 2 s in the middle.
    let uac = sipp_uac(
        name,
        &scenarios().join("uac.xml"),
        lb,
        uac_port,
        &["-m", "300", "-r", "50", "-d", "2000"],
    );
    a.wait_for("calls", Duration::from_secs(10), |s| {
        s.stat("dialog:active_dialogs") >= 20
    });
    redis.stop();
    a.wait_for("degraded health", Duration::from_secs(5), |s| {
        s.health()
            .is_some_and(|(code, h)| code == 200 && h["status"] == "degraded")
    });
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    a.wait_for("ok health", Duration::from_secs(5), |s| {
        s.health().is_some_and(|h| h.1["status"] == "ok")
    });
    // Caught up: Redis holds exactly the live calls (checked while calls
    // still run: the records match the node's view at some instant).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = a.stat("dialog:active_dialogs") as usize;
        let stored = redis.dialogs();
        if live == stored && live > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis not caught up: {stored} stored, {live} live"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = a.rpc("which", json!({})).unwrap();
    assert!(m.as_array().unwrap().contains(&json!("health")));
    assert!(
        finished(uac, Duration::from_secs(40)),
        "a call failed; see {:?}",
        workdir(name)
    );
    a.assert_idle();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.dialogs() != 0 {
        assert!(Instant::now() < deadline, "records left in redis: {}", redis.dialogs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A UAC scenario that takes a 503 (capacity full) as the end of a call.
fn uac_or_503(name: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenarios().join("uac.xml")).unwrap();
    let text = text
        .replacen(
            r#"<recv response="200" rrs="true" response_txn="invite"/>"#,
            r#"<recv response="503" optional="true" response_txn="invite" next="full"/>
  <recv response="200" rrs="true" response_txn="invite"/>"#,
            1,
        )
        .replacen(
            r#"<recv response="200" crlf="true"/>"#,
            r#"<recv response="200" crlf="true"/>
  <label id="full"/>"#,
            1,
        );
    let path = workdir(name).join("uac_or_503.xml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_active_nodes_share_a_capacity_of_100() {
    if !available() {
        return;
    }
    let name = "active-active";
    let redis = Redis::start(name, port(19200));
    let (lb_a, lb_b, uas_port) = (port(19210), port(19220), port(19240));
    let _uas = sipp_uas(name, uas_port);
    // Measuring other points (perf/RESULTS.md): SIPLB_HA_AA_RATE (calls/s
    // offered to each node, default 60), SIPLB_HA_AA_INTERVAL (default 100ms).
    let rate: f64 = std::env::var("SIPLB_HA_AA_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60.0);
    let interval_text = std::env::var("SIPLB_HA_AA_INTERVAL").unwrap_or_else(|_| "100ms".into());
    let interval = siplb::config::parse_duration(&interval_text).expect("SIPLB_HA_AA_INTERVAL");
    let extra = format!("interval = \"{interval_text}\"");
    let a = Siplb::start(name, lb_a, &redis.url(), "a", uas_port, 100, &extra);
    let b = Siplb::start(name, lb_b, &redis.url(), "b", uas_port, 100, &extra);
    a.wait_for("b seen", Duration::from_secs(5), |s| {
        s.health().is_some_and(|h| h.1["peers"] == 1)
    });
    let scenario = uac_or_503(name);
    // Each node is offered `rate` calls/s held 4 s for 8 s: far more than 100.
    let (calls, r) = (((rate * 8.0) as u64).to_string(), (rate as u64).to_string());
    let args = ["-m", calls.as_str(), "-r", r.as_str(), "-d", "4000"];
    let ua = sipp_uac(name, &scenario, lb_a, port(19250), &args);
    let ub = sipp_uac(name, &scenario, lb_b, port(19260), &args);
    let start = Instant::now();
    let (mut peak, mut seen_a, mut seen_b) = (0, 0, 0);
    while start.elapsed() < Duration::from_secs(12) {
        let (la, lb) = (a.load(), b.load());
        peak = peak.max(la + lb);
        seen_a = seen_a.max(la);
        seen_b = seen_b.max(lb);
        std::thread::sleep(Duration::from_millis(2));
    }
    // Bound (README): excess <= rate of the other node * staleness, where
    // the staleness is 2 * interval + rtt on a calm machine; each node
    // measures the oldest view it used, so the bound holds on a busy one too.
    let age = |s: &Siplb| s.health().map_or(0, |h| h.1["max_remote_age_ms"].as_u64().unwrap_or(0));
    let measured = age(&a).max(age(&b));
    let staleness = (measured as f64 / 1000.0).max(2.0 * interval.as_secs_f64() + 0.01);
    let bound = (rate * staleness).ceil() as u64;
    eprintln!(
        "active/active: {rate} calls/s per node, interval {interval_text}: peak {peak} concurrent calls \
         for capacity 100 (bound 100 + {bound}; oldest view measured {measured} ms, formula {:.0} ms)",
        (2.0 * interval.as_secs_f64() + 0.01) * 1000.0
    );
    assert!(peak <= 100 + bound, "peak {peak} over 100 + {bound}");
    assert!(peak >= 90, "the destination was filled (peak {peak})");
    assert!(seen_a > 0 && seen_b > 0, "both nodes carried calls");
    let _ = finished(ua, Duration::from_secs(60));
    let _ = finished(ub, Duration::from_secs(60));
    a.assert_idle();
    b.assert_idle();
    // Destination status is shared: an operator's disable on one node
    // reaches the other, and so does the enable.
    let enabled = |s: &Siplb| s.rpc("lb_status", json!(["1"])).map(|r| r["enable"].clone());
    assert_eq!(a.rpc("lb_status", json!(["1", "0"])), Some(json!("OK")));
    b.wait_for("the disable on b", Duration::from_secs(5), |s| {
        enabled(s) == Some(json!("no"))
    });
    assert_eq!(b.rpc("lb_status", json!(["1", "1"])), Some(json!("OK")));
    a.wait_for("the enable on a", Duration::from_secs(5), |s| {
        enabled(s) == Some(json!("yes"))
    });
}
