//! The runtime on real loopback sockets, without SIPp: two workers, a
//! hand-written caller and backend. The backend hangs up each call from a
//! fresh source port, so SO_REUSEPORT delivers some BYEs to the worker that
//! does not own the dialog, which must hand them over.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use siplb::config::Config;
use siplb::runtime::Runtime;
use siplb_parser::scan_datagram;

fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).expect("datagram expected");
    buf.truncate(n);
    (buf, from)
}

/// Receives until a message satisfying `want` arrives.
fn recv_until(s: &UdpSocket, want: impl Fn(&str) -> bool) -> (String, SocketAddr) {
    loop {
        let (b, from) = recv(s);
        let t = String::from_utf8_lossy(&b).into_owned();
        if want(&t) {
            return (t, from);
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}

/// A response to `req` with every Via and Record-Route, plus a To tag.
fn respond(req: &str, code: u16, tag: &str, contact: SocketAddr) -> String {
    let mut r = format!("SIP/2.0 {code} X\r\n");
    for v in header(req, "Via") {
        r.push_str(&format!("Via: {v}\r\n"));
    }
    for v in header(req, "Record-Route") {
        r.push_str(&format!("Record-Route: {v}\r\n"));
    }
    let to = header(req, "To")[0];
    let to = if to.contains("tag=") {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    r.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:b@{contact}>\r\nContent-Length: 0\r\n\r\n",
        header(req, "From")[0],
        header(req, "Call-ID")[0],
        header(req, "CSeq")[0]
    ));
    r
}

#[test]
fn callee_byes_reach_the_owner_worker_epoll() {
    callee_byes_reach_the_owner_worker("epoll", 21600, "socket");
}

#[test]
fn callee_byes_reach_the_owner_worker_io_uring() {
    callee_byes_reach_the_owner_worker("io_uring", 21620, "socket");
}

#[test]
fn calls_of_one_source_spread_by_call_id() {
    // One caller socket: with ownership = "call-id" its INVITEs are
    // handed to the worker their Call-ID hashes to, and everything about
    // each call still meets there.
    callee_byes_reach_the_owner_worker("epoll", 21640, "call-id");
}

/// A test's base port, shifted by `SIPLB_TEST_PORT_OFFSET` (see tests/sipp.rs).
fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn callee_byes_reach_the_owner_worker(io: &str, base: u16, ownership: &str) {
    let base = port(base);
    let backend = UdpSocket::bind(("127.0.0.1", base + 11)).unwrap();
    backend.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:{base}\"]\nworkers = 2\npin_cores = false\ninternal_port_base = {}\nio = \"{io}\"\nownership = \"{ownership}\"\n\
         [admin]\nenabled = false\n\
         [[destinations]]\nid = 1\ngroup = 1\nuri = \"sip:127.0.0.1:{}\"\nresources = \"pstn=100\"\n\
         [[rules]]\nmethod = \"INVITE\"\nload_balance = {{ group = 1, resources = \"pstn\" }}\n",
        base + 1,
        base + 11
    );
    let cfg = Arc::new(Config::parse(&cfg).unwrap());
    let rt = Runtime::start(cfg).unwrap();
    match (io, siplb::runtime::uring::available()) {
        ("io_uring", Ok(())) => assert_eq!(rt.io(), "io_uring"),
        ("io_uring", Err(e)) => eprintln!("io_uring unavailable here ({e}); the epoll fallback is tested"),
        _ => assert_eq!(rt.io(), "epoll"),
    }
    let caller = sock();
    let caller_addr = caller.local_addr().unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let calls = 12;
    for i in 0..calls {
        let invite = format!(
            "INVITE sip:100{i}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {caller_addr};branch=z9hG4bKc{i};rport\r\n\
             From: <sip:a@{caller_addr}>;tag=fa{i}\r\nTo: <sip:100{i}@127.0.0.1>\r\nCall-ID: rt{i}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:a@{caller_addr}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        caller.send_to(invite.as_bytes(), proxy).unwrap();
        let (inv, from) = recv_until(&backend, |t| t.starts_with("INVITE"));
        assert!(scan_datagram(inv.as_bytes()).is_ok());
        backend
            .send_to(
                respond(&inv, 200, &format!("tb{i}"), backend.local_addr().unwrap()).as_bytes(),
                from,
            )
            .unwrap();
        let (ok, _) = recv_until(&caller, |t| t.starts_with("SIP/2.0 200"));
        assert_eq!(header(&ok, "Record-Route").len(), 1);
        // The backend hangs up from a new port each time.
        let route = header(&ok, "Record-Route")[0].to_string();
        let hangup = sock();
        let ha = hangup.local_addr().unwrap();
        let bye = format!(
            "BYE sip:a@{caller_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {ha};branch=z9hG4bKb{i};rport\r\nRoute: {route}\r\n\
             From: <sip:100{i}@127.0.0.1>;tag=tb{i}\r\nTo: <sip:a@{caller_addr}>;tag=fa{i}\r\nCall-ID: rt{i}\r\n\
             CSeq: 7 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        hangup.send_to(bye.as_bytes(), proxy).unwrap();
        let (bye_in, from) = recv_until(&caller, |t| t.starts_with("BYE"));
        caller
            .send_to(respond(&bye_in, 200, "x", caller_addr).as_bytes(), from)
            .unwrap();
        let (done, _) = recv_until(&hangup, |t| t.starts_with("SIP/2.0"));
        assert!(done.starts_with("SIP/2.0 200"), "{done}");
    }
    let stats = rt.statistics();
    let stat = |n: &str| stats.iter().find(|s| s.0 == n).unwrap().1;
    assert_eq!(stat("processed_dialogs"), calls);
    assert_eq!(stat("active_dialogs"), 0);
    assert!(stat("handoffs") > 0, "no BYE was handed over in {calls} tries");
    if ownership == "call-id" {
        let per_worker: Vec<u64> = rt
            .stats
            .iter()
            .map(|s| s.processed_dialogs.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert!(per_worker.iter().all(|&n| n > 0), "calls not spread: {per_worker:?}");
    }
    assert_eq!(rt.table.total_load(), 0);
    rt.stop();
}
