//! Parser throughput: scan, and scan + the proxy's rewrite, of a realistic
//! INVITE, a 200 OK and a BYE; the same messages parsed by `rsip` in the
//! same run as the baseline.
//!
//! Run: `cargo bench -p siplb-bench --bench parser`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use siplb_bench::{relay_edits, BYE, INVITE, OK_200};
use siplb_parser::rewrite::rewrite;
use siplb_parser::scan_datagram;

const MESSAGES: [(&str, &[u8]); 3] = [("invite", INVITE), ("200ok", OK_200), ("bye", BYE)];

fn scan_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    for (name, msg) in MESSAGES {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("siplb", name), msg, |b, msg| {
            b.iter(|| {
                let m = scan_datagram(black_box(msg)).unwrap();
                black_box(m.top_via().branch);
            })
        });
        g.bench_with_input(BenchmarkId::new("rsip", name), msg, |b, msg| {
            b.iter(|| black_box(rsip::SipMessage::try_from(black_box(msg)).unwrap()))
        });
    }
    g.finish();
}

fn scan_and_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_rewrite");
    let mut out = vec![0u8; 4096];
    for (name, msg) in MESSAGES {
        let edits = relay_edits(name);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("siplb", name), msg, |b, msg| {
            b.iter(|| {
                let m = scan_datagram(black_box(msg)).unwrap();
                let r = rewrite(&m, edits).unwrap();
                black_box(r.write_to(&mut out).unwrap());
            })
        });
        // rsip's equivalent: parse, then serialize (its model owns the
        // headers, so editing means building the message again).
        g.bench_with_input(BenchmarkId::new("rsip", name), msg, |b, msg| {
            b.iter(|| {
                let m = rsip::SipMessage::try_from(black_box(msg)).unwrap();
                black_box(m.to_string().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, scan_only, scan_and_rewrite);
criterion_main!(benches);
