//! Reload (`lb_reload`, SIGHUP) on a running siplb between real SIPp user
//! agents: calls in progress survive and release their load, a removed
//! destination takes no new calls, a bad file is refused as a whole.
//!
//! Skipped, with a message, when `sipp` (Debian `sip-tester`) is missing.
//! Ports: bases 17000-17990 plus `SIPLB_TEST_PORT_OFFSET`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn sipp_available() -> bool {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipping: sipp is not installed (Debian package sip-tester)");
    }
    ok
}

/// A test's base port shifted by `SIPLB_TEST_PORT_OFFSET` (see tests/sipp.rs).
fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("siplb-reload-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A config: listen on `base`, admin on base+9, destinations (id, port,
/// resources) in group 1, INVITE load-balanced on `pstn`.
fn config(base: u16, dests: &[(u32, u16, &str)]) -> String {
    let mut cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:{base}\"]\nworkers = 2\npin_cores = false\n\
         internal_address = \"127.0.0.1\"\ninternal_port_base = {}\nio = \"epoll\"\n\
         [admin]\nlisten = \"127.0.0.1:{}\"\n\
         [timers]\nfr_timeout = \"2s\"\nfr_inv_timeout = \"10s\"\n",
        base + 1,
        base + 9
    );
    for (id, port, res) in dests {
        cfg.push_str(&format!(
            "[[destinations]]\nid = {id}\ngroup = 1\nuri = \"sip:127.0.0.1:{port}\"\nresources = \"{res}\"\n"
        ));
    }
    cfg.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    cfg
}

struct Siplb {
    child: Child,
    admin: u16,
    path: PathBuf,
    dir: PathBuf,
}

impl Siplb {
    fn start(name: &str, base: u16, text: &str) -> Siplb {
        let dir = workdir(name);
        let path = dir.join("siplb.toml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.join("siplb.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_siplb"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start siplb");
        let s = Siplb {
            child,
            admin: base + 9,
            path,
            dir,
        };
        s.wait_for("siplb to come up", || s.rpc("which", json!({})).is_some());
        s
    }

    /// The whole JSON-RPC response.
    fn rpc(&self, method: &str, params: Value) -> Option<Value> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "1"}).to_string();
        let mut c = TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            c,
            "POST /mi HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut resp = String::new();
        c.read_to_string(&mut resp).ok()?;
        serde_json::from_str(resp.split("\r\n\r\n").nth(1)?).ok()
    }

    fn result(&self, method: &str) -> Value {
        let r = self.rpc(method, json!([])).expect(method);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// id -> (pstn load, pstn max, removed) from lb_list.
    fn list(&self) -> Vec<(u64, u64, u64, bool)> {
        self.result("lb_list")["Destinations"]
            .as_array()
            .unwrap()
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

    fn stat(&self, name: &str) -> u64 {
        let r = self.rpc("get_statistics", json!({"statistics": ["all"]})).unwrap();
        r["result"][name].as_u64().unwrap()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("siplb.log")).unwrap_or_default()
    }

    fn hangup(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
    }
}

impl Drop for Siplb {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Sipp(Child);

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sipp {
    /// Waits for the UAC to end; true when every call succeeded.
    fn success(mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn uas(name: &str, port: u16) -> Sipp {
    let child = Command::new("sipp")
        .current_dir(workdir(name))
        .arg("-sf")
        .arg(scenarios().join("uas.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin", "-trace_err"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp uas");
    Sipp(child)
}

/// Starts a UAC placing `calls` calls held `hold_ms` each, all at once.
fn uac(name: &str, target: u16, port: u16, calls: u32, hold_ms: u32) -> Sipp {
    let child = Command::new("sipp")
        .current_dir(workdir(name))
        .arg("-sf")
        .arg(scenarios().join("uac.xml"))
        .arg(format!("127.0.0.1:{target}"))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-s",
            "1234",
            "-nostdin",
            "-trace_err",
        ])
        .args(["-m", &calls.to_string(), "-r", "50", "-d", &hold_ms.to_string()])
        .args(["-timeout", "50", "-timeout_error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp uac");
    Sipp(child)
}

fn load_of(list: &[(u64, u64, u64, bool)], id: u64) -> (u64, u64, bool) {
    list.iter()
        .find(|d| d.0 == id)
        .map(|d| (d.1, d.2, d.3))
        .unwrap_or_else(|| panic!("destination {id} not listed: {list:?}"))
}

#[test]
fn reload_keeps_calls_in_progress_and_their_load() {
    if !sipp_available() {
        return;
    }
    let base = port(17000);
    let (a, b, c) = (base + 11, base + 12, base + 13);
    let lb = Siplb::start("keep", base, &config(base, &[(1, a, "pstn=10"), (2, b, "pstn=10")]));
    let _ua = uas("keep", a);
    let _ub = uas("keep", b);
    let _uc = uas("keep", c);
    std::thread::sleep(Duration::from_millis(200));

    // Six long calls: three on each destination (equal availability).
    let first = uac("keep", base, base + 15, 6, 12_000);
    lb.wait_for("six calls up", || {
        let l = lb.list();
        load_of(&l, 1).0 == 3 && load_of(&l, 2).0 == 3
    });

    // Reload: 1 kept (capacity 4, so 1 free), 2 removed (7 free if it were
    // eligible), 3 added with 5 free.
    std::fs::write(&lb.path, config(base, &[(3, c, "pstn=5"), (1, a, "pstn=4")])).unwrap();
    let r = lb.result("lb_reload");
    assert_eq!(r["kept"], json!([1]), "{r}");
    assert_eq!(r["added"], json!([3]), "{r}");
    assert_eq!(r["removed"], json!([2]), "{r}");
    assert_eq!(r["draining"], json!([2]), "{r}");
    let l = lb.list();
    assert_eq!(load_of(&l, 1), (3, 4, false), "load kept, capacity applied");
    assert_eq!(load_of(&l, 3), (0, 5, false));
    assert_eq!(load_of(&l, 2), (3, 10, true), "removed, still holding its calls");

    // Two more long calls: 3 has the most room; 2 would have more but is
    // removed, so it must not get any.
    let second = uac("keep", base, base + 16, 2, 4_000);
    lb.wait_for("two new calls on destination 3", || load_of(&lb.list(), 3).0 == 2);
    let l = lb.list();
    assert_eq!(load_of(&l, 2).0, 3, "a removed destination took a new call: {l:?}");
    assert_eq!(load_of(&l, 1).0, 3);

    // Everything ends with BYE through siplb; the load goes back to zero
    // and the removed destination is freed.
    assert!(second.success(), "calls after the reload failed");
    assert!(first.success(), "calls held across the reload failed");
    lb.wait_for("idle", || {
        let l = lb.list();
        l.len() == 2 && l.iter().all(|d| d.1 == 0) && lb.stat("dialog:active_dialogs") == 0
    });
    assert_eq!(lb.stat("dialog:processed_dialogs"), 8);
    assert_eq!(lb.stat("dialog:failed_dialogs"), 0);
}

#[test]
fn a_bad_config_is_refused_and_the_running_one_keeps_serving() {
    if !sipp_available() {
        return;
    }
    let base = port(17100);
    let a = base + 11;
    let good = config(base, &[(1, a, "pstn=10")]);
    let lb = Siplb::start("bad", base, &good);
    let _ua = uas("bad", a);
    std::thread::sleep(Duration::from_millis(200));

    // A bad capacity on line 16: refused with file and line, nothing changes.
    let bad = good.replace("pstn=10", "pstn=ten");
    let line = bad.lines().position(|l| l.contains("pstn=ten")).unwrap() + 1;
    std::fs::write(&lb.path, &bad).unwrap();
    let r = lb.rpc("lb_reload", json!([])).unwrap();
    let msg = r["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains(&format!("siplb.toml: line {line}")), "{r}");
    assert_eq!(load_of(&lb.list(), 1).1, 10);

    // The same by SIGHUP: logged, refused.
    lb.hangup();
    lb.wait_for("the refusal in the log", || {
        lb.log().contains("reload refused") && lb.log().contains("SIGHUP")
    });
    assert!(
        uac("bad", base, base + 15, 2, 100).success(),
        "calls after a refused reload"
    );

    // A good file by SIGHUP applies; a listen change is named and not applied.
    let changed = config(base, &[(1, a, "pstn=7")]).replace(&format!("127.0.0.1:{base}\""), "127.0.0.1:1\"");
    std::fs::write(&lb.path, changed).unwrap();
    lb.hangup();
    lb.wait_for("capacity 7", || load_of(&lb.list(), 1).1 == 7);
    assert!(lb.log().contains("server.listen"), "{}", lb.log());
    assert!(uac("bad", base, base + 16, 2, 100).success(), "calls after SIGHUP");
    lb.wait_for("idle", || lb.list().iter().all(|d| d.1 == 0));
}
