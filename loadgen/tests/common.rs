//! Helpers shared by the integration tests: run the `sipload` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sipload");

/// A running `sipload uas` and the port it bound.
pub struct Uas {
    pub child: Child,
    pub port: u16,
}

impl Uas {
    /// Starts `sipload uas -p 0 -i 127.0.0.1 --json ARGS` and waits for
    /// its "listening on" line.
    pub fn start(args: &[&str]) -> Uas {
        let mut child = Command::new(BIN)
            .args(["uas", "-p", "0", "-i", "127.0.0.1", "--json", "--no-pin"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipload uas");
        let stderr = child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).expect("read uas banner");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Uas { child, port }
    }

    /// Waits (at most `limit`) for the UAS to exit and returns its JSON.
    pub fn finish(mut self, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(_status) = self.child.try_wait().expect("wait uas") {
                break;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("sipload uas did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.wait_with_output().expect("uas output");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("uas JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Runs `sipload uac 127.0.0.1:PORT --json ARGS`; returns (exit code, JSON).
pub fn uac(port: u16, args: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN)
        .args([
            "uac",
            &format!("127.0.0.1:{port}"),
            "-i",
            "127.0.0.1",
            "--json",
            "--no-pin",
        ])
        .args(args)
        .output()
        .expect("run sipload uac");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "uac JSON: {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// A UDP port that was free a moment ago.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

pub fn reason(v: &Value, key: &str) -> u64 {
    v["failures_by_reason"][key].as_u64().unwrap_or(0)
}

pub fn reasons(v: &Value) -> usize {
    v["failures_by_reason"].as_object().map_or(0, |o| o.len())
}
