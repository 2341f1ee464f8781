//! The dispatcher, inbound calls from backends and the dialog commands with
//! real peers on loopback: the `siplb` binary between SIPp user agents
//! (scenario files in `tests/sipp/`), checked through the admin API.
//! Every test ends with every load counter and dialog gauge at zero.
//! Skipped, with a message, when `sipp` (Debian `sip-tester`) is missing.

mod harness;

use std::time::Duration;

use harness::{destination, port, scenarios, sipp_available, wait_until, ServerConfig, Siplb, Sipp};
use serde_json::json;

/// How long siplb may take to start.
const UP: Duration = Duration::from_secs(10);
/// How long an awaited state (a call up, every counter back at zero)
/// may take.
const WAIT: Duration = Duration::from_secs(15);
/// How long a SIPp may take to end.
const SIPP_LIMIT: Duration = Duration::from_secs(60);

/// Starts siplb (listen `base`, internal base+1.., admin base+9) with
/// `body`, the destinations and rules of its config.
fn start(name: &str, base: u16, body: &str) -> Siplb {
    let cfg = format!("{}{body}", ServerConfig::new(base, "epoll"));
    Siplb::start(name, base, &cfg, UP)
}

/// Starts SIPp on `port` playing `file` from tests/sipp: a UAS, or a UAC
/// towards 127.0.0.1:`target`.
fn sipp(name: &str, file: &str, port: u16, target: Option<u16>, args: &[&str]) -> Sipp {
    Sipp::start(name, &scenarios().join(file), port, target, args)
}

/// REGISTERs a SIPp started with `-trace_counts` in `workdir(name)`
/// received: SIGUSR1 makes it stop, write its counts and exit.
fn registers_received(sipp: &mut Sipp, name: &str) -> u64 {
    sipp.signal(libc::SIGUSR1);
    assert!(sipp.exit(WAIT).is_some(), "SIPp did not stop on SIGUSR1");
    let counts = std::fs::read_dir(sipp.dir())
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("_counts.csv"))
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .unwrap_or_else(|| panic!("no SIPp counts file for {name} in {}", sipp.dir().display()));
    // Header: CurrentTime;ElapsedTime;0_REGISTER_Recv;...; the last line is the final one.
    counts
        .lines()
        .rfind(|l| !l.is_empty())
        .and_then(|l| l.split(';').nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable SIPp counts: {counts}"))
}

/// `[[destinations]]` tables from (id, group, uri, extra key lines).
fn destinations(specs: &[(u32, u32, &str, &str)]) -> String {
    specs
        .iter()
        .map(|(id, group, uri, extra)| destination(*id, *group, uri, extra))
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
    let lb = start("rr", base, &body);
    // Each registrar exits successfully after exactly its share: 10/20/30
    // of 60 (one SIPp socket: one worker, whose round-robin is exact).
    let mut ra = sipp("rr", "uas_register_200.xml", a, None, &["-m", "10"]);
    let mut rb = sipp("rr", "uas_register_200.xml", b, None, &["-m", "20"]);
    let mut rc = sipp("rr", "uas_register_200.xml", c, None, &["-m", "30"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = sipp(
        "rr",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "60", "-r", "100", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.finished(SIPP_LIMIT), "every REGISTER should get its 200");
    assert!(
        ra.finished(SIPP_LIMIT) && rb.finished(SIPP_LIMIT) && rc.finished(SIPP_LIMIT),
        "shares 10/20/30"
    );
    assert_eq!(lb.stat("siplb:failovers"), 0);
    // ds_list shows the set with the weights.
    let ds = lb.rpc("ds_list", json!([]));
    let set = &ds["PARTITIONS"][0]["SETS"][0];
    assert_eq!(set["Destinations"][2]["weight"], 3);
    assert_eq!(set["Destinations"][2]["state"], "Active");
    lb.assert_idle(WAIT, &[]);
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
    let lb = start("hash", base, &body);
    let names = ["hash-a", "hash-b", "hash-c"];
    let mut regs: Vec<Sipp> = names
        .iter()
        .zip(ports)
        .map(|(n, p)| sipp(n, "uas_register_200.xml", p, None, &["-trace_counts"]))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = sipp(
        "hash",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "400", "-r", "200", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.finished(SIPP_LIMIT), "every REGISTER should get its 200");
    let got: Vec<u64> = regs
        .iter_mut()
        .zip(names)
        .map(|(r, n)| registers_received(r, n))
        .collect();
    assert_eq!(got.iter().sum::<u64>(), 400, "{got:?}");
    // Generous bounds: more than 4 standard deviations each.
    assert!((60..=140).contains(&got[0]) && (60..=140).contains(&got[1]), "{got:?}");
    assert!((130..=270).contains(&got[2]), "{got:?}");
    lb.assert_idle(WAIT, &[]);
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
    let lb = start("dsfo", base, &body);
    // Priority order 1, 3, 2: 1 refuses with 503, 3 is set inactive by the
    // operator, so every REGISTER ends on 2.
    let r = lb.rpc("ds_set_state", json!(["i", "1", format!("sip:127.0.0.1:{c}")]));
    assert_eq!(r, "OK");
    let ds = lb.rpc("dispatcher:list", json!({}));
    assert_eq!(ds["PARTITIONS"][0]["SETS"][0]["Destinations"][2]["state"], "Inactive");
    let mut ra = sipp("dsfo", "uas_register_503.xml", a, None, &["-m", "5"]);
    let mut rb = sipp("dsfo", "uas_register_200.xml", b, None, &["-m", "5"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = sipp(
        "dsfo",
        "uac_register.xml",
        base + 15,
        Some(base),
        &["-m", "5", "-r", "10", "-timeout", "30", "-timeout_error"],
    );
    assert!(uac.finished(SIPP_LIMIT), "REGISTERs should succeed on the third choice");
    assert!(ra.finished(SIPP_LIMIT) && rb.finished(SIPP_LIMIT));
    assert_eq!(lb.stat("siplb:failovers"), 5);
    lb.assert_idle(WAIT, &[]);
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
    let lb = start("inbound", base, &body);
    let _up = sipp("inbound", "uas.xml", upstream, None, &[]);
    std::thread::sleep(Duration::from_millis(200));
    let mut uac = sipp(
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
    wait_until(WAIT, "the inbound call counted on destination 9", || lb.load(9) == 1);
    assert_eq!(lb.load(1), 0);
    let d = lb.rpc("dlg_list", json!([]));
    assert_eq!(d["Dialogs"][0]["destination"]["id"], 9);
    assert_eq!(d["Dialogs"][0]["resources"], json!(["pstn"]));
    assert!(uac.finished(SIPP_LIMIT), "the inbound call should complete");
    // Released at the BYE.
    lb.assert_idle(WAIT, &[]);
    assert_eq!(lb.stat("dialog:processed_dialogs"), 1);
}

fn dlg_list_and_dlg_end_release_the_load(base: u16) {
    let mut body = destinations(&[(1, 1, &format!("sip:127.0.0.1:{}", base + 11), "resources = \"pstn=10\"")]);
    body.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let lb = start("dlgend", base, &body);
    let mut uas = sipp("dlgend", "uas.xml", base + 11, None, &["-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    // A call held for a minute: only dlg_end can end it within the test.
    let _uac = sipp(
        "dlgend",
        "uac.xml",
        base + 15,
        Some(base),
        &["-s", "1234", "-m", "1", "-d", "60000"],
    );
    wait_until(WAIT, "a confirmed dialog", || {
        lb.call("dlg_list", json!([]))
            .is_ok_and(|r| r["Dialogs"][0]["state"] == 4)
    });
    let all = lb.rpc("dlg_list", json!([]));
    let dlg = &all["Dialogs"][0];
    assert_eq!(all["Dialogs"].as_array().unwrap().len(), 1);
    let call_id = dlg["callid"].as_str().unwrap().to_string();
    assert_eq!(dlg["destination"]["id"], 1);
    assert_eq!(dlg["resources"], json!(["pstn"]));
    assert!(dlg["caller_tag"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dlg["CALLEES"][0]["callee_tag"].as_str().is_some_and(|t| !t.is_empty()));
    let one = lb.rpc("dlg_list", json!({"callid": call_id}));
    assert_eq!(one["Dialog"]["callid"], call_id.as_str());
    assert_eq!(lb.load(1), 1);
    // dlg_end: OK, the load is released at once, and exactly once.
    assert_eq!(lb.call("dlg_end", json!([call_id])).ok(), Some(json!("OK")));
    assert_eq!(lb.load(1), 0);
    assert_eq!(lb.stat("dialog:active_dialogs"), 0);
    let again = lb.response("dlg_end_dlg", json!({"dialog_id": call_id})).unwrap();
    assert_eq!(again["error"]["code"], 404, "{again}");
    let gone = lb.response("dlg_list", json!([call_id])).unwrap();
    assert_eq!(gone["error"]["code"], 404);
    // The callee got siplb's BYE and answered it: its one call completed.
    assert!(uas.finished(SIPP_LIMIT), "the callee should receive the BYE");
    lb.assert_idle(WAIT, &[]);
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
