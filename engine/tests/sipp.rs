//! siplb between real SIPp user agents on loopback.
//!
//! Each test starts the `siplb` binary on its own ports with a generated
//! config, starts SIPp UAS backends and a SIPp UAC (scenario files in
//! `tests/sipp/`, written to follow Record-Route), checks SIPp's exit
//! status, then asks the admin API that every counter is back to zero.
//! Skipped, with a message, when `sipp` (Debian `sip-tester`) is missing.

#[macro_use]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{destination, port, scenarios, sipp_available, workdir, ServerConfig, Siplb, Sipp};

/// How long siplb may take to start.
const UP: Duration = Duration::from_secs(10);
/// How long the loads and dialog gauges may take to go back to zero.
const IDLE: Duration = Duration::from_secs(5);

/// Starts siplb (listen `base`, internal ports base+1.., admin base+9)
/// with backends (port, resources) as destinations 1.. of group 1 and
/// INVITEs to numbers load-balanced on `pstn` with `load_balance` flags.
fn start(io: &str, name: &str, base: u16, dests: &[(u16, &str)], flags: &str) -> Siplb {
    let mut cfg = ServerConfig::new(base, io).to_string();
    for (i, (port, res)) in dests.iter().enumerate() {
        let uri = format!("sip:127.0.0.1:{port}");
        cfg.push_str(&destination(i as u32 + 1, 1, &uri, &format!("resources = \"{res}\"")));
    }
    cfg.push_str(&format!(
        "[[rules]]\nmethod = \"INVITE\"\nruri_user = \"^[0-9]+$\"\n\
         load_balance = {{ group = 1, resources = \"pstn\", flags = \"{flags}\" }}\n\
         [[rules]]\nmethod = \"OPTIONS\"\nreply = {{ code = 200 }}\n\
         [[rules]]\nreply = {{ code = 405 }}\n"
    ));
    Siplb::start(name, base, &cfg, UP)
}

/// Starts a SIPp UAS on `port` with a scenario file from tests/sipp.
fn uas(name: &str, scenario: &str, port: u16) -> Sipp {
    Sipp::start(name, &scenarios().join(scenario), port, None, &[])
}

/// Runs a SIPp UAC to completion (at most 40 s); true when every call
/// succeeded.
fn uac(name: &str, scenario: &Path, target: u16, port: u16, args: &[&str]) -> bool {
    let args = [&["-s", "1234", "-timeout", "30", "-timeout_error"], args].concat();
    Sipp::start(name, scenario, port, Some(target), &args).finished(Duration::from_secs(40))
}

/// A one-request UAC scenario expecting `code` (ACKing it for INVITE).
fn expect_scenario(name: &str, method: &str, max_forwards: u8, code: u16) -> PathBuf {
    let ack = if method == "INVITE" {
        r#"  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"#
    } else {
        ""
    };
    let text = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="expect {code}">
  <send retrans="500">
    <![CDATA[

      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 {method}
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: {max_forwards}
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="{code}"/>
{ack}</scenario>
"#
    );
    let path = workdir(name).join(format!("expect_{method}_{max_forwards}_{code}.xml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn calls_through_siplb_to_two_backends(io: &str, base: u16) {
    let lb = start(io, "basic", base, &[(base + 11, "pstn=32"), (base + 12, "pstn=32")], "");
    let _a = uas("basic", "uas.xml", base + 11);
    let _b = uas("basic", "uas.xml", base + 12);
    std::thread::sleep(Duration::from_millis(200));
    let ok = uac(
        "basic",
        &scenarios().join("uac.xml"),
        base,
        base + 15,
        &["-m", "20", "-r", "20", "-d", "300"],
    );
    assert!(ok, "SIPp UAC reported failed calls");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 20);
    assert_eq!(lb.stat("dialog:failed_dialogs"), 0);
    lb.assert_idle(IDLE, &[]);
}

fn failover_on_503(io: &str, base: u16) {
    // The refusing backend has more room, so it is chosen first.
    let lb = start(
        io,
        "failover",
        base,
        &[(base + 11, "pstn=50"), (base + 12, "pstn=10")],
        "",
    );
    let _a = uas("failover", "uas_503.xml", base + 11);
    let _b = uas("failover", "uas.xml", base + 12);
    std::thread::sleep(Duration::from_millis(200));
    let ok = uac(
        "failover",
        &scenarios().join("uac.xml"),
        base,
        base + 15,
        &["-m", "3", "-r", "5", "-d", "100"],
    );
    assert!(ok, "calls should succeed on the second backend");
    assert_eq!(lb.stat("siplb:failovers"), 3);
    lb.assert_idle(IDLE, &[]);
}

fn failover_when_a_backend_does_not_answer(io: &str, base: u16) {
    // Nothing listens on base+11: the INVITE goes unanswered (ICMP port
    // unreachable comes back), fr_timeout (2 s) raises a 408, and the
    // call moves to the live backend.
    let lb = start(
        io,
        "silent",
        base,
        &[(base + 11, "pstn=50"), (base + 12, "pstn=10")],
        "",
    );
    let _b = uas("silent", "uas.xml", base + 12);
    std::thread::sleep(Duration::from_millis(200));
    let ok = uac(
        "silent",
        &scenarios().join("uac.xml"),
        base,
        base + 15,
        &["-m", "2", "-r", "10", "-d", "100"],
    );
    assert!(ok, "calls should succeed on the live backend");
    assert_eq!(lb.stat("siplb:failovers"), 2);
    assert!(lb.stat("siplb:retransmissions") >= 2);
    lb.assert_idle(IDLE, &[]);
}

fn callee_hangs_up(io: &str, base: u16) {
    // Two backends on two ports: their BYEs reach siplb on 4-tuples that
    // SO_REUSEPORT may hash to the worker that does not own the dialog,
    // which then hands the BYE over.
    let lb = start(
        io,
        "calleebye",
        base,
        &[(base + 11, "pstn=10"), (base + 12, "pstn=10")],
        "",
    );
    let _a = uas("calleebye", "uas_bye.xml", base + 11);
    let _b = uas("calleebye", "uas_bye.xml", base + 12);
    std::thread::sleep(Duration::from_millis(200));
    let ok = uac(
        "calleebye",
        &scenarios().join("uac_callee_bye.xml"),
        base,
        base + 15,
        &["-m", "10", "-r", "20", "-l", "4"],
    );
    assert!(ok, "calls ended by the callee failed");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 10);
    eprintln!("hand-offs between workers: {}", lb.stat("siplb:handoffs"));
    lb.assert_idle(IDLE, &[]);
}

fn cancel_while_ringing(io: &str, base: u16) {
    let lb = start(io, "cancel", base, &[(base + 11, "pstn=5")], "");
    let _a = uas("cancel", "uas_ring.xml", base + 11);
    std::thread::sleep(Duration::from_millis(200));
    let ok = uac(
        "cancel",
        &scenarios().join("uac_cancel.xml"),
        base,
        base + 15,
        &["-m", "2", "-r", "5"],
    );
    assert!(ok, "CANCEL flow failed");
    assert_eq!(lb.stat("dialog:failed_dialogs"), 2);
    lb.assert_idle(IDLE, &[]);
}

fn local_answers(io: &str, base: u16) {
    // pstn=0: every destination is full.
    let lb = start(io, "local", base, &[(base + 11, "pstn=0")], "");
    let cases = [
        ("OPTIONS", 70, 200),
        ("MESSAGE", 70, 405),
        ("INVITE", 70, 503),
        ("INVITE", 0, 483),
    ];
    for (i, (method, mf, code)) in cases.into_iter().enumerate() {
        let sc = expect_scenario("local", method, mf, code);
        let ok = uac("local", &sc, base, base + 15 + i as u16, &["-m", "1"]);
        assert!(ok, "{method} (Max-Forwards {mf}) should get {code}");
    }
    assert_eq!(lb.stat("siplb:full"), 1);
    assert_eq!(lb.stat("siplb:too_many_hops"), 1);
    lb.assert_idle(IDLE, &[]);
}

/// Starts 30 long calls on capacities 10/20/30 and returns the loads seen
/// while they are all up.
fn spread(io: &str, name: &str, base: u16, flags: &str) -> Vec<u64> {
    let lb = start(
        io,
        name,
        base,
        &[(base + 11, "pstn=10"), (base + 12, "pstn=20"), (base + 13, "pstn=30")],
        flags,
    );
    let _a = uas(name, "uas.xml", base + 11);
    let _b = uas(name, "uas.xml", base + 12);
    let _c = uas(name, "uas.xml", base + 13);
    std::thread::sleep(Duration::from_millis(200));
    let scenario = scenarios().join("uac.xml");
    let name2 = name.to_string();
    let caller = std::thread::spawn(move || {
        uac(
            &name2,
            &scenario,
            base,
            base + 15,
            &["-m", "30", "-r", "30", "-d", "4000"],
        )
    });
    // All 30 calls are up between about 1 s and 4 s.
    std::thread::sleep(Duration::from_millis(2500));
    let loads = lb.loads();
    assert!(caller.join().unwrap(), "SIPp UAC reported failed calls");
    lb.assert_idle(IDLE, &[]);
    loads
}

fn distribution_absolute_equalises_free_channels(io: &str, base: u16) {
    // 10 channels left on each.
    assert_eq!(spread(io, "spread-abs", base, ""), vec![0, 10, 20]);
}

fn distribution_relative_is_proportional_to_capacity(io: &str, base: u16) {
    // Flag r: each destination half full.
    assert_eq!(spread(io, "spread-rel", base, "r"), vec![5, 10, 15]);
}

both_io! {
    epoll, io_uring;
    calls_through_siplb_to_two_backends = 21000, if sipp_available();
    failover_on_503 = 21100, if sipp_available();
    failover_when_a_backend_does_not_answer = 21400, if sipp_available();
    callee_hangs_up = 21500, if sipp_available();
    cancel_while_ringing = 21200, if sipp_available();
    local_answers = 21300, if sipp_available();
    distribution_absolute_equalises_free_channels = 21700, if sipp_available();
    distribution_relative_is_proportional_to_capacity = 21800, if sipp_available();
}
