//! sipload uac → sipload uas over loopback, checking counts and failure
//! reasons exactly.

mod common;

use std::time::Duration;

use common::{n, reason, reasons, uac, Uas};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn full_calls_succeed() {
    let uas = Uas::start(&["-m", "400", "--threads", "2"]);
    let (code, r) = uac(uas.port, &["-r", "400", "-m", "400", "-d", "50", "--threads", "2"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(n(&r, "calls_attempted"), 400);
    assert_eq!(n(&r, "calls_succeeded"), 400);
    assert_eq!(n(&r, "calls_failed"), 0);
    for k in ["invite_to_100", "invite_to_180", "invite_to_200", "bye_to_200"] {
        assert_eq!(r["latency_ms"][k]["count"].as_u64(), Some(400), "{k}");
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(r["latency_ms"][k][p].as_f64().is_some(), "{k}.{p}");
        }
    }
    assert!(r["achieved_cps"].as_f64().unwrap() > 300.0, "{r}");
    assert!(r["target_rate"].as_f64().unwrap() == 400.0);
    assert!(r["duration_s"].as_f64().unwrap() > 0.9);
    let s = uas.finish(LIMIT);
    assert_eq!((n(&s, "calls_succeeded"), n(&s, "calls_failed")), (400, 0), "{s}");
}

#[test]
fn busy_486_counted_by_reason() {
    let uas = Uas::start(&["-m", "100", "--fail-ratio", "0.1", "--fail-code", "486"]);
    let (code, r) = uac(uas.port, &["-r", "200", "-m", "100"]);
    assert_eq!(code, 1, "a failed call makes the exit code 1");
    assert_eq!((n(&r, "calls_succeeded"), n(&r, "calls_failed")), (90, 10), "{r}");
    assert_eq!(reason(&r, "unexpected_code_486"), 10);
    assert_eq!(reasons(&r), 1);
    let s = uas.finish(LIMIT);
    assert_eq!(
        (n(&s, "calls_succeeded"), n(&s, "calls_rejected"), n(&s, "calls_failed")),
        (100, 10, 0)
    );
}

#[test]
fn unavailable_503_for_every_call() {
    let uas = Uas::start(&["-m", "50", "--answer-code", "503"]);
    let (code, r) = uac(uas.port, &["-r", "100", "-m", "50"]);
    assert_eq!(code, 1);
    assert_eq!((n(&r, "calls_succeeded"), n(&r, "calls_failed")), (0, 50), "{r}");
    assert_eq!(reason(&r, "unexpected_code_503"), 50);
    assert_eq!(reasons(&r), 1);
    let s = uas.finish(LIMIT);
    assert_eq!(n(&s, "calls_failed"), 0, "{s}");
}

#[test]
fn no_answer_times_out() {
    let uas = Uas::start(&["-m", "20", "--no-answer"]);
    let (code, r) = uac(uas.port, &["-r", "100", "-m", "20", "--timeout", "400"]);
    assert_eq!(code, 1);
    assert_eq!((n(&r, "calls_succeeded"), n(&r, "calls_failed")), (0, 20), "{r}");
    assert_eq!(reason(&r, "timeout"), 20);
    assert_eq!(reasons(&r), 1);
    assert_eq!(r["latency_ms"]["invite_to_180"]["count"].as_u64(), Some(20));
    // The UAC cancels timed-out calls: the UAS sees them cancelled.
    let s = uas.finish(LIMIT);
    assert_eq!((n(&s, "calls_cancelled"), n(&s, "calls_failed")), (20, 0), "{s}");
}

#[test]
fn cancel_during_ringing() {
    let uas = Uas::start(&["-m", "40", "--ring-delay", "300"]);
    let (code, r) = uac(
        uas.port,
        &[
            "-r",
            "200",
            "-m",
            "40",
            "--cancel-ratio",
            "0.25",
            "--cancel-after",
            "20",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (
            n(&r, "calls_succeeded"),
            n(&r, "calls_cancelled"),
            n(&r, "calls_failed")
        ),
        (40, 10, 0)
    );
    assert_eq!(r["latency_ms"]["invite_to_200"]["count"].as_u64(), Some(30));
    let s = uas.finish(LIMIT);
    assert_eq!(
        (
            n(&s, "calls_succeeded"),
            n(&s, "calls_cancelled"),
            n(&s, "calls_failed")
        ),
        (40, 10, 0)
    );
}

#[test]
fn callee_hangs_up() {
    let uas = Uas::start(&["-m", "30", "--bye-after", "50"]);
    let (code, r) = uac(uas.port, &["-r", "100", "-m", "30", "-d", "20000"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!((n(&r, "calls_succeeded"), n(&r, "calls_failed")), (30, 0));
    assert!(
        r["duration_s"].as_f64().unwrap() < 10.0,
        "the UAC did not wait for its own hold"
    );
    let s = uas.finish(LIMIT);
    assert_eq!((n(&s, "calls_succeeded"), n(&s, "calls_failed")), (30, 0), "{s}");
    assert_eq!(s["latency_ms"]["bye_to_200"]["count"].as_u64(), Some(30));
}

#[test]
fn trace_stat_and_html_report_are_written() {
    let dir = std::env::temp_dir().join(format!("sipload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("trace.csv");
    let html = dir.join("report.html");
    let uas = Uas::start(&["-m", "150"]);
    let (code, r) = uac(
        uas.port,
        &[
            "-r",
            "100",
            "-m",
            "150",
            "--period",
            "0.5",
            "--trace-stat",
            csv.to_str().unwrap(),
            "--report",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{r}");
    uas.finish(LIMIT);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(';').collect();
    assert_eq!(header[0], "StartTime");
    assert!(header.contains(&"SuccessfulCall(C)"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(';').collect()).collect();
    assert!(rows.len() >= 2, "{text}");
    let last = rows.last().unwrap();
    assert_eq!(last.len(), header.len());
    let col = header.iter().position(|c| *c == "OutgoingCall(C)").unwrap();
    assert_eq!(last[col], "150");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("INVITE"));
    std::fs::remove_dir_all(&dir).ok();
}
