//! `sipscan FILE...`: what does siplb make of these captured messages?
//!
//! Each file holds one raw SIP message, taken as one UDP datagram (RFC 3261
//! §18.3). For each file one JSON line is printed, with the fields siplb
//! uses, or the error that makes siplb reject the message. The exit code is
//! 0 when every file could be read, whatever the verdicts, and 2 otherwise.

use siplb_parser::{scan_datagram, Message};
use std::fmt::Write as _;
use std::io::Write as _;

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() || files.iter().any(|f| f == "-h" || f == "--help") {
        eprintln!("usage: sipscan FILE...\n  prints one JSON line per file describing the SIP message it holds");
        std::process::exit(if files.is_empty() { 2 } else { 0 });
    }
    let mut failed_reads = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for file in &files {
        let line = match std::fs::read(file) {
            Ok(bytes) => describe(file, &bytes),
            Err(e) => {
                failed_reads = true;
                eprintln!("sipscan: {file}: {e}");
                let mut s = String::new();
                let _ = write!(
                    s,
                    "{{\"file\":{},\"ok\":false,\"error\":{}}}",
                    json(file.as_bytes()),
                    json(format!("cannot read: {e}").as_bytes())
                );
                s
            }
        };
        let _ = writeln!(out, "{line}");
    }
    std::process::exit(if failed_reads { 2 } else { 0 });
}

fn describe(file: &str, bytes: &[u8]) -> String {
    let mut s = String::with_capacity(512);
    match scan_datagram(bytes) {
        Ok(m) => {
            let _ = write!(s, "{{\"file\":{},\"ok\":true,", json(file.as_bytes()));
            fields(&mut s, &m);
            s.push('}');
        }
        Err(e) => {
            let _ = write!(
                s,
                "{{\"file\":{},\"ok\":false,\"error\":{}}}",
                json(file.as_bytes()),
                json(e.to_string().as_bytes())
            );
        }
    }
    s
}

fn fields(s: &mut String, m: &Message<'_>) {
    let opt = |v: Option<&[u8]>| v.map_or_else(|| "null".to_string(), json);
    let num = |v: Option<usize>| v.map_or_else(|| "null".to_string(), |n| n.to_string());
    let cseq = m.cseq();
    let _ = write!(
        s,
        "\"kind\":\"{}\",\"method\":{},\"uri\":{},\"status\":{},\"call_id\":{},\"cseq\":{{\"seq\":{},\"method\":{}}},\
         \"from_tag\":{},\"to_tag\":{},\"max_forwards\":{},\"content_length\":{},\"body_len\":{},",
        if m.is_request() { "request" } else { "response" },
        opt(m.method().map(|x| x.as_bytes())),
        opt(m.request_uri()),
        num(m.status().map(usize::from)),
        json(m.call_id()),
        cseq.seq,
        json(cseq.method.as_bytes()),
        opt(m.from_tag()),
        opt(m.to_tag()),
        num(m.max_forwards().map(usize::from)),
        num(m.content_length()),
        m.body().len(),
    );
    s.push_str("\"vias\":[");
    for (i, v) in m.vias().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"transport\":{},\"host\":{},\"port\":{},\"branch\":{}}}",
            json(v.transport_token),
            json(v.host),
            num(v.port.map(usize::from)),
            opt(v.branch)
        );
    }
    s.push_str("],\"routes\":");
    list(s, m.route_values());
    s.push_str(",\"record_routes\":");
    list(s, m.record_route_values());
}

fn list<'a>(s: &mut String, values: impl Iterator<Item = &'a [u8]>) {
    s.push('[');
    for (i, v) in values.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&json(v));
    }
    s.push(']');
}

/// A JSON string for arbitrary bytes (invalid UTF-8 is replaced).
fn json(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
