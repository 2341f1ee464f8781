//! The `ramp` and `floor` modes end and report.

mod common;

use std::process::Command;

use common::{Uas, BIN};

#[test]
fn ramp_steps_and_reports_the_best_rate() {
    let uas = Uas::start(&["--duration", "20"]);
    let out = Command::new(BIN)
        .args([
            "ramp",
            &format!("127.0.0.1:{}", uas.port),
            "-i",
            "127.0.0.1",
            "--no-pin",
            "--json",
        ])
        .args([
            "--start",
            "100",
            "--step",
            "100",
            "--max-rate",
            "300",
            "--step-secs",
            "0.5",
            "--pause",
            "100",
        ])
        .output()
        .expect("run sipload ramp");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ramp JSON");
    assert_eq!(v["best_rate"].as_f64(), Some(300.0), "{v}");
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    assert!(steps
        .iter()
        .all(|s| s["pass"] == true && s["success_percent"].as_f64() == Some(100.0)));
    let mut uas = uas;
    let _ = uas.child.kill();
    let _ = uas.child.wait();
}

#[test]
fn floor_measures_datagrams() {
    let out = Command::new(BIN)
        .args(["floor", "--seconds", "0.3", "--no-pin", "--json"])
        .output()
        .expect("run sipload floor");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("floor JSON");
    assert!(v["datagrams"].as_u64().unwrap() > 100, "{v}");
    assert!(v["cpu_us_per_datagram"].as_f64().unwrap() > 0.0);
}
