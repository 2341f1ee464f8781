//! Sample messages shared by the benchmarks: what a carrier edge sees.

/// A realistic INVITE: three Via values (two proxies before us), Record-Route,
/// the usual UA headers and an SDP offer; about 900 bytes.
pub const INVITE: &[u8] = b"INVITE sip:+15551234567@lb.carrier.example.net;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1---7b2e4c1d9a;rport\r\n\
Via: SIP/2.0/UDP 203.0.113.5:5060;received=203.0.113.5;branch=z9hG4bK8f3a91c2e\r\n\
Via: SIP/2.0/UDP 192.0.2.44:5062;received=192.0.2.44;rport=5062;branch=z9hG4bKPjQ2xT7\r\n\
Record-Route: <sip:198.51.100.20;lr;ftag=as4f9c2e1b>\r\n\
Max-Forwards: 68\r\n\
From: \"Customer 4410\" <sip:+4420794104410@customer.example.com>;tag=as4f9c2e1b\r\n\
To: <sip:+15551234567@carrier.example.net;user=phone>\r\n\
Call-ID: 3c4b2a1f5e6d7c8b9a0f1e2d3c4b5a69@192.0.2.44\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:+4420794104410@192.0.2.44:5062;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE\r\n\
Supported: replaces, timer\r\n\
User-Agent: Carrier-SBC/4.2\r\n\
P-Asserted-Identity: <sip:+4420794104410@customer.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 262\r\n\
\r\n\
v=0\r\n\
o=- 1838376129 1838376129 IN IP4 192.0.2.44\r\n\
s=Carrier-SBC\r\n\
c=IN IP4 192.0.2.44\r\n\
t=0 0\r\n\
m=audio 16384 RTP/AVP 8 0 18 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// The 200 OK a backend sends back for [`INVITE`], with siplb's Via on top.
pub const OK_200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsiplb.0.17.3\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-524287-1---7b2e4c1d9a;rport=5060;received=198.51.100.20\r\n\
Via: SIP/2.0/UDP 203.0.113.5:5060;received=203.0.113.5;branch=z9hG4bK8f3a91c2e\r\n\
Via: SIP/2.0/UDP 192.0.2.44:5062;received=192.0.2.44;rport=5062;branch=z9hG4bKPjQ2xT7\r\n\
Record-Route: <sip:127.0.0.1:5060;lr;w=0;d=17>\r\n\
Record-Route: <sip:198.51.100.20;lr;ftag=as4f9c2e1b>\r\n\
From: \"Customer 4410\" <sip:+4420794104410@customer.example.com>;tag=as4f9c2e1b\r\n\
To: <sip:+15551234567@carrier.example.net;user=phone>;tag=ms-8812a\r\n\
Call-ID: 3c4b2a1f5e6d7c8b9a0f1e2d3c4b5a69@192.0.2.44\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:media@127.0.0.1:5081>\r\n\
Content-Length: 0\r\n\
\r\n";

/// An in-dialog BYE from the caller, routed through siplb.
pub const BYE: &[u8] = b"BYE sip:media@127.0.0.1:5081 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.44:5062;rport;branch=z9hG4bKPjBye91\r\n\
Route: <sip:198.51.100.20;lr;ftag=as4f9c2e1b>\r\n\
Route: <sip:127.0.0.1:5060;lr;w=0;d=17>\r\n\
Max-Forwards: 70\r\n\
From: \"Customer 4410\" <sip:+4420794104410@customer.example.com>;tag=as4f9c2e1b\r\n\
To: <sip:+15551234567@carrier.example.net;user=phone>;tag=ms-8812a\r\n\
Call-ID: 3c4b2a1f5e6d7c8b9a0f1e2d3c4b5a69@192.0.2.44\r\n\
CSeq: 103 BYE\r\n\
Content-Length: 0\r\n\
\r\n";

/// The sample messages by name: `invite`, `200ok`, `bye`.
pub fn sample(name: &str) -> Option<&'static [u8]> {
    match name {
        "invite" => Some(INVITE),
        "200ok" => Some(OK_200),
        "bye" => Some(BYE),
        _ => None,
    }
}

/// The edits siplb makes when relaying each sample message.
pub fn relay_edits(name: &str) -> &'static [siplb_parser::Edit<'static>] {
    use siplb_parser::Edit;
    match name {
        // Initial request: our Via on top, Record-Route, Max-Forwards - 1.
        "invite" => &[
            Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsiplb.0.17.3"),
            Edit::InsertRecordRoute(b"<sip:127.0.0.1:5060;lr;w=0;d=17>"),
            Edit::SetMaxForwards(67),
        ],
        // In-dialog request: our Via on top, our Route entry off, MF - 1.
        "bye" => &[
            Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsiplb.0.18.1"),
            Edit::RemoveFirstRoute,
            Edit::SetMaxForwards(69),
        ],
        // Responses: our Via off.
        _ => &[Edit::RemoveTopVia],
    }
}
