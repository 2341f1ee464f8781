//! The dispatcher, inbound calls from backends and the dialog commands with
//! real peers on loopback: the `siplb` binary between SIPp user agents
//! (scenario files in `tests/sipp/`), checked through the admin API.
//! Every test ends with every load counter and dialog gauge at zero.
//! Skipped, with a message, when `sipp` (Debian `sip-tester`) is missing.

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

/// A test's base port, shifted by `SIPLB_TEST_PORT_OFFSET` (see sipp.rs).
fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("siplb-ds-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A running siplb (listen `base`, internal base+1.., admin base+9).
struct Siplb {
    child: Child,
    admin: u16,
}

impl Siplb {
    /// `body`: the destinations and rules of the config.
    fn start(name: &str, base: u16, body: &str) -> Siplb {
        let cfg = format!(
            "[server]\nlisten = [\"127.0.0.1:{base}\"]\nworkers = 2\npin_cores = false\n\
             internal_address = \"127.0.0.1\"\ninternal_port_base = {}\nio = \"epoll\"\nlog_level = \"info\"\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n[timers]\nfr_timeout = \"2s\"\nfr_inv_timeout = \"10s\"\n{body}",
            base + 1,
            base + 9
        );
        let dir = workdir(name);
        let path = dir.join("siplb.toml");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("siplb.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_siplb"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start siplb");
        let s = Siplb { child, admin: base + 9 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.rpc("which", json!({})).is_none() {
            assert!(Instant::now() < deadline, "siplb did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The whole JSON-RPC response.
    fn call(&self, method: &str, params: Value) -> Option<Value> {
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
        serde_json::from_str::<Value>(resp.split("\r\n\r\n").nth(1)?).ok()
    }

    fn rpc(&self, method: &str, params: Value) -> Option<Value> {
        self.call(method, params)?.get("result").cloned()
    }

    fn stat(&self, name: &str) -> u64 {
        let r = self
            .rpc("get_statistics", json!({"statistics": ["all"]}))
            .expect("get_statistics");
        r[name].as_u64().unwrap_or_else(|| panic!("no statistic {name} in {r}"))
    }

    /// Load per (destination id, resource name).
    fn loads(&self) -> Vec<(u64, String, u64)> {
        let r = self.rpc("lb_list", json!({})).expect("lb_list");
        let mut out = Vec::new();
        for d in r["Destinations"].as_array().unwrap() {
            for res in d["Resources"].as_array().unwrap() {
                out.push((
                    d["id"].as_u64().unwrap(),
                    res["name"].as_str().unwrap().to_string(),
                    res["load"].as_u64().unwrap(),
                ));
            }
        }
        out
    }

    fn load_of(&self, id: u64) -> u64 {
        self.loads().iter().filter(|l| l.0 == id).map(|l| l.2).sum()
    }

    /// Waits (bounded) until `f` holds; panics with `what` otherwise.
    fn wait_for(&self, what: &str, mut f: impl FnMut(&Siplb) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f(self) {
            assert!(Instant::now() < deadline, "gave up waiting: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every load and live-dialog gauge is zero.
    fn assert_idle(&self) {
        self.wait_for("loads and dialogs back at zero", |s| {
            s.loads().iter().all(|l| l.2 == 0)
                && s.stat("dialog:active_dialogs") == 0
                && s.stat("dialog:early_dialogs") == 0
        });
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

/// A SIPp process, killed when dropped.
struct Sipp(Child);

impl Sipp {
    fn start(name: &str, scenario_file: &str, port: u16, target: Option<u16>, args: &[&str]) -> Sipp {
        let mut c = Command::new("sipp");
        c.current_dir(workdir(name)).arg("-sf").arg(scenario(scenario_file));
        if let Some(t) = target {
            c.arg(format!("127.0.0.1:{t}"));
        }
        c.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin", "-trace_err"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Sipp(c.spawn().expect("start sipp"))
    }

    /// Waits for the exit; true on success (bounded: false when it hangs).
    fn success(&mut self) -> bool {
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

impl Sipp {
    /// REGISTERs a SIPp started with `-trace_counts` in `workdir(name)`
    /// received: SIGUSR1 makes it stop, write its counts and exit.
    fn registers_received(&mut self, name: &str) -> u64 {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGUSR1);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !matches!(self.0.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "SIPp did not stop on SIGUSR1");
            std::thread::sleep(Duration::from_millis(50));
        }
        let counts = std::fs::read_dir(workdir(name))
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with("_counts.csv"))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .unwrap_or_else(|| panic!("no SIPp counts file in {}", workdir(name).display()));
        // Header: CurrentTime;ElapsedTime;0_REGISTER_Recv;...; the last line is the final one.
        counts
            .lines()
            .rfind(|l| !l.is_empty())
            .and_then(|l| l.split(';').nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unreadable SIPp counts: {counts}"))
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `[[destinations]]` tables from (id, group, uri, extra key lines).
fn destinations(specs: &[(u32, u32, &str, &str)]) -> String {
    specs
        .iter()
        .map(|(id, group, uri, extra)| {
            format!("[[destinations]]\nid = {id}\ngroup = {group}\nuri = \"{uri}\"\n{extra}\n")
        })
        .collect()
}

fn registers_round_robin_by_weight(base: u16) {
    let (a, b, c) = (base + 11, base + 12, base + 13);
    let mut body = destinations(&[
        (1, 1, &format!("sip:127.0.0.1:{a}"), "weight = 1"),
        (2, 1, &format!("sip:127.0.0.1:{b}"), "weight = 2"),
        (3, 1, &format!("sip:127.0.0.1:{c}"), "weight = 3"),
    ]);
    body.push_str(
        "[[rules]]\nmethod = \"REGISTER\"\ndispatch = { set = 1, algorithm = \"round-robin\", flags = \"f\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let lb = Siplb::start("rr", base, &body);
    // Each registrar exits successfully after exactly its share: 10/20/30
    // of 60 (one SIPp socket: one worker, whose round-robin is exact).
    let mut ra = Sipp::start("rr", "uas_register_200.xml", a, None, &["-m", "10"]);
    let mut rb = Sipp::start("rr", "uas_register_200.xml", b, None, &["-m", "20"]);
    let mut rc = Sipp::start("rr", "uas_register_200.xml", c, None, &["-m", "30"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = Sipp::start(
        "rr",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "60", "-r", "100", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.success(), "every REGISTER should get its 200");
    assert!(ra.success() && rb.success() && rc.success(), "shares 10/20/30");
    assert_eq!(lb.stat("siplb:failovers"), 0);
    // ds_list shows the set with the weights.
    let ds = lb.rpc("ds_list", json!([])).expect("ds_list");
    let set = &ds["PARTITIONS"][0]["SETS"][0];
    assert_eq!(set["Destinations"][2]["weight"], 3);
    assert_eq!(set["Destinations"][2]["state"], "Active");
    lb.assert_idle();
}

fn registers_hashed_by_weight(base: u16) {
    // hash-callid over weights 1, 1, 2: 400 REGISTERs (distinct Call-IDs)
    // split about 100 / 100 / 200.
    let ports = [base + 11, base + 12, base + 13];
    let mut body = destinations(&[
        (1, 1, &format!("sip:127.0.0.1:{}", ports[0]), "weight = 1"),
        (2, 1, &format!("sip:127.0.0.1:{}", ports[1]), "weight = 1"),
        (3, 1, &format!("sip:127.0.0.1:{}", ports[2]), "weight = 2"),
    ]);
    body.push_str(
        "[[rules]]\nmethod = \"REGISTER\"\ndispatch = { set = 1, algorithm = \"hash-callid\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let lb = Siplb::start("hash", base, &body);
    let names = ["hash-a", "hash-b", "hash-c"];
    let mut regs: Vec<Sipp> = names
        .iter()
        .zip(ports)
        .map(|(n, p)| Sipp::start(n, "uas_register_200.xml", p, None, &["-trace_counts"]))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = Sipp::start(
        "hash",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "400", "-r", "200", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.success(), "every REGISTER should get its 200");
    let got: Vec<u64> = regs
        .iter_mut()
        .zip(names)
        .map(|(r, n)| r.registers_received(n))
        .collect();
    assert_eq!(got.iter().sum::<u64>(), 400, "{got:?}");
    // Generous bounds: more than 4 standard deviations each.
    assert!((60..=140).contains(&got[0]) && (60..=140).contains(&got[1]), "{got:?}");
    assert!((130..=270).contains(&got[2]), "{got:?}");
    lb.assert_idle();
}

fn register_fails_over_on_503_and_skips_inactive(base: u16) {
    let (a, b, c) = (base + 11, base + 12, base + 13);
    let mut body = destinations(&[
        (1, 1, &format!("sip:127.0.0.1:{a}"), "priority = 9"),
        (2, 1, &format!("sip:127.0.0.1:{b}"), "priority = 5"),
        (3, 1, &format!("sip:127.0.0.1:{c}"), "priority = 7"),
    ]);
    body.push_str(
        "[[rules]]\nmethod = \"REGISTER\"\ndispatch = { set = 1, algorithm = \"priority\", flags = \"f\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let lb = Siplb::start("dsfo", base, &body);
    // Priority order 1, 3, 2: 1 refuses with 503, 3 is set inactive by the
    // operator, so every REGISTER ends on 2.
    let r = lb
        .rpc("ds_set_state", json!(["i", "1", format!("sip:127.0.0.1:{c}")]))
        .expect("ds_set_state");
    assert_eq!(r, "OK");
    let ds = lb.rpc("dispatcher:list", json!({})).expect("ds_list");
    assert_eq!(ds["PARTITIONS"][0]["SETS"][0]["Destinations"][2]["state"], "Inactive");
    let mut ra = Sipp::start("dsfo", "uas_register_503.xml", a, None, &["-m", "5"]);
    let mut rb = Sipp::start("dsfo", "uas_register_200.xml", b, None, &["-m", "5"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = Sipp::start(
        "dsfo",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "5", "-r", "10", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.success(), "REGISTERs should succeed on the third choice");
    assert!(ra.success() && rb.success());
    assert_eq!(lb.stat("siplb:failovers"), 5);
    lb.assert_idle();
}

fn inbound_call_counts_on_its_destination(base: u16) {
    // The caller (SIPp on base+15) is destination 9 of group 2: its calls
    // go to the upstream on base+11 and count as `pstn` load on it.
    let (upstream, caller) = (base + 11, base + 15);
    let mut body = destinations(&[
        (1, 1, &format!("sip:127.0.0.1:{}", base + 12), "resources = \"pstn=10\""),
        (9, 2, &format!("sip:127.0.0.1:{caller}"), "resources = \"pstn=3\""),
    ]);
    body.push_str(&format!(
        "[[rules]]\nname = \"from backends\"\nsource = \"destinations\"\nmethod = \"INVITE\"\n\
         relay = {{ uri = \"sip:127.0.0.1:{upstream}\", count = \"pstn\" }}\n\
         [[rules]]\nreply = {{ code = 405 }}\n"
    ));
    let lb = Siplb::start("inbound", base, &body);
    let _up = Sipp::start("inbound", "uas.xml", upstream, None, &[]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = Sipp::start(
        "inbound",
        "uac.xml",
        caller,
        Some(base),
        &[
            "-s",
            "1234",
            "-m",
            "1",
            "-d",
            "3000",
            "-timeout",
            "30",
            "-timeout_error",
        ],
    );
    lb.wait_for("the inbound call counted on destination 9", |s| s.load_of(9) == 1);
    assert_eq!(lb.load_of(1), 0);
    let d = lb.rpc("dlg_list", json!([])).expect("dlg_list");
    assert_eq!(d["Dialogs"][0]["destination"]["id"], 9);
    assert_eq!(d["Dialogs"][0]["resources"], json!(["pstn"]));
    assert!(uac.success(), "the inbound call should complete");
    // Released at the BYE.
    lb.assert_idle();
    assert_eq!(lb.stat("dialog:processed_dialogs"), 1);
}

fn dlg_list_and_dlg_end_release_the_load(base: u16) {
    let mut body = destinations(&[(1, 1, &format!("sip:127.0.0.1:{}", base + 11), "resources = \"pstn=10\"")]);
    body.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let lb = Siplb::start("dlgend", base, &body);
    let mut uas = Sipp::start("dlgend", "uas.xml", base + 11, None, &["-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    // A call held for a minute: only dlg_end can end it within the test.
    let _uac = Sipp::start(
        "dlgend",
        "uac.xml",
        base + 15,
        Some(base),
        &["-s", "1234", "-m", "1", "-d", "60000"],
    );
    lb.wait_for("a confirmed dialog", |s| {
        s.rpc("dlg_list", json!([]))
            .is_some_and(|r| r["Dialogs"][0]["state"] == 4)
    });
    let all = lb.rpc("dlg_list", json!([])).unwrap();
    let dlg = &all["Dialogs"][0];
    assert_eq!(all["Dialogs"].as_array().unwrap().len(), 1);
    let call_id = dlg["callid"].as_str().unwrap().to_string();
    assert_eq!(dlg["destination"]["id"], 1);
    assert_eq!(dlg["resources"], json!(["pstn"]));
    assert!(dlg["caller_tag"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dlg["CALLEES"][0]["callee_tag"].as_str().is_some_and(|t| !t.is_empty()));
    let one = lb.rpc("dlg_list", json!({"callid": call_id})).unwrap();
    assert_eq!(one["Dialog"]["callid"], call_id.as_str());
    assert_eq!(lb.load_of(1), 1);
    // dlg_end: OK, the load is released at once, and exactly once.
    assert_eq!(lb.rpc("dlg_end", json!([call_id])), Some(json!("OK")));
    assert_eq!(lb.load_of(1), 0);
    assert_eq!(lb.stat("dialog:active_dialogs"), 0);
    let again = lb.call("dlg_end_dlg", json!({"dialog_id": call_id})).unwrap();
    assert_eq!(again["error"]["code"], 404, "{again}");
    let gone = lb.call("dlg_list", json!([call_id])).unwrap();
    assert_eq!(gone["error"]["code"], 404);
    // The callee got siplb's BYE and answered it: its one call completed.
    assert!(uas.success(), "the callee should receive the BYE");
    lb.assert_idle();
}

macro_rules! tests {
    ($($name:ident = $base:expr;)*) => {
        $(
            #[test]
            fn $name() {
                if sipp_available() {
                    super::$name(super::port($base));
                }
            }
        )*
    };
}

mod peers {
    use super::sipp_available;
    tests! {
        registers_round_robin_by_weight = 16000;
        registers_hashed_by_weight = 16400;
        register_fails_over_on_503_and_skips_inactive = 16100;
        inbound_call_counts_on_its_destination = 16200;
        dlg_list_and_dlg_end_release_the_load = 16300;
    }
}
