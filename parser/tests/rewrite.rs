//! Rewriter tests: each edit alone, the proxy's usual combination, and the
//! error cases. Every output is scanned again to prove it is valid SIP.

use siplb_parser::rewrite::{rewrite, RewriteError, MAX_PIECES};
use siplb_parser::{scan_datagram, Edit, Rport};
use std::io::IoSlice;

fn msg(lines: &[&str], body: &str) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

fn apply(buf: &[u8], edits: &[Edit<'_>]) -> Vec<u8> {
    let m = scan_datagram(buf).unwrap();
    let out = rewrite(&m, edits).unwrap();
    let bytes = out.to_vec();
    assert_eq!(bytes.len(), out.len());
    // The output scans again.
    scan_datagram(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    bytes
}

fn header_lines(buf: &[u8]) -> Vec<String> {
    let m = scan_datagram(buf).unwrap();
    m.headers()
        .map(|h| {
            format!(
                "{}: {}",
                String::from_utf8_lossy(h.name),
                String::from_utf8_lossy(h.value)
            )
        })
        .collect()
}

fn invite() -> Vec<u8> {
    msg(
        &[
            "INVITE sip:1000@lb.example.com SIP/2.0",
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport",
            "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKb, SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKc",
            "Route: <sip:lb.example.com;lr>, <sip:next.example.com;lr>",
            "Record-Route: <sip:p0.example.com;lr>",
            "Max-Forwards: 70",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:1000@example.com>",
            "Call-ID: rw-1",
            "CSeq: 1 INVITE",
            "Content-Type: application/sdp",
            "Content-Length: 10",
        ],
        "v=0\r\ns=-\r\n",
    )
}

#[test]
fn proxy_relay_of_an_invite() {
    let buf = invite();
    let out = apply(
        &buf,
        &[
            Edit::TopViaReceived {
                received: b"192.0.2.7",
                rport: Some(b"5070"),
            },
            Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKlb1"),
            Edit::RemoveFirstRoute,
            Edit::InsertRecordRoute(b"<sip:127.0.0.1:5060;lr;w=0>"),
            Edit::SetMaxForwards(69),
        ],
    );
    assert_eq!(
        header_lines(&out),
        [
            "Via: SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKlb1",
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=5070;received=192.0.2.7",
            "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKb, SIP/2.0/UDP 10.0.0.3;branch=z9hG4bKc",
            "Route: <sip:next.example.com;lr>",
            "Record-Route: <sip:127.0.0.1:5060;lr;w=0>",
            "Record-Route: <sip:p0.example.com;lr>",
            "Max-Forwards: 69",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:1000@example.com>",
            "Call-ID: rw-1",
            "CSeq: 1 INVITE",
            "Content-Type: application/sdp",
            "Content-Length: 10",
        ]
    );
    let m = scan_datagram(&out).unwrap();
    assert_eq!(m.body(), b"v=0\r\ns=-\r\n");
    assert_eq!(m.vias().nth(1).unwrap().rport, Rport::Value(5070));
    assert_eq!(m.vias().nth(1).unwrap().received, Some(&b"192.0.2.7"[..]));
}

#[test]
fn the_body_is_never_copied() {
    let buf = invite();
    let m = scan_datagram(&buf).unwrap();
    let out = rewrite(
        &m,
        &[
            Edit::PrependVia(b"SIP/2.0/UDP x;branch=z9hG4bKq"),
            Edit::SetMaxForwards(69),
        ],
    )
    .unwrap();
    let body = m.body();
    let last = out.pieces().last().unwrap();
    // The last piece is a slice of the original buffer that ends with the body.
    assert_eq!(last.as_ptr_range().end, body.as_ptr_range().end);
    assert!(last.len() >= body.len());
}

#[test]
fn response_relay_removes_the_top_via() {
    let buf = msg(
        &[
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKlb1",
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:1000@example.com>;tag=2",
            "Call-ID: rw-1",
            "CSeq: 1 INVITE",
            "Content-Length: 0",
        ],
        "",
    );
    let out = apply(&buf, &[Edit::RemoveTopVia]);
    let m = scan_datagram(&out).unwrap();
    assert_eq!(m.via_count(), 1);
    assert_eq!(m.top_via().host, b"10.0.0.1");
}

#[test]
fn removing_one_value_keeps_the_others_on_the_line() {
    let buf = msg(
        &[
            "SIP/2.0 180 Ringing",
            "v: SIP/2.0/UDP lb;branch=z9hG4bK1 ,  SIP/2.0/UDP a;branch=z9hG4bK2,SIP/2.0/UDP b;branch=z9hG4bK3",
            "From: <sip:a@example.com>;tag=1",
            "To: <sip:b@example.com>;tag=2",
            "Call-ID: c",
            "CSeq: 1 INVITE",
            "Content-Length: 0",
        ],
        "",
    );
    let out = apply(&buf, &[Edit::RemoveTopVia]);
    assert_eq!(
        header_lines(&out)[0],
        "v: SIP/2.0/UDP a;branch=z9hG4bK2,SIP/2.0/UDP b;branch=z9hG4bK3"
    );

    let buf = invite();
    let out = apply(&buf, &[Edit::RemoveFirstRouteHeader]);
    assert!(scan_datagram(&out).unwrap().route_values().next().is_none());
    let out = apply(&out, &[]);
    assert_eq!(
        out.len(),
        buf.len() - "Route: <sip:lb.example.com;lr>, <sip:next.example.com;lr>\r\n".len()
    );
}

#[test]
fn max_forwards_is_inserted_when_absent() {
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
        ],
        "",
    );
    let out = apply(
        &buf,
        &[Edit::SetMaxForwards(70), Edit::InsertRecordRoute(b"<sip:lb;lr>")],
    );
    let m = scan_datagram(&out).unwrap();
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(
        header_lines(&out)[1..3],
        ["Max-Forwards: 70", "Record-Route: <sip:lb;lr>"]
    );
    for n in [0u8, 9, 10, 99, 100, 255] {
        let out = apply(&buf, &[Edit::SetMaxForwards(n)]);
        assert_eq!(scan_datagram(&out).unwrap().max_forwards(), Some(n));
    }
}

#[test]
fn leading_line_breaks_are_dropped_and_bare_lf_input_works() {
    let mut buf = b"\r\n".to_vec();
    buf.extend(b"OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@h>;tag=1\nTo: <sip:x>\nCall-ID: c\nCSeq: 1 OPTIONS\n\n");
    let out = apply(&buf, &[Edit::PrependVia(b"SIP/2.0/UDP lb;branch=z9hG4bK0")]);
    assert!(out.starts_with(b"OPTIONS"));
    assert_eq!(scan_datagram(&out).unwrap().via_count(), 2);
}

#[test]
fn errors() {
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(
        rewrite(&m, &[Edit::RemoveFirstRoute]).unwrap_err(),
        RewriteError::Missing
    );
    assert_eq!(
        rewrite(&m, &[Edit::RemoveTopVia, Edit::RemoveTopVia]).unwrap_err(),
        RewriteError::Conflict
    );
    let many = [Edit::InsertRecordRoute(b"<sip:x;lr>"); 13];
    assert_eq!(rewrite(&m, &many).unwrap_err(), RewriteError::TooManyPieces);
    let out = rewrite(&m, &[Edit::SetMaxForwards(70)]).unwrap();
    let mut small = [0u8; 10];
    assert_eq!(out.write_to(&mut small).unwrap_err(), RewriteError::BufferTooSmall);
}

#[test]
fn gather_list_matches_the_copy() {
    let buf = invite();
    let m = scan_datagram(&buf).unwrap();
    let out = rewrite(
        &m,
        &[
            Edit::RemoveFirstRoute,
            Edit::PrependVia(b"SIP/2.0/UDP lb;branch=z9hG4bK9"),
        ],
    )
    .unwrap();
    let mut iov = [IoSlice::new(&[]); MAX_PIECES];
    let n = out.io_slices(&mut iov);
    let gathered: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
    let mut copy = vec![0u8; out.len()];
    assert_eq!(out.write_to(&mut copy).unwrap(), out.len());
    assert_eq!(gathered, copy);
}

#[test]
fn rport_fill_targets_the_flag_not_an_rport_with_a_value() {
    // Found by the fuzzer: an `rport=` with a value before the bare flag.
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h:5060;rport=\r\r\r2;branch=z9hG4bK1;rport",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
        ],
        "",
    );
    let out = apply(
        &buf,
        &[Edit::TopViaReceived {
            received: b"192.0.2.1",
            rport: Some(b"5070"),
        }],
    );
    let m = scan_datagram(&out).unwrap();
    assert_eq!(m.top_via().rport, Rport::Value(5070));
    assert_eq!(m.top_via().received, Some(&b"192.0.2.1"[..]));
}

#[test]
fn request_uri_and_arbitrary_headers() {
    let buf = invite();
    let out = apply(
        &buf,
        &[
            Edit::SetRequestUri(b"sip:1000@10.0.0.9:5080;transport=udp"),
            Edit::InsertHeader(b"X-Siplb-Destination: 3"),
        ],
    );
    let m = scan_datagram(&out).unwrap();
    assert_eq!(m.request_uri(), Some(&b"sip:1000@10.0.0.9:5080;transport=udp"[..]));
    assert_eq!(m.header(b"x-siplb-destination").unwrap().value, b"3");
    assert_eq!(header_lines(&out)[2], "X-Siplb-Destination: 3");

    let response = msg(
        &[
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:b@h>;tag=2",
            "Call-ID: c",
            "CSeq: 1 INVITE",
        ],
        "",
    );
    let m = scan_datagram(&response).unwrap();
    assert_eq!(
        rewrite(&m, &[Edit::SetRequestUri(b"sip:x")]).unwrap_err(),
        RewriteError::Missing
    );
}

#[test]
fn route_sets_reverse_without_a_temporary() {
    let buf = invite();
    let m = scan_datagram(&buf).unwrap();
    let reversed: Vec<&[u8]> = m.route_values().rev().collect();
    assert_eq!(
        reversed,
        [&b"<sip:next.example.com;lr>"[..], b"<sip:lb.example.com;lr>"]
    );
    assert_eq!(m.headers().next_back().unwrap().name, b"Content-Length");
    assert_eq!(m.via_values().len(), 3);
}
