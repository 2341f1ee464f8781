//! Interop with real SIPp (Debian `sip-tester`): SIPp's built-in `-sn uac`
//! against `sipload uas`, and `sipload uac` against SIPp's `-sn uas`.
//! Skipped, with a message, when `sipp` is not installed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, n, uac, Uas};

const CALLS: &str = "3000";

fn sipp_available() -> bool {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("SKIPPED: sipp (Debian package sip-tester) is not installed");
    }
    found
}

/// Waits for SIPp at most `limit`, then kills it; returns its status
/// (`None` if it had to be killed).
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn sipp_uac_against_sipload_uas() {
    if !sipp_available() {
        return;
    }
    let uas = Uas::start(&["-m", CALLS, "--threads", "2"]);
    let dir = std::env::temp_dir().join(format!("sipload-sipp-uac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sipp = Command::new("sipp")
        .current_dir(&dir)
        .args(["-sn", "uac", &format!("127.0.0.1:{}", uas.port)])
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .args(["-r", "1000", "-m", CALLS, "-timeout", "60s", "-nostdin", "-nd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sipp");
    let status = wait_bounded(&mut sipp, Duration::from_secs(90));
    std::fs::remove_dir_all(&dir).ok();
    let status = status.expect("SIPp did not finish within 90 s");
    assert_eq!(status.code(), Some(0), "SIPp reported failed calls");
    let s = uas.finish(Duration::from_secs(30));
    assert_eq!(n(&s, "calls_attempted"), 3000, "{s}");
    assert_eq!((n(&s, "calls_succeeded"), n(&s, "calls_failed")), (3000, 0), "{s}");
}

#[test]
fn sipload_uac_against_sipp_uas() {
    if !sipp_available() {
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sipload-sipp-uas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sipp = Command::new("sipp")
        .current_dir(&dir)
        .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", CALLS, "-timeout", "60s", "-nostdin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    std::thread::sleep(Duration::from_millis(300));
    let (code, r) = uac(
        port,
        &["-r", "1000", "-m", CALLS, "--threads", "2", "--timeout", "10000"],
    );
    wait_bounded(&mut sipp, Duration::from_secs(10));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "{r}");
    assert_eq!((n(&r, "calls_succeeded"), n(&r, "calls_failed")), (3000, 0), "{r}");
}
