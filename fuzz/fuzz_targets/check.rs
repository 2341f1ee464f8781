// Structural checks shared by the `scan` fuzz target and the parser's
// corpus test (`parser/tests/fuzz_corpus.rs` includes this file), so the
// seed corpus is exercised on stable Rust in every CI run.

/// True when `part` lies inside `whole` (an empty slice anywhere counts).
fn within(whole: &[u8], part: &[u8]) -> bool {
    if part.is_empty() {
        return true;
    }
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    w.start <= p.start && p.end <= w.end
}

/// Scans `data` every way there is and checks what a successful scan
/// promises: every accessor is total and returns slices of the input, the
/// message length is in bounds, and a proxy's rewrite scans again.
pub fn check(data: &[u8]) {
    use siplb_parser::rewrite::rewrite;
    use siplb_parser::{scan, scan_datagram, scan_stream, Edit, ErrorKind, Status};

    if let Ok(Status::Complete(m)) = scan_stream(data) {
        assert!(m.len() <= data.len());
        assert!(m.content_length().is_some());
    }
    let _ = scan(data);
    let Ok(m) = scan_datagram(data) else { return };
    assert!(m.len() <= data.len() && m.body_offset() <= m.len());
    assert!(within(data, m.as_bytes()) && within(data, m.body()));
    assert!(within(data, m.call_id()) && !m.call_id().is_empty());
    if let Some(uri) = m.request_uri() {
        assert!(within(data, uri));
    }
    assert!(m.via_count() >= 1);
    for v in m.vias() {
        assert!(within(data, v.value) && within(data, v.host) && !v.host.is_empty());
        assert!(within(data, v.params));
        if let Some(b) = v.branch {
            assert!(within(data, b));
        }
    }
    // Values below the top are checked lazily: the parsed iterators stop
    // at the first bad one, and with none they hold every value.
    assert!(m.vias().count() <= m.via_count());
    assert!(m.routes().count() <= m.route_values().len());
    assert!(m.record_routes().count() <= m.record_route_values().len());
    assert!(m.vias().next() == Some(m.top_via()));
    if m.validate_all().is_ok() {
        assert_eq!(m.vias().count(), m.via_count());
        assert_eq!(m.routes().count(), m.route_values().len());
        assert_eq!(m.record_routes().count(), m.record_route_values().len());
    }
    for v in m.via_values().chain(m.route_values()).chain(m.record_route_values()) {
        assert!(within(data, v) && !v.is_empty());
    }
    for a in m.routes().chain(m.record_routes()).chain(m.contacts()) {
        assert!(within(data, a.uri) && within(data, a.params));
        let _ = a.parsed_uri();
    }
    for h in m.headers() {
        assert!(within(data, h.name) && within(data, h.value));
        assert!(m.header(h.name).is_some());
    }
    assert!(within(data, m.from().uri) && within(data, m.to().uri));
    let _ = (m.from_tag(), m.to_tag(), m.cseq(), m.max_forwards(), m.content_type(), m.start_line());

    let edits = [
        Edit::TopViaReceived {
            received: b"192.0.2.1",
            rport: Some(b"5060"),
        },
        Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKfuzz"),
        Edit::InsertRecordRoute(b"<sip:127.0.0.1;lr>"),
        Edit::SetMaxForwards(m.max_forwards().unwrap_or(70).saturating_sub(1)),
    ];
    if let Ok(out) = rewrite(&m, &edits) {
        let bytes = out.to_vec();
        assert_eq!(bytes.len(), out.len());
        // The output scans again, unless the added lines push it over a
        // limit (a message already at the Via or header limit).
        match scan_datagram(&bytes) {
            Ok(again) => {
                assert_eq!(again.via_count(), m.via_count() + 1);
                assert_eq!(again.body(), m.body());
                assert_eq!(again.call_id(), m.call_id());
            }
            Err(e) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::TooManyVias | ErrorKind::TooManyRoutes | ErrorKind::TooManyHeaders | ErrorKind::TooLarge
                ),
                "a rewritten message failed to scan: {e}"
            ),
        }
    }
    if m.via_count() > 1 {
        if let Ok(out) = rewrite(&m, &[Edit::RemoveTopVia]) {
            let bytes = out.to_vec();
            // The values below the new top were not all checked by the
            // scan (only the second Via of a response): a bad one fails the
            // scan now, as validate_all said.
            match scan_datagram(&bytes) {
                Ok(again) => assert_eq!(again.via_count(), m.via_count() - 1),
                Err(e) => assert!(
                    e.kind == ErrorKind::BadVia && m.validate_all().is_err(),
                    "a message without its top Via failed to scan: {e}"
                ),
            }
        }
    }
}
