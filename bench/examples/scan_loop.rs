//! Scans (and rewrites) the sample INVITE in a loop; for profilers and
//! instruction counting: `valgrind --tool=callgrind target/release/examples/scan_loop 10000`.
use siplb_bench::INVITE;
use siplb_parser::rewrite::rewrite;
use siplb_parser::{scan_datagram, Edit};
use std::hint::black_box;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let edits = [
        Edit::PrependVia(b"SIP/2.0/UDP 127.0.0.1:5100;branch=z9hG4bKsiplb.0.17.3"),
        Edit::InsertRecordRoute(b"<sip:127.0.0.1:5060;lr;w=0;d=17>"),
        Edit::SetMaxForwards(67),
    ];
    let mut out = [0u8; 2048];
    let mut total = 0;
    for _ in 0..n {
        let m = scan_datagram(black_box(INVITE)).unwrap();
        let r = rewrite(&m, &edits).unwrap();
        total += r.write_to(&mut out).unwrap();
    }
    println!("{total}");
}
