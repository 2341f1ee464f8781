//! Shared by the reload and sources tests: a siplb process driven through
//! its admin API, SIPp user agents.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn sipp_available() -> bool {
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
pub fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("siplb-reload-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A config: listen on `base`, admin on base+9, destinations (id, port,
/// resources) in group 1, INVITE load-balanced on `pstn`.
pub fn config(base: u16, dests: &[(u32, u16, &str)]) -> String {
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

pub struct Siplb {
    pub child: Child,
    pub admin: u16,
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Siplb {
    pub fn start(name: &str, base: u16, text: &str) -> Siplb {
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
    pub fn rpc(&self, method: &str, params: Value) -> Option<Value> {
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

    pub fn result(&self, method: &str) -> Value {
        let r = self.rpc(method, json!([])).expect(method);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// id -> (pstn load, pstn max, removed) from lb_list.
    pub fn list(&self) -> Vec<(u64, u64, u64, bool)> {
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

    pub fn stat(&self, name: &str) -> u64 {
        let r = self.rpc("get_statistics", json!({"statistics": ["all"]})).unwrap();
        r["result"][name].as_u64().unwrap()
    }

    pub fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("siplb.log")).unwrap_or_default()
    }

    pub fn hangup(&self) {
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

pub struct Sipp(pub Child);

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sipp {
    /// Waits for the UAC to end; true when every call succeeded.
    pub fn success(mut self) -> bool {
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

pub fn uas(name: &str, port: u16) -> Sipp {
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
pub fn uac(name: &str, target: u16, port: u16, calls: u32, hold_ms: u32) -> Sipp {
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
