//! Table-driven scanner tests, written from RFC 3261's grammar and the §24
//! call flows, plus the odd-but-valid and the invalid.

use siplb_parser::{
    scan, scan_datagram, scan_datagram_with, scan_stream, Error, ErrorKind, HeaderKind, Limits, Mandatory, Method,
    Options, Rport, StartLine, Status, Transport,
};

/// Joins header lines with CRLF, adds the blank line and the body.
fn msg(lines: &[&str], body: &str) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

fn kind_of(buf: &[u8]) -> ErrorKind {
    scan_datagram(buf).expect_err("expected an error").kind
}

// RFC 3261 §24.2, message F1 (with the SDP shortened).
fn f1_invite() -> Vec<u8> {
    msg(
        &[
            "INVITE sips:bob@biloxi.example.com SIP/2.0",
            "Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9",
            "Max-Forwards: 70",
            "From: Alice <sips:alice@atlanta.example.com>;tag=9fxced76sl",
            "To: Bob <sips:bob@biloxi.example.com>",
            "Call-ID: 3848276298220188511@atlanta.example.com",
            "CSeq: 1 INVITE",
            "Contact: <sips:alice@client.atlanta.example.com>",
            "Content-Type: application/sdp",
            "Content-Length: 151",
        ],
        "v=0\r\no=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\ns=-\r\nc=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
    )
}

#[test]
fn rfc3261_f1_invite() {
    let buf = f1_invite();
    let m = scan_datagram(&buf).unwrap();
    assert!(m.is_request());
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.request_uri(), Some(&b"sips:bob@biloxi.example.com"[..]));
    assert_eq!(m.via_count(), 1);
    let via = m.top_via();
    assert_eq!(via.transport(), Transport::Tls);
    assert_eq!((via.host, via.port), (&b"client.atlanta.example.com"[..], Some(5061)));
    assert_eq!(via.branch, Some(&b"z9hG4bK74bf9"[..]));
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.from().display_name, Some(&b"Alice"[..]));
    assert_eq!(m.from().uri, b"sips:alice@atlanta.example.com");
    assert_eq!(m.from_tag(), Some(&b"9fxced76sl"[..]));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.call_id(), b"3848276298220188511@atlanta.example.com");
    assert_eq!(m.cseq().seq, 1);
    assert_eq!(m.cseq().method, Method::Invite);
    assert_eq!(
        m.contacts().next().unwrap().uri,
        b"sips:alice@client.atlanta.example.com"
    );
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
    assert_eq!(m.content_length(), Some(151));
    assert_eq!(m.body().len(), 151);
    assert!(m.body().starts_with(b"v=0\r\n"));
    assert_eq!(m.len(), buf.len());
    assert_eq!(m.header_count(), 9);
}

#[test]
fn rfc3261_f5_180_with_record_route_and_three_vias() {
    // §24.2 F5-like: a 180 relayed by two proxies.
    let buf = msg(
        &[
            "SIP/2.0 180 Ringing",
            "Via: SIP/2.0/TLS ss2.biloxi.example.com:5061;branch=z9hG4bK721e4.1",
            "Via: SIP/2.0/TLS ss1.atlanta.example.com:5061;branch=z9hG4bK2d4790.1;received=192.0.2.111",
            "Via: SIP/2.0/TLS client.atlanta.example.com:5061;branch=z9hG4bK74bf9;received=192.0.2.101",
            "Record-Route: <sips:ss2.biloxi.example.com;lr>,",
            " <sips:ss1.atlanta.example.com;lr>",
            "From: Alice <sips:alice@atlanta.example.com>;tag=9fxced76sl",
            "To: Bob <sips:bob@biloxi.example.com>;tag=314159",
            "Call-ID: 3848276298220188511@atlanta.example.com",
            "Contact: <sips:bob@client.biloxi.example.com>",
            "CSeq: 2 INVITE",
            "Content-Length: 0",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.reason(), Some(&b"Ringing"[..]));
    assert_eq!(m.method(), None);
    assert_eq!(m.via_count(), 3);
    let hosts: Vec<&[u8]> = m.vias().map(|v| v.host).collect();
    assert_eq!(
        hosts,
        [
            &b"ss2.biloxi.example.com"[..],
            b"ss1.atlanta.example.com",
            b"client.atlanta.example.com"
        ]
    );
    assert_eq!(m.vias().nth(1).unwrap().received, Some(&b"192.0.2.111"[..]));
    let rr: Vec<&[u8]> = m.record_route_values().collect();
    assert_eq!(
        rr,
        [
            &b"<sips:ss2.biloxi.example.com;lr>"[..],
            b"<sips:ss1.atlanta.example.com;lr>"
        ]
    );
    assert!(m.record_routes().all(|a| a.parsed_uri().unwrap().is_loose_route()));
    assert_eq!(m.to_tag(), Some(&b"314159"[..]));
    assert_eq!(m.cseq().method, Method::Invite);
    assert!(m.body().is_empty());
}

#[test]
fn in_dialog_bye_with_routes() {
    let buf = msg(
        &[
            "BYE sips:alice@client.atlanta.example.com SIP/2.0",
            "Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bK74b76",
            "Max-Forwards: 70",
            "Route: <sips:ss2.biloxi.example.com;lr>, <sips:ss1.atlanta.example.com;lr>",
            "From: Bob <sips:bob@biloxi.example.com>;tag=314159",
            "To: Alice <sips:alice@atlanta.example.com>;tag=9fxced76sl",
            "Call-ID: 3848276298220188511@atlanta.example.com",
            "CSeq: 1 BYE",
            "Content-Length: 0",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.method(), Some(Method::Bye));
    let routes: Vec<_> = m.routes().map(|r| r.uri).collect();
    assert_eq!(
        routes,
        [
            &b"sips:ss2.biloxi.example.com;lr"[..],
            b"sips:ss1.atlanta.example.com;lr"
        ]
    );
}

#[test]
fn compact_forms_and_case() {
    let buf = msg(
        &[
            "INVITE sip:+15551234@gw.example.com;user=phone SIP/2.0",
            "v: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKc1",
            "V: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKc2",
            "f: <sip:a@example.com>;tag=ft",
            "t: sip:b@example.com",
            "i: compact-call@10.0.0.1",
            "cSeQ: 7 INVITE",
            "m: <sip:a@10.0.0.1>",
            "c: application/sdp",
            "k: 100rel",
            "s: hello",
            "MAX-FORWARDS: 10",
            "l: 3",
        ],
        "abc",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.via_count(), 2);
    assert_eq!(m.top_via().rport, Rport::Requested);
    assert_eq!(m.vias().nth(1).unwrap().branch, Some(&b"z9hG4bKc2"[..]));
    assert_eq!(m.from_tag(), Some(&b"ft"[..]));
    assert_eq!(m.to().uri, b"sip:b@example.com");
    assert_eq!(m.call_id(), b"compact-call@10.0.0.1");
    assert_eq!(m.cseq().seq, 7);
    assert_eq!(m.max_forwards(), Some(10));
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
    assert_eq!(m.body(), b"abc");
    assert_eq!(m.header(b"Supported").unwrap().value, b"100rel");
    assert_eq!(m.header(b"subject").unwrap().name, b"s");
    assert_eq!(m.headers_named(b"VIA").count(), 2);
    assert_eq!(m.headers_of(HeaderKind::Contact).count(), 1);
}

#[test]
fn multi_value_lines_respect_quotes_and_brackets() {
    let buf = msg(
        &[
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1 , SIP/2.0/UDP b.example.com;branch=z9hG4bK2,SIP/2.0/UDP c.example.com;branch=z9hG4bK3",
            "From: \"Smith, John\" <sip:j@example.com>;tag=1",
            "To: <sip:x@example.com>;tag=2",
            "Call-ID: x",
            "CSeq: 2 REGISTER",
            "Contact: \"A, B\" <sip:a@h1;x=1,2>;expires=30, <sip:b@h2>",
            "Record-Route: <sip:p1;lr;a=\"1,2\">,<sip:p2;lr>",
            "Content-Length: 0",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.via_count(), 3);
    assert_eq!(m.vias().nth(2).unwrap().host, b"c.example.com");
    assert_eq!(m.from().display_name, Some(&b"\"Smith, John\""[..]));
    let contacts: Vec<_> = m.contacts().map(|c| c.uri).collect();
    assert_eq!(contacts, [&b"sip:a@h1;x=1,2"[..], b"sip:b@h2"]);
    assert_eq!(m.contacts().next().unwrap().param(b"expires"), Some(Some(&b"30"[..])));
    assert_eq!(m.record_route_values().count(), 2);
}

#[test]
fn linear_white_space_and_folding() {
    let buf = msg(
        &[
            "OPTIONS sip:lb.example.com SIP/2.0",
            "Via   :   SIP / 2.0 / UDP   192.0.2.4 : 5070 ; branch = z9hG4bKsp ; rport = 5070",
            "From:",
            "  <sip:probe@example.com>",
            "\t;tag=folded",
            "To :<sip:lb.example.com>",
            "Call-ID:\tcid-1",
            "CSeq:   42    OPTIONS  ",
            "Subject: a",
            "  folded",
            "   subject",
            "Content-Length:   0   ",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    let via = m.top_via();
    assert_eq!(
        (via.host, via.port, via.rport),
        (&b"192.0.2.4"[..], Some(5070), Rport::Value(5070))
    );
    assert_eq!(via.branch, Some(&b"z9hG4bKsp"[..]));
    assert_eq!(m.from().uri, b"sip:probe@example.com");
    assert_eq!(m.from_tag(), Some(&b"folded"[..]));
    assert_eq!(m.call_id(), b"cid-1");
    assert_eq!(m.cseq().seq, 42);
    assert_eq!(m.header(b"Subject").unwrap().value, b"a\r\n  folded\r\n   subject");
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn ipv6_everywhere() {
    let buf = msg(
        &[
            "INVITE sip:[2001:db8::10]:5060 SIP/2.0",
            "Via: SIP/2.0/UDP [2001:db8::9:1]:5062;branch=z9hG4bKas3;received=[2001:db8::9:255]",
            "Route: <sip:[2001:db8::1];lr>",
            "From: <sip:a@[2001:db8::9:1]>;tag=1",
            "To: <sip:b@[2001:db8::10]>",
            "Call-ID: v6",
            "CSeq: 1 INVITE",
            "Content-Length: 0",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.top_via().host, b"[2001:db8::9:1]");
    assert_eq!(m.top_via().port, Some(5062));
    assert_eq!(m.top_via().received, Some(&b"[2001:db8::9:255]"[..]));
    let route = m.routes().next().unwrap().parsed_uri().unwrap();
    assert_eq!(route.host, b"[2001:db8::1]");
    assert!(route.is_loose_route());
}

#[test]
fn bare_lf_is_a_documented_leniency() {
    let buf = b"OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@h>;tag=1\nTo: <sip:x>\nCall-ID: lf\nCSeq: 1 OPTIONS\nContent-Length: 2\n\nok";
    let m = scan_datagram(buf).unwrap();
    assert_eq!(m.body(), b"ok");
    let strict = Options {
        allow_bare_lf: false,
        ..Options::default()
    };
    assert_eq!(
        scan_datagram_with(buf, &strict).unwrap_err().kind,
        ErrorKind::BareLineFeed
    );
}

#[test]
fn leading_line_breaks_are_skipped() {
    let mut buf = b"\r\n\r\n".to_vec();
    buf.extend(f1_invite());
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.len(), buf.len());
    assert_eq!(kind_of(b"\r\n\r\n"), ErrorKind::Empty);
    assert_eq!(kind_of(b""), ErrorKind::Empty);
}

#[test]
fn content_length_framing() {
    // Absent on UDP: the body is the rest of the datagram.
    let buf = msg(
        &[
            "MESSAGE sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 MESSAGE",
        ],
        "hello",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.content_length(), None);
    assert_eq!(m.body(), b"hello");
    // On a stream it is required.
    assert_eq!(scan_stream(&buf).unwrap_err().kind, ErrorKind::MissingContentLength);

    // Larger than what follows: truncated datagram, partial stream.
    let short = msg(
        &[
            "MESSAGE sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 MESSAGE",
            "Content-Length: 10",
        ],
        "hello",
    );
    assert_eq!(kind_of(&short), ErrorKind::Truncated);
    assert!(matches!(scan(&short), Ok(Status::Partial)));

    // Smaller: the rest is not part of the message.
    let long = msg(
        &[
            "MESSAGE sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 MESSAGE",
            "Content-Length: 2",
        ],
        "hello",
    );
    let m = scan_datagram(&long).unwrap();
    assert_eq!(m.body(), b"he");
    assert_eq!(m.len(), long.len() - 3);
}

#[test]
fn stream_framing_with_partial_input_and_pipelining() {
    let one = f1_invite();
    let mut two = one.clone();
    two.extend_from_slice(&one);
    // Every strict prefix of one message is Partial.
    for cut in [1, 10, 40, 200, one.len() - 152, one.len() - 1] {
        assert!(matches!(scan_stream(&one[..cut]), Ok(Status::Partial)), "cut at {cut}");
    }
    let Ok(Status::Complete(m)) = scan_stream(&two) else {
        panic!("expected a complete message")
    };
    assert_eq!(m.len(), one.len());
    let Ok(Status::Complete(m2)) = scan_stream(&two[m.len()..]) else {
        panic!("expected the second message")
    };
    assert_eq!(m2.call_id(), m.call_id());
}

#[test]
fn folded_line_at_buffer_end_is_partial_on_streams() {
    let buf = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";
    assert!(matches!(scan_stream(buf), Ok(Status::Partial)));
    assert_eq!(kind_of(buf), ErrorKind::Truncated);
}

#[test]
fn invalid_messages_with_exact_errors() {
    let base = [
        "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
        "From: <sip:a@h>;tag=1",
        "To: <sip:b@h>",
        "Call-ID: c",
        "CSeq: 1 INVITE",
        "Content-Length: 0",
    ];
    let with = |start: &str, replace: Option<(usize, &str)>| {
        let mut lines = vec![start.to_string()];
        for (i, l) in base.iter().enumerate() {
            match replace {
                Some((j, r)) if j == i => {
                    if !r.is_empty() {
                        lines.push(r.to_string())
                    }
                }
                _ => lines.push(l.to_string()),
            }
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        msg(&refs, "")
    };
    let inv = "INVITE sip:b@h SIP/2.0";
    let cases: Vec<(Vec<u8>, ErrorKind)> = vec![
        (with("INVITE sip:b@h", None), ErrorKind::BadStartLine),
        (with("INVITE", None), ErrorKind::BadStartLine),
        (with("INVITE sip:b@h SIP/3.0", None), ErrorKind::BadVersion),
        (with("INV(TE sip:b@h SIP/2.0", None), ErrorKind::BadMethod),
        (with("INVITE sip:b @h SIP/2.0", None), ErrorKind::BadRequestUri),
        (with("SIP/2.0 2000 OK", None), ErrorKind::BadStatusCode),
        (with("SIP/2.0 099 Low", None), ErrorKind::BadStatusCode),
        (with("SIP/2.0 7xx Bad", None), ErrorKind::BadStatusCode),
        (with("SIP/1.0 200 OK", None), ErrorKind::BadVersion),
        (with("INVITE sip:b@h SIP/2.0\x01", None), ErrorKind::BadStartLine),
        (with(inv, Some((5, "Content-Length: -1"))), ErrorKind::BadContentLength),
        (
            with(inv, Some((5, "Content-Length: 12345678901"))),
            ErrorKind::BadContentLength,
        ),
        (with(inv, Some((5, "Content-Length: 99999999"))), ErrorKind::TooLarge),
        (with(inv, Some((5, "Content-Length: 1x"))), ErrorKind::BadContentLength),
        (with(inv, Some((0, ""))), ErrorKind::MissingHeader(Mandatory::Via)),
        (with(inv, Some((1, ""))), ErrorKind::MissingHeader(Mandatory::From)),
        (with(inv, Some((2, ""))), ErrorKind::MissingHeader(Mandatory::To)),
        (with(inv, Some((3, ""))), ErrorKind::MissingHeader(Mandatory::CallId)),
        (with(inv, Some((4, ""))), ErrorKind::MissingHeader(Mandatory::CSeq)),
        (with(inv, Some((0, "Via: SIP/2.0/UDP"))), ErrorKind::BadVia),
        (
            with(
                "SIP/2.0 200 OK",
                Some((0, "Via: SIP/2.0/UDP h;branch=z9hG4bK1, garbage")),
            ),
            ErrorKind::BadVia,
        ),
        (with(inv, Some((5, "Route: junk, <sip:p2;lr>"))), ErrorKind::BadRoute),
        (with(inv, Some((1, "From: <sip:a@h"))), ErrorKind::BadFrom),
        (with(inv, Some((2, "To: \"x <sip:b@h>"))), ErrorKind::BadTo),
        (with(inv, Some((3, "Call-ID: has space"))), ErrorKind::BadCallId),
        (with(inv, Some((4, "CSeq: INVITE"))), ErrorKind::BadCSeq),
        (with(inv, Some((4, "CSeq: 1"))), ErrorKind::BadCSeq),
        (with(inv, Some((4, "CSeq: 4294967296 INVITE"))), ErrorKind::BadCSeq),
        (with(inv, Some((4, "CSeq: 1 BYE"))), ErrorKind::CSeqMethodMismatch),
        (with(inv, Some((5, "Max-Forwards: 256"))), ErrorKind::BadMaxForwards),
        (with(inv, Some((5, "Max-Forwards: -1"))), ErrorKind::BadMaxForwards),
        (with(inv, Some((5, "Bad Name: x"))), ErrorKind::BadHeader),
        (with(inv, Some((5, "NoColonHere"))), ErrorKind::BadHeader),
        (with(inv, Some((5, ": empty name"))), ErrorKind::BadHeader),
        (with(inv, Some((5, "Route: junk"))), ErrorKind::BadRoute),
        (with(inv, Some((5, "Call-ID: second"))), ErrorKind::DuplicateHeader),
    ];
    for (buf, expected) in cases {
        assert_eq!(kind_of(&buf), expected, "{}", String::from_utf8_lossy(&buf));
    }
    // Contact is parsed lazily: a broken value does not fail the scan and
    // is skipped by contacts().
    let buf = with(inv, Some((5, "Contact: <sip:x, <sip:ok@h>")));
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.contacts().count(), 0);
    let buf = with(inv, Some((5, "Contact: <sip:broken, <sip:ok@h>")));
    assert_eq!(scan_datagram(&buf).unwrap().contacts().count(), 0);
    let buf = with(inv, Some((5, "Contact: \"x\" sip:bad, <sip:ok@h>")));
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.contacts().map(|c| c.uri).collect::<Vec<_>>(), [&b"sip:ok@h"[..]]);
}

#[test]
fn values_below_the_top_are_checked_lazily() {
    let lines = |first: &str, extra: &[&str]| {
        let mut l = vec![first];
        l.extend_from_slice(extra);
        l.extend(["From: <sip:a@h>;tag=1", "To: <sip:b@h>", "Call-ID: c", "CSeq: 1 INVITE"]);
        msg(&l, "")
    };
    let offset_of = |buf: &[u8], needle: &[u8]| buf.windows(needle.len()).position(|w| w == needle).unwrap();

    // A request: only the top Via is parsed by the scan.
    let buf = lines(
        "INVITE sip:b@h SIP/2.0",
        &[
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1, garbage",
            "v: SIP/2.0/UDP g;branch=z9hG4bK0",
        ],
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.via_count(), 3);
    assert_eq!(m.via_values().collect::<Vec<_>>()[1], b"garbage");
    assert_eq!(m.vias().count(), 1, "vias() stops before the first bad value");
    let e = m.validate_all().unwrap_err();
    assert_eq!((e.kind, offset_of(&buf, b"garbage")), (ErrorKind::BadVia, e.offset));

    // A response: the top two are parsed, the third is not.
    let ok = "SIP/2.0 200 OK";
    let via2 = "Via: SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/UDP p:5070;branch=z9hG4bK2";
    assert_eq!(
        kind_of(&lines(ok, &[via2.split(',').next().unwrap(), "Via: x"])),
        ErrorKind::BadVia
    );
    let buf = lines(ok, &[via2, "Via: x"]);
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.vias().map(|v| v.port).collect::<Vec<_>>(), [None, Some(5070)]);
    assert_eq!(m.validate_all().unwrap_err().kind, ErrorKind::BadVia);

    // Route: the first value; Record-Route: none.
    let buf = lines(
        "INVITE sip:b@h SIP/2.0",
        &[
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "Route: <sip:p1;lr>, sip:p2;lr",
            "Record-Route: <sip:r1;lr>, junk, <sip:r3;lr>",
        ],
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.route_values().len(), 2);
    assert_eq!(m.routes().count(), 1, "an unbracketed value stops routes()");
    assert_eq!(m.record_route_values().len(), 3);
    assert_eq!(m.record_routes().count(), 1);
    let e = m.validate_all().unwrap_err();
    assert_eq!((e.kind, offset_of(&buf, b"sip:p2")), (ErrorKind::BadRoute, e.offset));
    let buf = lines(
        "INVITE sip:b@h SIP/2.0",
        &["Via: SIP/2.0/UDP h;branch=z9hG4bK1", "Record-Route: junk"],
    );
    let e = scan_datagram(&buf).unwrap().validate_all().unwrap_err();
    assert_eq!((e.kind, offset_of(&buf, b"junk")), (ErrorKind::BadRoute, e.offset));

    // Offsets count the line breaks skipped before the start line.
    let mut skipped = b"\r\n\r\n".to_vec();
    skipped.extend_from_slice(&buf);
    let e = scan_datagram(&skipped).unwrap().validate_all().unwrap_err();
    assert_eq!(e.offset, offset_of(&skipped, b"junk"));

    // All valid: the iterators hold every value.
    let buf = f1_invite();
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.validate_all(), Ok(()));
}

#[test]
fn header_values_are_found_again_from_the_index() {
    let long_gap = format!("X-Gap{}:{}gap value  ", " ".repeat(200), " \t".repeat(100));
    let folded_gap = format!("X-Fold:\r\n{}\r\n folded value\r\n\tcontinued ", " ".repeat(300));
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
            "X-Empty:",
            "X-Blank:   ",
            "Max-Forwards :\t 70 ",
            &long_gap,
            &folded_gap,
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    let values: Vec<&[u8]> = m.headers().skip(5).map(|h| h.value).collect();
    assert_eq!(
        values,
        [
            &b""[..],
            b"",
            b"70",
            b"gap value",
            format!("{}\r\n folded value\r\n\tcontinued", " ".repeat(300))
                .trim_start()
                .as_bytes(),
        ]
    );
    assert_eq!(m.header(b"x-gap").unwrap().name, b"X-Gap");
    assert_eq!(m.max_forwards(), Some(70));
}

#[test]
fn error_offsets_point_at_the_problem() {
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: x OPTIONS",
        ],
        "",
    );
    let Error { kind, offset } = scan_datagram(&buf).unwrap_err();
    assert_eq!(kind, ErrorKind::BadCSeq);
    assert!(buf[offset..].starts_with(b"x OPTIONS"));
}

#[test]
fn limits_are_enforced() {
    let mut lines = vec!["OPTIONS sip:x SIP/2.0".to_string()];
    for i in 0..20 {
        lines.push(format!("Via: SIP/2.0/UDP h{i};branch=z9hG4bK{i}"));
    }
    lines.extend(["From: <sip:a@h>;tag=1", "To: <sip:x>", "Call-ID: c", "CSeq: 1 OPTIONS"].map(String::from));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let buf = msg(&refs, "");
    assert_eq!(kind_of(&buf), ErrorKind::TooManyVias);

    let mut lines = vec![
        "OPTIONS sip:x SIP/2.0".to_string(),
        "Via: SIP/2.0/UDP h;branch=z9hG4bK1".to_string(),
    ];
    for i in 0..70 {
        lines.push(format!("X-H{i}: v"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(kind_of(&msg(&refs, "")), ErrorKind::TooManyHeaders);

    let small = Options {
        limits: Limits {
            max_message_size: 100,
            ..Limits::default()
        },
        ..Options::default()
    };
    assert_eq!(
        scan_datagram_with(&f1_invite(), &small).unwrap_err().kind,
        ErrorKind::TooLarge
    );
    let routes = format!("Route: {}", vec!["<sip:p;lr>"; 17].join(","));
    let buf = msg(
        &[
            "OPTIONS sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            &routes,
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 OPTIONS",
        ],
        "",
    );
    assert_eq!(kind_of(&buf), ErrorKind::TooManyRoutes);
    // A stream that never ends its headers is cut at the size limit.
    let endless = [b"OPTIONS sip:x SIP/2.0\r\n".to_vec(), b"X: y\r\n".repeat(20000)].concat();
    assert_eq!(scan_stream(&endless).unwrap_err().kind, ErrorKind::TooManyHeaders);
    let endless = [b"OPTIONS sip:x SIP/2.0\r\nX: ".to_vec(), vec![b'y'; 70000]].concat();
    assert_eq!(scan_stream(&endless).unwrap_err().kind, ErrorKind::TooLarge);
}

#[test]
fn extension_methods_and_start_line_shapes() {
    let buf = msg(
        &[
            "FOO sip:x SIP/2.0",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>",
            "Call-ID: c",
            "CSeq: 1 FOO",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.method(), Some(Method::Other(b"FOO")));
    assert!(matches!(m.start_line(), StartLine::Request { version, .. } if version == b"SIP/2.0"));
    // Empty reason phrase.
    let buf = msg(
        &[
            "SIP/2.0 200 ",
            "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            "From: <sip:a@h>;tag=1",
            "To: <sip:x>;tag=2",
            "Call-ID: c",
            "CSeq: 1 FOO",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!((m.status(), m.reason()), (Some(200), Some(&b""[..])));
}

#[test]
fn escaped_and_odd_but_valid() {
    // RFC 4475-style: escaped characters in URIs, unusual tokens, quoted
    // strings with escapes, unknown headers with odd spacing.
    let buf = msg(
        &[
            "INVITE sip:%61lice@example.com;transport=udp SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK-.!%66*_+`'~",
            "From: \"\\\"quoted\\\" name\" <sip:x@example.com>;tag=_tag-!",
            "To: sip:%61lice@example.com",
            "Call-ID: 1@2@3!%*_+`'~",
            "CSeq: 0 INVITE",
            "x-UNKNOWN-header :   odd ; value ,,",
            "Content-Length: 0",
        ],
        "",
    );
    let m = scan_datagram(&buf).unwrap();
    assert_eq!(m.top_via().branch, Some(&b"z9hG4bK-.!%66*_+`'~"[..]));
    assert_eq!(m.from_tag(), Some(&b"_tag-!"[..]));
    assert_eq!(m.call_id(), b"1@2@3!%*_+`'~");
    assert_eq!(m.cseq().seq, 0);
    assert_eq!(m.header(b"X-Unknown-Header").unwrap().value, b"odd ; value ,,");
    let uri = siplb_parser::Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(uri.user, Some(&b"%61lice"[..]));
}
