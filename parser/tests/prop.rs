//! Property tests: generated messages with random header order, case,
//! compact forms, spacing and value packing scan to the fields they were
//! built from; rewriting then scanning gives exactly the expected headers;
//! `scan` never panics on arbitrary or mutated input.

use proptest::prelude::*;
use siplb_parser::rewrite::rewrite;
use siplb_parser::{scan, scan_datagram, scan_stream, Edit, Method, Status};

#[derive(Clone, Debug)]
struct Via {
    host: String,
    port: Option<u16>,
    branch: String,
}

#[derive(Clone, Debug)]
struct Spec {
    request: bool,
    method: &'static str,
    code: u16,
    call_id: String,
    cseq: u32,
    from_tag: String,
    to_tag: Option<String>,
    vias: Vec<Via>,
    via_groups: Vec<usize>,
    routes: Vec<String>,
    record_routes: Vec<String>,
    max_forwards: Option<u8>,
    extra: Vec<(String, String)>,
    body: String,
    with_length: bool,
}

/// How a header is written: name spelling and separator.
#[derive(Clone, Debug)]
struct Style {
    compact: bool,
    case: u8,
    sep: &'static str,
    comma: &'static str,
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,20}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,8}){0,3}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("[2001:db8::{a:x}:{b:x}]")),
    ]
}

fn via() -> impl Strategy<Value = Via> {
    (host(), proptest::option::of(1u16..), "[a-zA-Z0-9]{1,16}").prop_map(|(host, port, b)| Via {
        host,
        port,
        branch: format!("z9hG4bK{b}"),
    })
}

fn spec() -> impl Strategy<Value = Spec> {
    let methods = prop_oneof![
        Just("INVITE"),
        Just("ACK"),
        Just("BYE"),
        Just("CANCEL"),
        Just("OPTIONS"),
        Just("REGISTER"),
        Just("INFO")
    ];
    (
        (
            any::<bool>(),
            methods,
            100u16..700,
            token(),
            0u32..(1 << 31),
            token(),
            proptest::option::of(token()),
        ),
        (
            proptest::collection::vec(via(), 1..6),
            proptest::collection::vec(1usize..4, 0..6),
            proptest::collection::vec(host(), 0..4),
            proptest::collection::vec(host(), 0..4),
            proptest::option::of(any::<u8>()),
        ),
        (
            proptest::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..4),
            "[ -~\r\n]{0,200}",
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (request, method, code, call_id, cseq, from_tag, to_tag),
                (vias, via_groups, routes, record_routes, max_forwards),
                (extra, body, with_length),
            )| Spec {
                request,
                method,
                code,
                call_id,
                cseq,
                from_tag,
                to_tag,
                vias,
                via_groups,
                routes: routes.into_iter().map(|h| format!("<sip:{h};lr>")).collect(),
                record_routes: record_routes.into_iter().map(|h| format!("<sip:{h};lr>")).collect(),
                max_forwards,
                extra: extra.into_iter().map(|(n, v)| (n, v.trim().to_string())).collect(),
                body,
                with_length,
            },
        )
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        0u8..3,
        prop_oneof![Just(": "), Just(":"), Just(" : "), Just(":\t"), Just(":  \r\n ")],
        prop_oneof![Just(", "), Just(","), Just(" ,\t"), Just(",\r\n  ")],
    )
        .prop_map(|(compact, case, sep, comma)| Style {
            compact,
            case,
            sep,
            comma,
        })
}

fn spell(long: &str, compact: Option<&str>, st: &Style) -> String {
    let name = match compact {
        Some(c) if st.compact => c.to_string(),
        _ => long.to_string(),
    };
    match st.case {
        0 => name,
        1 => name.to_ascii_lowercase(),
        _ => name.to_ascii_uppercase(),
    }
}

fn via_text(v: &Via) -> String {
    match v.port {
        Some(p) => format!("SIP/2.0/UDP {}:{};branch={}", v.host, p, v.branch),
        None => format!("SIP/2.0/UDP {};branch={}", v.host, v.branch),
    }
}

/// Renders the spec; `order` permutes the header lines.
fn render(spec: &Spec, styles: &[Style], order: &[usize]) -> Vec<u8> {
    let st = |i: usize| &styles[i % styles.len()];
    let mut lines: Vec<String> = Vec::new();
    // Via values packed into lines as via_groups says; Via lines keep their
    // relative order (their order is meaningful), other lines are permuted.
    let mut via_lines = Vec::new();
    let mut rest = &spec.vias[..];
    let mut g = spec.via_groups.iter();
    while !rest.is_empty() {
        let n = (*g.next().unwrap_or(&1)).min(rest.len());
        let s = st(via_lines.len());
        let values: Vec<String> = rest[..n].iter().map(via_text).collect();
        via_lines.push(format!(
            "{}{}{}",
            spell("Via", Some("v"), s),
            s.sep,
            values.join(s.comma)
        ));
        rest = &rest[n..];
    }
    let method = if spec.request { spec.method } else { "INVITE" };
    let cseq_method = method;
    lines.push(format!(
        "{}{}{}",
        spell("Call-ID", Some("i"), st(1)),
        st(1).sep,
        spec.call_id
    ));
    lines.push(format!(
        "{}{}{} {}",
        spell("CSeq", None, st(2)),
        st(2).sep,
        spec.cseq,
        cseq_method
    ));
    lines.push(format!(
        "{}{}<sip:alice@example.com>;tag={}",
        spell("From", Some("f"), st(3)),
        st(3).sep,
        spec.from_tag
    ));
    let to_tag = spec.to_tag.as_ref().map(|t| format!(";tag={t}")).unwrap_or_default();
    lines.push(format!(
        "{}{}\"Bob, B\" <sip:bob@example.com>{}",
        spell("To", Some("t"), st(4)),
        st(4).sep,
        to_tag
    ));
    if let Some(mf) = spec.max_forwards {
        lines.push(format!("{}{}{}", spell("Max-Forwards", None, st(5)), st(5).sep, mf));
    }
    for (n, v) in &spec.extra {
        lines.push(format!("{n}: {v}"));
    }
    if spec.with_length {
        lines.push(format!(
            "{}{}{}",
            spell("Content-Length", Some("l"), st(6)),
            st(6).sep,
            spec.body.len()
        ));
    }
    // Permute the independent lines.
    let mut permuted: Vec<String> = Vec::new();
    let mut pool = lines;
    for &o in order {
        if pool.is_empty() {
            break;
        }
        permuted.push(pool.remove(o % pool.len()));
    }
    permuted.extend(pool);
    // Route and Record-Route lines keep their relative order too.
    let mut all = via_lines;
    if !spec.routes.is_empty() {
        all.push(format!(
            "{}{}{}",
            spell("Route", None, st(7)),
            st(7).sep,
            spec.routes.join(st(7).comma)
        ));
    }
    if !spec.record_routes.is_empty() {
        let s = st(8);
        all.push(format!(
            "{}{}{}",
            spell("Record-Route", None, s),
            s.sep,
            spec.record_routes.join(s.comma)
        ));
    }
    all.extend(permuted);
    let start = if spec.request {
        format!("{method} sip:bob@example.com SIP/2.0")
    } else {
        format!("SIP/2.0 {} Whatever Reason", spec.code)
    };
    let mut text = start;
    for l in all {
        text.push_str("\r\n");
        text.push_str(&l);
    }
    text.push_str("\r\n\r\n");
    text.push_str(&spec.body);
    text.into_bytes()
}

fn check_fields(spec: &Spec, buf: &[u8]) -> Result<(), TestCaseError> {
    let m = scan_datagram(buf).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(buf))))?;
    if spec.request {
        prop_assert_eq!(m.method(), Some(Method::from_token(spec.method.as_bytes())));
        prop_assert_eq!(m.request_uri(), Some(&b"sip:bob@example.com"[..]));
    } else {
        prop_assert_eq!(m.status(), Some(spec.code));
        prop_assert_eq!(m.reason(), Some(&b"Whatever Reason"[..]));
    }
    prop_assert_eq!(m.call_id(), spec.call_id.as_bytes());
    prop_assert_eq!(m.cseq().seq, spec.cseq);
    prop_assert_eq!(m.from_tag(), Some(spec.from_tag.as_bytes()));
    prop_assert_eq!(m.to_tag(), spec.to_tag.as_deref().map(str::as_bytes));
    prop_assert_eq!(m.to().display_name, Some(&b"\"Bob, B\""[..]));
    prop_assert_eq!(m.max_forwards(), spec.max_forwards);
    let vias: Vec<(Vec<u8>, Option<u16>, Vec<u8>)> = m
        .vias()
        .map(|v| (v.host.to_vec(), v.port, v.branch.unwrap_or_default().to_vec()))
        .collect();
    let expected: Vec<(Vec<u8>, Option<u16>, Vec<u8>)> = spec
        .vias
        .iter()
        .map(|v| (v.host.clone().into_bytes(), v.port, v.branch.clone().into_bytes()))
        .collect();
    prop_assert_eq!(vias, expected);
    let routes: Vec<&[u8]> = m.route_values().collect();
    let expected: Vec<&[u8]> = spec.routes.iter().map(|r| r.as_bytes()).collect();
    prop_assert_eq!(routes, expected);
    let rr: Vec<&[u8]> = m.record_route_values().collect();
    let expected: Vec<&[u8]> = spec.record_routes.iter().map(|r| r.as_bytes()).collect();
    prop_assert_eq!(rr, expected);
    prop_assert_eq!(m.body(), spec.body.as_bytes());
    for (n, v) in &spec.extra {
        let found = m.headers_named(n.as_bytes()).any(|h| h.value == v.as_bytes());
        prop_assert!(found, "extra header {} missing", n);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_scan_to_their_fields(
        spec in spec(),
        styles in proptest::collection::vec(style(), 1..10),
        order in proptest::collection::vec(0usize..16, 0..12),
    ) {
        let buf = render(&spec, &styles, &order);
        check_fields(&spec, &buf)?;
        // The same message on a stream, followed by garbage, frames the same
        // way when it has a Content-Length.
        if spec.with_length {
            let mut stream = buf.clone();
            stream.extend_from_slice(b"INVITE sip:next");
            match scan_stream(&stream) {
                Ok(Status::Complete(m)) => prop_assert_eq!(m.len(), buf.len()),
                other => prop_assert!(false, "expected complete, got {:?}", other),
            }
        }
    }

    #[test]
    fn rewrite_then_scan_gives_the_expected_headers(
        spec in spec(),
        styles in proptest::collection::vec(style(), 1..10),
        order in proptest::collection::vec(0usize..16, 0..12),
        remove_route in any::<bool>(),
        mf in any::<u8>(),
    ) {
        let buf = render(&spec, &styles, &order);
        let m = scan_datagram(&buf).unwrap();
        let mut edits = vec![
            Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKnew"),
            Edit::InsertRecordRoute(b"<sip:127.0.0.1:5060;lr>"),
            Edit::SetMaxForwards(mf),
        ];
        let remove_route = remove_route && !spec.routes.is_empty();
        if remove_route {
            edits.push(Edit::RemoveFirstRoute);
        }
        let out = rewrite(&m, &edits).unwrap().to_vec();
        let mut expected = spec.clone();
        expected.vias.insert(0, Via { host: "127.0.0.1".into(), port: Some(5100), branch: "z9hG4bKnew".into() });
        expected.record_routes.insert(0, "<sip:127.0.0.1:5060;lr>".into());
        expected.max_forwards = Some(mf);
        if remove_route {
            expected.routes.remove(0);
        }
        check_fields(&expected, &out)?;
        prop_assert_eq!(header_list(&out), expected_header_list(&m, remove_route, mf));

        // And removing the Via we added restores the original Via list.
        let m2 = scan_datagram(&out).unwrap();
        let back = rewrite(&m2, &[Edit::RemoveTopVia]).unwrap().to_vec();
        let mut original_vias = expected.clone();
        original_vias.vias.remove(0);
        check_fields(&original_vias, &back)?;
    }

    #[test]
    fn scan_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = scan(&bytes);
        let _ = scan_stream(&bytes);
        if let Ok(m) = scan_datagram(&bytes) {
            touch_everything(&m);
        }
    }

    #[test]
    fn scan_never_panics_on_mutated_messages(
        spec in spec(),
        styles in proptest::collection::vec(style(), 1..4),
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut buf = render(&spec, &styles, &[]);
        for (at, byte, op) in mutations {
            if buf.is_empty() { break; }
            let i = at % buf.len();
            match op {
                0 => buf[i] = byte,
                1 => { buf.remove(i); }
                _ => buf.insert(i, byte),
            }
        }
        let _ = scan(&buf);
        if let Ok(m) = scan_datagram(&buf) {
            touch_everything(&m);
            let _ = rewrite(&m, &[Edit::RemoveTopVia, Edit::SetMaxForwards(1), Edit::InsertRecordRoute(b"<sip:x;lr>")]);
        }
    }
}

type HeaderList = Vec<(String, String)>;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every header line of a message, in order, as (name, value).
fn header_list(buf: &[u8]) -> HeaderList {
    let m = scan_datagram(buf).unwrap();
    m.headers().map(|h| (text(h.name), text(h.value))).collect()
}

/// What the header lines of `m` must be after the proxy's edits, computed
/// independently of the rewriter: the new Via line before the first Via
/// line; the new Record-Route line before the first Record-Route line or,
/// without one, after the last Via line; Max-Forwards after the last Via
/// line when it was absent (after the Record-Route when both land there, as
/// inserts at one offset keep the edits' order); Max-Forwards' value replaced when present; and the first
/// Route value removed from its line (the line with it when it was alone).
fn expected_header_list(m: &siplb_parser::Message<'_>, remove_route: bool, mf: u8) -> HeaderList {
    use siplb_parser::HeaderKind;
    let headers: Vec<_> = m.headers().collect();
    let last_via = headers.iter().rposition(|h| h.kind == HeaderKind::Via).unwrap();
    let first_rr = headers.iter().position(|h| h.kind == HeaderKind::RecordRoute);
    let first_route = headers.iter().position(|h| h.kind == HeaderKind::Route);
    let has_mf = headers.iter().any(|h| h.kind == HeaderKind::MaxForwards);
    let via = (
        "Via".to_string(),
        "SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKnew".to_string(),
    );
    let rr = ("Record-Route".to_string(), "<sip:127.0.0.1:5060;lr>".to_string());
    let mf_line = ("Max-Forwards".to_string(), mf.to_string());
    let mut out = HeaderList::new();
    let mut via_done = false;
    for (i, h) in headers.iter().enumerate() {
        if h.kind == HeaderKind::Via && !via_done {
            out.push(via.clone());
            via_done = true;
        }
        // Inserts at the same offset keep the order of the edits (the
        // Record-Route edit comes before Max-Forwards): a Record-Route line
        // right after the last Via line is handled with the Via below.
        if Some(i) == first_rr && i != last_via + 1 {
            out.push(rr.clone());
        }
        let (name, mut value) = (text(h.name), text(h.value));
        if h.kind == HeaderKind::MaxForwards {
            value = mf.to_string();
        }
        let mut keep = true;
        if remove_route && Some(i) == first_route {
            // Values of this line after the first, as written.
            let values: Vec<&[u8]> = m.route_values().collect();
            let on_this_line = |v: &[u8]| {
                let (a, b) = (h.value.as_ptr() as usize, v.as_ptr() as usize);
                b >= a && b < a + h.value.len()
            };
            match values.get(1).filter(|v| on_this_line(v)) {
                Some(second) => value = text(&h.value[second.as_ptr() as usize - h.value.as_ptr() as usize..]),
                None => keep = false,
            }
        }
        if keep {
            out.push((name, value));
        }
        if i == last_via {
            if first_rr.is_none() || first_rr == Some(last_via + 1) {
                out.push(rr.clone());
            }
            if !has_mf {
                out.push(mf_line.clone());
            }
        }
    }
    out
}

/// Calls every accessor: after a successful scan none may panic.
fn touch_everything(m: &siplb_parser::Message<'_>) {
    let _ = (
        m.start_line(),
        m.method(),
        m.request_uri(),
        m.status(),
        m.reason(),
        m.top_via(),
    );
    let _ = (
        m.call_id(),
        m.cseq(),
        m.from(),
        m.to(),
        m.from_tag(),
        m.to_tag(),
        m.max_forwards(),
    );
    let _ = (m.content_length(), m.content_type(), m.body(), m.len(), m.as_bytes());
    let _ = m.vias().count() + m.routes().count() + m.record_routes().count() + m.contacts().count();
    let _ = m.headers().count() + m.via_values().count() + m.route_values().count();
    for h in m.headers() {
        let _ = m.header(h.name);
    }
}
