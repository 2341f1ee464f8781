//! `sipscan` end to end: one JSON line per file, exit 0 when all were read.

use serde_json::Value;
use std::process::Command;

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(files: &[String]) -> (i32, Vec<Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipscan"))
        .args(files)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap(), lines)
}

#[test]
fn describes_requests_responses_and_errors() {
    let files = ["invite.sip", "ringing.sip", "truncated.sip", "garbage.sip"].map(data);
    let (code, lines) = run(&files);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 4);

    let invite = &lines[0];
    assert_eq!(invite["file"], files[0].as_str());
    assert_eq!(invite["ok"], true);
    assert_eq!(invite["kind"], "request");
    assert_eq!(invite["method"], "INVITE");
    assert_eq!(invite["uri"], "sip:bob@biloxi.com");
    assert_eq!(invite["status"], Value::Null);
    assert_eq!(invite["call_id"], "a84b4c76e66710");
    assert_eq!(invite["cseq"]["seq"], 314159);
    assert_eq!(invite["cseq"]["method"], "INVITE");
    assert_eq!(invite["from_tag"], "1928301774");
    assert_eq!(invite["to_tag"], Value::Null);
    assert_eq!(invite["max_forwards"], 70);
    assert_eq!(invite["content_length"], 4);
    // Octets after the announced body are not part of the message.
    assert_eq!(invite["body_len"], 4);
    assert_eq!(invite["vias"][0]["transport"], "UDP");
    assert_eq!(invite["vias"][0]["host"], "pc33.atlanta.com");
    assert_eq!(invite["vias"][0]["port"], Value::Null);
    assert_eq!(invite["vias"][0]["branch"], "z9hG4bKnashds8");
    assert_eq!(invite["routes"], serde_json::json!([]));

    let ringing = &lines[1];
    assert_eq!(ringing["kind"], "response");
    assert_eq!(ringing["status"], 180);
    assert_eq!(ringing["method"], Value::Null);
    assert_eq!(ringing["to_tag"], "tt");
    assert_eq!(ringing["vias"].as_array().unwrap().len(), 2);
    assert_eq!(ringing["vias"][1]["host"], "[2001:db8::1]");
    assert_eq!(ringing["vias"][1]["port"], 5062);
    assert_eq!(ringing["record_routes"], serde_json::json!(["<sip:127.0.0.1:5060;lr>"]));

    assert_eq!(lines[2]["ok"], false);
    assert!(lines[2]["error"].as_str().unwrap().starts_with("truncated message"));
    assert_eq!(lines[3]["ok"], false);
    assert!(lines[3]["error"].as_str().unwrap().starts_with("bad start line"));
}

#[test]
fn unreadable_file_is_reported_and_exits_non_zero() {
    let (code, lines) = run(&[data("invite.sip"), data("does-not-exist.sip")]);
    assert_eq!(code, 2);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[1]["ok"], false);
    assert!(lines[1]["error"].as_str().unwrap().contains("cannot read"));
}
