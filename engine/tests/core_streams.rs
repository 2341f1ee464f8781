//! The sans-IO core with stream transports: what it writes and where it
//! sends when callers or destinations use TCP or TLS (no sockets here).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siplb::config::Config;
use siplb::core::{ConnId, Local, Proxy, Stats, Transmit, Transport};
use siplb::lb::Table;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
workers = 1
internal_address = "127.0.0.1"
internal_port_base = 5070
[tls]
certificate = "unused.pem"
private_key = "unused.pem"
[[destinations]]
id = 1
group = 1
uri = "sip:127.0.0.1:5081"
resources = "pstn=10"
[[destinations]]
id = 2
group = 2
uri = "sip:127.0.0.1:5082;transport=tcp"
resources = "pstn=10"
[[rules]]
method = "INVITE"
ruri_user = "^1"
load_balance = { group = 1, resources = "pstn" }
[[rules]]
method = "INVITE"
ruri_user = "^2"
load_balance = { group = 2, resources = "pstn" }
[[rules]]
reply = { code = 405 }
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct World {
    proxy: Proxy,
    table: Arc<Table>,
    now: Instant,
}

fn world() -> World {
    let cfg = Arc::new(Config::parse(CONFIG).unwrap());
    let table = Arc::new(Table::new(&cfg.destinations, &cfg.resource_names));
    let proxy = Proxy::new(cfg, table.clone(), Arc::new(Stats::default()), 0, 7, 1);
    World {
        proxy,
        table,
        now: Instant::now(),
    }
}

impl World {
    fn input(&mut self, local: Local, src: &str, msg: &str) -> Vec<Transmit> {
        self.proxy
            .handle_datagram(self.now, local, addr(src), msg.as_bytes(), false);
        std::iter::from_fn(|| self.proxy.poll_transmit()).collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        self.now += by;
        self.proxy.handle_timeout(self.now);
        std::iter::from_fn(|| self.proxy.poll_transmit()).collect()
    }
}

fn text(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.payload).into_owned()
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

const CALLER: &str = "127.0.0.2:40000";
const TLS_CONN: Local = Local::Conn(ConnId {
    transport: Transport::Tls,
    worker: 0,
    id: 9,
});

fn invite(user: &str, transport: &str, via_host: &str) -> String {
    format!(
        "INVITE sip:{user}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via_host};branch=z9hG4bK-c1;rport\r\n\
         From: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: call-1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.2:5062>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn tls_caller_to_udp_backend_records_two_routes_and_routes_both_ways() {
    let mut w = world();
    let out = w.input(TLS_CONN, CALLER, &invite("1000", "TLS", "127.0.0.2:5062"));
    assert_eq!(out.len(), 2, "100 Trying and the INVITE");
    assert_eq!((out[0].local, out[0].dst), (TLS_CONN, addr(CALLER)));
    assert!(text(&out[0]).starts_with("SIP/2.0 100 "));
    let inv = text(&out[1]);
    assert_eq!((out[1].local, out[1].dst), (Local::Internal, addr("127.0.0.1:5081")));
    let via = header(&inv, "Via");
    assert!(
        via[0].starts_with("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKslb"),
        "{inv}"
    );
    assert!(!via[0].contains("alias"), "{inv}");
    assert!(
        via[1].contains("received=127.0.0.2") && via[1].contains("rport=40000"),
        "{inv}"
    );
    let rr = header(&inv, "Record-Route");
    assert_eq!(rr.len(), 1, "{inv}");
    let values: Vec<&str> = rr[0].split(", ").collect();
    assert_eq!(values.len(), 2, "{inv}");
    assert!(values[0].starts_with("<sip:127.0.0.1:5060;lr;did="), "{inv}");
    assert!(
        values[1].starts_with("<sip:127.0.0.1:5061;transport=tls;lr;did="),
        "{inv}"
    );

    // The backend answers over UDP; the 200 goes back on the TLS connection.
    let branch = via[0].split("branch=").nth(1).unwrap().split(';').next().unwrap();
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\nVia: {}\r\n\
         Record-Route: {}\r\nFrom: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:1000@127.0.0.1>;tag=b1\r\n\
         Call-ID: call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:1000@127.0.0.1:5081>\r\nContent-Length: 0\r\n\r\n",
        via[1], rr[0]
    );
    let out = w.input(Local::Internal, "127.0.0.1:5081", &ok);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].local, out[0].dst), (TLS_CONN, addr(CALLER)));

    // The callee hangs up: its route set is the Record-Route in order.
    let bye = format!(
        "BYE sip:alice@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-b1\r\n\
         Route: {}\r\nRoute: {}\r\nFrom: <sip:1000@127.0.0.1>;tag=b1\r\nTo: <sip:alice@127.0.0.2>;tag=a1\r\n\
         Call-ID: call-1\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        values[0], values[1]
    );
    let out = w.input(Local::Internal, "127.0.0.1:5081", &bye);
    assert_eq!(out.len(), 1);
    // Out over TLS (the transport of the caller's side), to its Contact.
    assert_eq!(
        (out[0].local, out[0].dst),
        (Local::Connect(Transport::Tls), addr("127.0.0.2:5062"))
    );
    let relayed = text(&out[0]);
    assert!(
        header(&relayed, "Route").is_empty(),
        "both own routes removed: {relayed}"
    );
    assert!(
        header(&relayed, "Via")[0].starts_with("SIP/2.0/TLS 127.0.0.1:5061;branch=") && relayed.contains(";alias"),
        "{relayed}"
    );
    assert_eq!(w.table.total_load(), 0, "the BYE ended the call");
    w.proxy.shutdown();
}

#[test]
fn caller_bye_over_tls_goes_to_the_udp_backend() {
    let mut w = world();
    let out = w.input(TLS_CONN, CALLER, &invite("1000", "TLS", "127.0.0.2:5062"));
    let inv = text(&out[1]);
    let rr = header(&inv, "Record-Route")[0].to_string();
    let values: Vec<&str> = rr.split(", ").collect();
    // The caller's route set is the Record-Route reversed.
    let bye = format!(
        "BYE sip:1000@127.0.0.1:5081;transport=UDP SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.2:5062;branch=z9hG4bK-c2;rport\r\n\
         Route: {}\r\nRoute: {}\r\nFrom: <sip:alice@127.0.0.2>;tag=a1\r\nTo: <sip:1000@127.0.0.1>;tag=b1\r\n\
         Call-ID: call-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        values[1], values[0]
    );
    let out = w.input(TLS_CONN, CALLER, &bye);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].local, out[0].dst), (Local::Internal, addr("127.0.0.1:5081")));
    assert!(header(&text(&out[0]), "Route").is_empty());
    w.proxy.shutdown();
    assert_eq!(w.table.total_load(), 0);
}

#[test]
fn tcp_backend_gets_a_stream_via_and_no_retransmissions() {
    let mut w = world();
    let out = w.input(
        Local::Public(0),
        "127.0.0.2:6000",
        &invite("2000", "UDP", "127.0.0.2:6000"),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[1].local, out[1].dst),
        (Local::Connect(Transport::Tcp), addr("127.0.0.1:5082"))
    );
    let inv = text(&out[1]);
    let via = header(&inv, "Via")[0];
    assert!(
        via.starts_with("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKslb") && via.ends_with(";rport;alias"),
        "{inv}"
    );
    // UDP in, TCP out: two routes, the TCP side on top.
    let rr = header(&inv, "Record-Route")[0];
    assert!(rr.starts_with("<sip:127.0.0.1:5060;transport=tcp;lr;did="), "{rr}");
    assert!(rr.contains(", <sip:127.0.0.1:5060;lr;did="), "{rr}");
    // Timer A does not run over TCP.
    for _ in 0..4 {
        assert!(w.advance(Duration::from_millis(1000)).is_empty());
    }
    // fr_timeout (5 s) still does: a local final goes to the caller.
    let out = w.advance(Duration::from_millis(1100));
    assert!(out
        .iter()
        .any(|t| t.dst == addr("127.0.0.2:6000") && text(t).starts_with("SIP/2.0 ")));
    w.proxy.shutdown();
    assert_eq!(w.table.total_load(), 0);
}

#[test]
fn non_2xx_over_tcp_is_acked_on_its_connection() {
    let mut w = world();
    let out = w.input(
        Local::Public(0),
        "127.0.0.2:6000",
        &invite("2000", "UDP", "127.0.0.2:6000"),
    );
    let inv = text(&out[1]);
    let vias = header(&inv, "Via");
    let conn = Local::Conn(ConnId {
        transport: Transport::Tcp,
        worker: 0,
        id: 3,
    });
    let busy = format!(
        "SIP/2.0 486 Busy Here\r\nVia: {}\r\nVia: {}\r\nFrom: <sip:alice@127.0.0.2>;tag=a1\r\n\
         To: <sip:2000@127.0.0.1>;tag=b2\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    );
    let out = w.input(conn, "127.0.0.1:5082", &busy);
    let ack = out.iter().find(|t| text(t).starts_with("ACK ")).expect("an ACK");
    assert_eq!((ack.local, ack.dst), (conn, addr("127.0.0.1:5082")));
    let relayed = out
        .iter()
        .find(|t| text(t).starts_with("SIP/2.0 486"))
        .expect("the 486");
    assert_eq!(relayed.local, Local::Public(0));
    w.proxy.shutdown();
    assert_eq!(w.table.total_load(), 0);
}
