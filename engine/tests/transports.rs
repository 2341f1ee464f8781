//! siplb over TCP and TLS, on both I/O paths.
//!
//! - SIPp over TCP (`-t t1`: one connection, `-t tn`: one per call) as
//!   caller and as backend, with UDP on the other side (bridging) or TCP.
//! - TLS: Debian's SIPp is built without OpenSSL (`-t l1` says "you must
//!   compile SIPp with OpenSSL"), so a small rustls user agent in this file
//!   plays caller or backend over TLS, with a certificate made at test time
//!   (rcgen), against SIPp over UDP on the other side.
//! - Raw sockets: a message sent in many small pieces, keep-alive ping and
//!   pong, a missing Content-Length, a slow sender, many connections that
//!   send nothing (per-address limit, idle timeout).
//!
//! Every test ends with every load, dialog and connection gauge at zero.
//! Skipped (with a message) when `sipp` is missing, except the raw-socket
//! tests, which need nothing else.

#[macro_use]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use harness::{destination, port, scenarios, sipp_available, wait_until, workdir, ServerConfig, Siplb, Sipp};
use serde_json::json;

/// How long siplb may take to start and a statistic to reach its value.
const WAIT: Duration = Duration::from_secs(10);
/// The gauges [`idle`] checks besides loads and dialogs.
const CONNECTIONS: &[&str] = &["siplb:tcp_connections"];

/// Writes a test CA (`ca.pem`), a certificate for 127.0.0.1 signed by
/// it (`cert.pem`, the one siplb and the TLS peers present) and its key
/// (`key.pem`) into `dir`.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "siplb test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Starts siplb: UDP and TCP on `base`, TLS on base+2 (with a certificate
/// from [`make_cert`]), internal ports base+3.., admin base+9; `dests`
/// (URIs) are destinations 1.. of group 1 with `pstn=50`; `extra` is
/// appended to the `[tls]` table.
fn start(io: &str, name: &str, base: u16, dests: &[String], extra: &str) -> Siplb {
    let dir = workdir(name);
    let (cert, key) = make_cert(&dir);
    let server = ServerConfig {
        listen: vec![
            format!("127.0.0.1:{base}"),
            format!("tcp:127.0.0.1:{base}"),
            format!("tls:127.0.0.1:{}", base + 2),
        ],
        internal_port_base: base + 3,
        ..ServerConfig::new(base, io)
    };
    let mut cfg = format!(
        "{server}[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{extra}\n",
        cert.display(),
        key.display(),
    );
    for (i, uri) in dests.iter().enumerate() {
        cfg.push_str(&destination(i as u32 + 1, 1, uri, "resources = \"pstn=50\""));
    }
    cfg.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nruri_user = \"^[0-9]+$\"\n\
         load_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nmethod = \"OPTIONS\"\nreply = { code = 200 }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    Siplb::start(name, base, &cfg, WAIT)
}

/// A SIPp UAS on `port` over `transport` (`u1`, `t1`).
fn uas(name: &str, scenario: &str, port: u16, transport: &str) -> Sipp {
    Sipp::start(name, &scenarios().join(scenario), port, None, &["-t", transport])
}

/// Runs a SIPp UAC playing `scenario` to completion (at most 40 s) over
/// `transport`; true when every call succeeded.
fn uac(name: &str, scenario: &str, target: u16, port: u16, transport: &str, args: &[&str]) -> bool {
    let args = [
        &["-t", transport, "-s", "1234", "-timeout", "30", "-timeout_error"],
        args,
    ]
    .concat();
    Sipp::start(name, &scenarios().join(scenario), port, Some(target), &args).finished(Duration::from_secs(40))
}

fn udp_dest(port: u16) -> String {
    format!("sip:127.0.0.1:{port}")
}

fn tcp_dest(port: u16) -> String {
    format!("sip:127.0.0.1:{port};transport=tcp")
}

// ---- SIPp over TCP ---------------------------------------------------------

fn tcp_caller_udp_backends(io: &str, base: u16) {
    let name = "tcp-udp";
    let lb = start(io, name, base, &[udp_dest(base + 11), udp_dest(base + 12)], "");
    let a = uas(name, "uas.xml", base + 11, "u1");
    let b = uas(name, "uas.xml", base + 12, "u1");
    std::thread::sleep(Duration::from_millis(200));
    let args = ["-m", "10", "-r", "20", "-d", "200"];
    let ok = uac(name, "uac.xml", base, base + 15, "t1", &args);
    assert!(ok, "SIPp UAC over TCP reported failed calls");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 10);
    assert_eq!(lb.stat("dialog:failed_dialogs"), 0);
    assert!(lb.stat("siplb:tcp_accepted") >= 1);
    drop((a, b));
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn udp_caller_tcp_backends(io: &str, base: u16) {
    let name = "udp-tcp";
    let lb = start(io, name, base, &[tcp_dest(base + 11), tcp_dest(base + 12)], "");
    let a = uas(name, "uas.xml", base + 11, "t1");
    let b = uas(name, "uas.xml", base + 12, "t1");
    std::thread::sleep(Duration::from_millis(200));
    let args = ["-m", "10", "-r", "20", "-d", "200"];
    let ok = uac(name, "uac.xml", base, base + 15, "u1", &args);
    assert!(ok, "calls to SIPp backends over TCP failed");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 10);
    // Connections to the backends are reused: at most one per worker each.
    let opened = lb.stat("siplb:tcp_connected");
    assert!((1..=4).contains(&opened), "{opened} connections opened for 10 calls");
    drop((a, b));
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn tcp_per_call_both_sides(io: &str, base: u16) {
    let name = "tcp-tcp";
    let lb = start(io, name, base, &[tcp_dest(base + 11)], "");
    let a = uas(name, "uas.xml", base + 11, "t1");
    std::thread::sleep(Duration::from_millis(200));
    let args = ["-m", "10", "-r", "20", "-d", "200", "-max_socket", "100"];
    let ok = uac(name, "uac.xml", base, base + 15, "tn", &args);
    assert!(ok, "SIPp UAC with one TCP connection per call failed");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 10);
    assert!(lb.stat("siplb:tcp_accepted") >= 10);
    drop(a);
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn callee_hangs_up_towards_a_tcp_caller(io: &str, base: u16) {
    let name = "tcp-callee-bye";
    let lb = start(io, name, base, &[udp_dest(base + 11)], "");
    let a = uas(name, "uas_bye.xml", base + 11, "u1");
    std::thread::sleep(Duration::from_millis(200));
    let args = ["-m", "3", "-r", "5", "-l", "2"];
    let ok = uac(name, "uac_callee_bye.xml", base, base + 15, "t1", &args);
    assert!(ok, "calls ended by the UDP callee towards a TCP caller failed");
    assert_eq!(lb.stat("dialog:processed_dialogs"), 3);
    drop(a);
    lb.assert_idle(WAIT, CONNECTIONS);
}

both_io! {
    epoll, io_uring;
    tcp_caller_udp_backends = 18000, if sipp_available();
    udp_caller_tcp_backends = 18100, if sipp_available();
    tcp_per_call_both_sides = 18200, if sipp_available();
    callee_hangs_up_towards_a_tcp_caller = 18420, if sipp_available();
    dlg_end_hangs_up_a_tcp_caller_and_a_udp_backend = 18020, if sipp_available();
}

// ---- raw sockets -----------------------------------------------------------

const OPTIONS: &str = "OPTIONS sip:siplb@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-piece-1;rport\r\n\
From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:siplb@127.0.0.1>\r\n\
Call-ID: pieces-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

/// Reads one SIP message (headers and Content-Length body) or nothing
/// (the connection closed); `None` on a read timeout.
fn read_message(c: &mut TcpStream) -> Option<String> {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    read_sip(c)
}

/// Reads one SIP message from a stream, skipping keep-alive line breaks;
/// an empty string when the stream ended, `None` on an error.
fn read_sip(c: &mut impl Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(0) => return Some(String::new()),
            Ok(_) if buf.is_empty() && (byte[0] == b'\r' || byte[0] == b'\n') => {}
            Ok(_) => buf.push(byte[0]),
            Err(_) => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:").or_else(|| l.strip_prefix("l:")))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// True when the peer closes the connection (within the read timeout).
fn closed_by_peer(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn message_in_pieces_and_keepalives(io: &str, base: u16) {
    let lb = start(io, "pieces", base, &[udp_dest(base + 11)], "");
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.set_nodelay(true).unwrap();
    // A ping first, then the request 3 bytes at a time.
    c.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    for piece in OPTIONS.as_bytes().chunks(3) {
        c.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let reply = read_message(&mut c).expect("a reply");
    assert!(reply.starts_with("SIP/2.0 200 "), "{reply}");
    assert!(reply.contains("received=127.0.0.1"), "{reply}");
    // Two messages in one write are two messages.
    let two = format!("{OPTIONS}{}", OPTIONS.replace("piece-1", "piece-2"));
    c.write_all(two.as_bytes()).unwrap();
    assert!(read_message(&mut c).unwrap().starts_with("SIP/2.0 200 "));
    assert!(read_message(&mut c).unwrap().starts_with("SIP/2.0 200 "));
    assert_eq!(lb.stat("siplb:tcp_keepalive_pings"), 1);
    assert_eq!(lb.stat("siplb:rx_requests"), 3);
    drop(c);
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn framing_errors_close_the_connection(io: &str, base: u16) {
    let lb = start(
        io,
        "framing",
        base,
        &[udp_dest(base + 11)],
        "[tcp]\nmessage_timeout = \"1s\"\n",
    );
    // No Content-Length on a stream.
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.write_all(OPTIONS.replace("Content-Length: 0\r\n", "").as_bytes())
        .unwrap();
    assert!(
        closed_by_peer(&mut c),
        "a message without Content-Length must close the connection"
    );
    // A bad one.
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.write_all(OPTIONS.replace("Content-Length: 0", "Content-Length: x").as_bytes())
        .unwrap();
    assert!(closed_by_peer(&mut c), "a bad Content-Length must close the connection");
    lb.wait_stat("siplb:tcp_framing_errors", 2, WAIT);
    // A slow sender: half a message, then nothing.
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.write_all(&OPTIONS.as_bytes()[..40]).unwrap();
    assert!(closed_by_peer(&mut c), "a slow sender must be cut off");
    lb.wait_stat("siplb:tcp_slow_closed", 1, WAIT);
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn many_silent_connections(io: &str, base: u16) {
    let lb = start(
        io,
        "silent",
        base,
        &[udp_dest(base + 11)],
        "[tcp]\nmax_connections_per_ip = 8\nidle_timeout = \"1s\"\n",
    );
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", base)).unwrap())
        .collect();
    // Past the limit, connections are accepted and closed at once.
    lb.wait_stat("siplb:tcp_refused_per_ip_limit", 12, WAIT);
    assert_eq!(lb.stat("siplb:tcp_accepted"), 8);
    // The silent ones are closed when idle.
    let closed = conns.iter_mut().map(closed_by_peer).filter(|&c| c).count();
    assert_eq!(closed, 20);
    lb.wait_stat("siplb:tcp_idle_closed", 8, WAIT);
    // Room again: a new connection works.
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.write_all(OPTIONS.as_bytes()).unwrap();
    assert!(read_message(&mut c).unwrap().starts_with("SIP/2.0 200 "));
    drop(c);
    lb.assert_idle(WAIT, CONNECTIONS);
}

/// The test caller's side of one call over a stream transport (alice
/// calling 1234): what its requests carry.
struct Caller {
    /// `TCP` or `TLS`, as the Via says it.
    transport: &'static str,
    /// The Via's sent-by and the Contact's host and port.
    sent_by: String,
    call_id: String,
    from_tag: String,
}

impl Caller {
    /// A request's start line and headers up to (not including)
    /// Content-Length: Via, From, To (`to_tag`: `;tag=...` or empty),
    /// Call-ID, CSeq, Max-Forwards, Contact and a Route per `routes`.
    fn head(&self, method: &str, uri: &str, branch: &str, cseq: u32, to_tag: &str, routes: &[String]) -> String {
        let (transport, sent_by) = (self.transport, &self.sent_by);
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {sent_by};branch=z9hG4bK-{branch};rport\r\n\
             From: <sip:alice@127.0.0.1>;tag={}\r\nTo: <sip:1234@127.0.0.1>{to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
             Contact: <sip:alice@{sent_by};transport={}>\r\n",
            self.from_tag,
            self.call_id,
            transport.to_ascii_lowercase(),
        );
        for r in routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        m
    }

    /// A request without a body (see [`Caller::head`]).
    fn request(&self, method: &str, uri: &str, branch: &str, cseq: u32, to_tag: &str, routes: &[String]) -> String {
        self.head(method, uri, branch, cseq, to_tag, routes) + "Content-Length: 0\r\n\r\n"
    }
}

/// What the caller needs from the 200 to its INVITE for the requests
/// that follow: the remote target (Contact), the To tag and the route
/// set (the Record-Route values, reversed).
struct Answer {
    target: String,
    to_tag: String,
    routes: Vec<String>,
}

impl Answer {
    fn of(ok: &str) -> Answer {
        let contact = header_values(ok, "Contact")[0].clone();
        Answer {
            target: contact.trim_start_matches('<').trim_end_matches('>').to_string(),
            to_tag: format!(";tag={}", tag_of(ok, "To")),
            routes: header_values(ok, "Record-Route").into_iter().rev().collect(),
        }
    }
}

/// Reads the responses to an INVITE, provisional ones skipped, up to its
/// 200 (any other response fails the test).
fn read_200(c: &mut impl Read) -> String {
    loop {
        let r = read_sip(c).expect("a response to the INVITE");
        assert!(r.starts_with("SIP/2.0 1") || r.starts_with("SIP/2.0 200 "), "{r}");
        if r.starts_with("SIP/2.0 200 ") {
            return r;
        }
    }
}

/// Every `name:` header line of a message, each with its CRLF, in order.
fn header_lines(msg: &str, name: &str) -> String {
    msg.lines()
        .filter(|l| l.split(':').next().is_some_and(|n| n.trim().eq_ignore_ascii_case(name)))
        .map(|l| format!("{l}\r\n"))
        .collect()
}

/// A 200 to `request` (Via, From, To, Call-ID and CSeq copied).
fn ok_to(request: &str) -> String {
    let copied: String = ["Via", "From", "To", "Call-ID", "CSeq"]
        .iter()
        .map(|h| header_lines(request, h))
        .collect();
    format!("SIP/2.0 200 OK\r\n{copied}Content-Length: 0\r\n\r\n")
}

/// RFC 3261 §18.2.2: the caller's connection closes right after its
/// INVITE; siplb sends the responses on a new connection to the Via's
/// sent-by port, and the call goes on over that one.
fn responses_follow_the_via_when_the_connection_is_gone(io: &str, base: u16) {
    let name = "fallback";
    let lb = start(io, name, base, &[udp_dest(base + 11)], "");
    let _a = uas(name, "uas.xml", base + 11, "u1");
    std::thread::sleep(Duration::from_millis(200));
    let me = std::net::TcpListener::bind(("127.0.0.1", base + 16)).unwrap();
    let alice = Caller {
        transport: "TCP",
        sent_by: format!("127.0.0.1:{}", base + 16),
        call_id: "fallback-1@127.0.0.1".into(),
        from_tag: "fb".into(),
    };
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    let invite = alice.request("INVITE", &format!("sip:1234@127.0.0.1:{base}"), "fb1", 1, "", &[]);
    c.write_all(invite.as_bytes()).unwrap();
    drop(c);
    let (mut back, _) = me.accept().unwrap();
    back.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ok = loop {
        let r = read_sip(&mut back).expect("responses on the new connection");
        assert!(r.starts_with("SIP/2.0 "), "{r}");
        if r.starts_with("SIP/2.0 200 ") {
            break r;
        }
    };
    let callee = Answer::of(&ok);
    let (target, to_tag, routes) = (&callee.target, &callee.to_tag, &callee.routes);
    back.write_all(alice.request("ACK", target, "fb2", 1, to_tag, routes).as_bytes())
        .unwrap();
    back.write_all(alice.request("BYE", target, "fb3", 2, to_tag, routes).as_bytes())
        .unwrap();
    let r = read_sip(&mut back).expect("a response to the BYE");
    assert!(r.starts_with("SIP/2.0 200 ") && r.contains("BYE"), "{r}");
    assert!(lb.stat("siplb:tcp_send_fallbacks") >= 1);
    assert_eq!(lb.stat("dialog:processed_dialogs"), 1);
    drop(back);
    lb.assert_idle(WAIT, CONNECTIONS);
}

/// `dlg_end` on a confirmed bridged call (the caller on TCP, the backend
/// on UDP: two Record-Route entries): siplb sends a BYE to each side,
/// the caller's over the caller's own TCP connection (it listens on no
/// other port), the backend's over UDP; both answer 200, and every load,
/// dialog and connection gauge goes back to zero.
fn dlg_end_hangs_up_a_tcp_caller_and_a_udp_backend(io: &str, base: u16) {
    let name = "dlg-end-bridged";
    let lb = start(io, name, base, &[udp_dest(base + 11)], "");
    // One call: the UAS exits once it has answered siplb's BYE.
    let uas_args = ["-t", "u1", "-m", "1"];
    let mut backend = Sipp::start(name, &scenarios().join("uas.xml"), base + 11, None, &uas_args);
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(("127.0.0.1", base)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let alice = Caller {
        transport: "TCP",
        sent_by: c.local_addr().unwrap().to_string(),
        call_id: "dlg-end-bridged@127.0.0.1".into(),
        from_tag: "de".into(),
    };
    let invite = alice.request("INVITE", &format!("sip:1234@127.0.0.1:{base}"), "de1", 1, "", &[]);
    c.write_all(invite.as_bytes()).unwrap();
    let ok = read_200(&mut c);
    let rr = header_values(&ok, "Record-Route");
    assert_eq!(rr.len(), 2, "a bridged call is record-routed twice: {rr:?}");
    assert!(rr[1].contains("transport=tcp"), "the caller's side is TCP: {rr:?}");
    let callee = Answer::of(&ok);
    let ack = alice.request("ACK", &callee.target, "de2", 1, &callee.to_tag, &callee.routes);
    c.write_all(ack.as_bytes()).unwrap();
    wait_until(WAIT, "a confirmed dialog", || {
        lb.call("dlg_list", json!([]))
            .is_ok_and(|r| r["Dialogs"][0]["state"] == 4)
    });
    assert_eq!(lb.load(1), 1);
    assert_eq!(lb.stat("dialog:active_dialogs"), 1);

    assert_eq!(lb.call("dlg_end", json!([alice.call_id])).ok(), Some(json!("OK")));
    // The caller's BYE: on the caller's connection, to its Contact, in
    // the callee's name (From and To swapped).
    let bye = read_sip(&mut c).expect("siplb's BYE to the caller on its TCP connection");
    let contact = format!("BYE sip:alice@{};transport=tcp SIP/2.0", alice.sent_by);
    assert!(bye.starts_with(&contact), "{bye}");
    assert!(header_lines(&bye, "Via").starts_with("Via: SIP/2.0/TCP "), "{bye}");
    assert!(header_lines(&bye, "Call-ID").contains(&alice.call_id), "{bye}");
    assert_eq!(tag_of(&bye, "To"), alice.from_tag, "{bye}");
    assert_eq!(format!(";tag={}", tag_of(&bye, "From")), callee.to_tag, "{bye}");
    c.write_all(ok_to(&bye).as_bytes()).unwrap();
    // The backend's BYE: SIPp (UDP only) answered it and ended its call.
    assert!(
        backend.finished(Duration::from_secs(20)),
        "the UDP backend should get siplb's BYE"
    );
    drop(c);
    lb.assert_idle(WAIT, CONNECTIONS);
}

mod fallback {
    #[test]
    fn epoll() {
        if super::sipp_available() {
            super::responses_follow_the_via_when_the_connection_is_gone("epoll", super::port(18900));
        }
    }

    #[test]
    fn io_uring() {
        if super::sipp_available() {
            super::responses_follow_the_via_when_the_connection_is_gone("io_uring", super::port(18920));
        }
    }
}

both_io! {
    raw_epoll, raw_io_uring;
    message_in_pieces_and_keepalives = 18500;
    framing_errors_close_the_connection = 18600;
    many_silent_connections = 18700;
}

// ---- TLS with a rustls user agent -------------------------------------------

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn pem_key(path: &Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).unwrap()
}

/// A TLS connection to siplb that verifies its certificate against the
/// test CA; with `client_cert`, presents the test certificate.
fn tls_connect(dir: &Path, port: u16, client_cert: bool) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&dir.join("ca.pem")) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if client_cert {
        b.with_client_auth_cert(pem_certs(&dir.join("cert.pem")), pem_key(&dir.join("key.pem")))
            .unwrap()
    } else {
        b.with_no_client_auth()
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// The values of every `name:` header line of a message, in order.
fn header_values(msg: &str, name: &str) -> Vec<String> {
    msg.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .flat_map(|v| {
            // Split "<a>, <b>" into values.
            v.split(">,")
                .map(|p| p.trim().trim_end_matches('>').to_string() + ">")
                .collect::<Vec<_>>()
        })
        .collect()
}

fn tag_of(msg: &str, header: &str) -> String {
    header_values(msg, header)
        .first()
        .and_then(|v| v.split(";tag=").nth(1).map(|t| t.trim_end_matches('>').to_string()))
        .unwrap_or_default()
}

/// One call over TLS: INVITE, 200 (its Record-Route kept), ACK and BYE
/// through the recorded routes. Returns the Record-Route values of the 200.
fn tls_call(c: &mut TlsClient, target: u16, n: u32) -> Vec<String> {
    let alice = Caller {
        transport: "TLS",
        sent_by: c.sock.local_addr().unwrap().to_string(),
        call_id: format!("tls-call-{n}@127.0.0.1"),
        from_tag: format!("a{n}"),
    };
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
    let invite = alice.head(
        "INVITE",
        &format!("sip:1234@127.0.0.1:{target}"),
        &format!("inv{n}"),
        1,
        "",
        &[],
    ) + &format!(
        "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    c.write_all(invite.as_bytes()).unwrap();
    let ok = read_200(c);
    let rr = header_values(&ok, "Record-Route");
    let callee = Answer::of(&ok);
    let (target, to_tag, routes) = (&callee.target, &callee.to_tag, &callee.routes);
    let ack = alice.request("ACK", target, &format!("ack{n}"), 1, to_tag, routes);
    c.write_all(ack.as_bytes()).unwrap();
    let bye = alice.request("BYE", target, &format!("bye{n}"), 2, to_tag, routes);
    c.write_all(bye.as_bytes()).unwrap();
    let r = read_sip(c).expect("a response to the BYE");
    assert!(r.starts_with("SIP/2.0 200 ") && r.contains("CSeq: 2 BYE"), "{r}");
    rr
}

fn tls_caller_udp_backend(io: &str, base: u16) {
    let name = "tls-udp";
    let lb = start(io, name, base, &[udp_dest(base + 11)], "");
    let a = uas(name, "uas.xml", base + 11, "u1");
    std::thread::sleep(Duration::from_millis(200));
    let mut c = tls_connect(&lb.dir, base + 2, false);
    for n in 0..3 {
        let rr = tls_call(&mut c, base + 2, n);
        // RFC 5658: the backend's side (UDP) on top, the caller's (TLS) below.
        assert_eq!(rr.len(), 2, "{rr:?}");
        assert!(rr[0].starts_with(&format!("<sip:127.0.0.1:{base};lr;did=")), "{rr:?}");
        assert!(
            rr[1].starts_with(&format!("<sip:127.0.0.1:{};transport=tls;lr;did=", base + 2)),
            "{rr:?}"
        );
    }
    assert_eq!(lb.stat("dialog:processed_dialogs"), 3);
    assert_eq!(lb.stat("dialog:failed_dialogs"), 0);
    drop(c);
    drop(a);
    lb.assert_idle(WAIT, CONNECTIONS);
}

/// A TLS backend answering calls on `listener` (INVITE: 180 and 200 with
/// Record-Route echoed; BYE: 200) until `calls` BYEs were answered.
fn tls_uas(dir: &Path, listener: std::net::TcpListener, calls: usize) -> std::thread::JoinHandle<usize> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pem_certs(&dir.join("cert.pem")), pem_key(&dir.join("key.pem")))
        .unwrap();
    let cfg = Arc::new(cfg);
    std::thread::spawn(move || {
        let me = listener.local_addr().unwrap();
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), sock);
        let mut byes = 0;
        while byes < calls {
            let Some(m) = read_sip(&mut s) else { break };
            if m.is_empty() {
                break;
            }
            let method = m.split(' ').next().unwrap_or_default().to_string();
            let pick = |name: &str| header_lines(&m, name);
            let (vias, from, to, cid, cseq, rr) = (
                pick("Via"),
                pick("From"),
                pick("To"),
                pick("Call-ID"),
                pick("CSeq"),
                pick("Record-Route"),
            );
            let to = to.trim_end().to_string();
            let reply = |code: &str, tag: bool, rr: &str| {
                let to = if tag {
                    format!("{to};tag=uas\r\n")
                } else {
                    format!("{to}\r\n")
                };
                format!(
                    "SIP/2.0 {code}\r\n{vias}{from}{to}{cid}{cseq}{rr}\
                     Contact: <sip:uas@{me};transport=tls>\r\nContent-Length: 0\r\n\r\n"
                )
            };
            match method.as_str() {
                "INVITE" => {
                    let out = reply("180 Ringing", true, &rr) + &reply("200 OK", true, &rr);
                    s.write_all(out.as_bytes()).unwrap();
                }
                "BYE" => {
                    s.write_all(reply("200 OK", false, "").as_bytes()).unwrap();
                    byes += 1;
                }
                _ => {}
            }
        }
        byes
    })
}

fn udp_caller_tls_backend(io: &str, base: u16) {
    let name = "udp-tls";
    let listener = std::net::TcpListener::bind(("127.0.0.1", base + 11)).unwrap();
    let lb = start(
        io,
        name,
        base,
        &[format!("sip:127.0.0.1:{};transport=tls", base + 11)],
        "",
    );
    let backend = tls_uas(&lb.dir, listener, 3);
    let args = ["-m", "3", "-r", "10", "-d", "100"];
    let ok = uac(name, "uac.xml", base, base + 15, "u1", &args);
    let answered = backend.join().unwrap();
    assert!(ok, "UDP calls to a TLS backend failed ({answered} BYEs answered)");
    assert_eq!(answered, 3);
    assert_eq!(lb.stat("dialog:processed_dialogs"), 3);
    assert_eq!(lb.stat("siplb:tcp_connected"), 1);
    lb.assert_idle(WAIT, CONNECTIONS);
}

fn tls_client_certificates(io: &str, base: u16) {
    let name = "tls-client-cert";
    let dir = workdir(name);
    let ca = dir.join("ca.pem");
    let lb = start(
        io,
        name,
        base,
        &[udp_dest(base + 11)],
        &format!("client_ca = \"{}\"\nrequire_client_certificate = true\n", ca.display()),
    );
    // Without a certificate: refused in the handshake.
    let mut c = tls_connect(&lb.dir, base + 2, false);
    let _ = c.write_all(OPTIONS.as_bytes());
    let got = read_sip(&mut c);
    assert!(got.as_ref().map_or(true, |m| m.is_empty()), "{got:?}");
    lb.wait_stat("siplb:tls_handshake_failed", 1, WAIT);
    // With one signed by the CA: served.
    let mut c = tls_connect(&lb.dir, base + 2, true);
    c.write_all(OPTIONS.as_bytes()).unwrap();
    let reply = read_sip(&mut c).expect("a reply");
    assert!(reply.starts_with("SIP/2.0 200 "), "{reply}");
    drop(c);
    lb.assert_idle(WAIT, CONNECTIONS);
}

both_io! {
    tls_epoll, tls_io_uring;
    tls_caller_udp_backend = 18300, if sipp_available();
    udp_caller_tls_backend = 18400, if sipp_available();
    tls_client_certificates = 18800;
}
