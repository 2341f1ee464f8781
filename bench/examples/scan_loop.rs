//! Scans (and rewrites) a sample message in a loop, for profilers and for
//! instruction counts that a noisy machine cannot disturb:
//!
//! ```sh
//! cargo build --release -p siplb-bench --example scan_loop
//! valgrind --tool=callgrind target/release/examples/scan_loop 10000 invite rewrite
//! ```
//!
//! Arguments: iterations, message (`invite`, `200ok`, `bye`), mode (`scan`,
//! `rewrite` = scan + the proxy's edits + copy out, `rsip` = parse with the
//! rsip crate, `rsip-rewrite` = rsip parse + serialize).
use siplb_bench::{relay_edits, sample};
use siplb_parser::rewrite::rewrite;
use siplb_parser::scan_datagram;
use std::hint::black_box;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let name = args.next().unwrap_or_else(|| "invite".into());
    let mode = args.next().unwrap_or_else(|| "rewrite".into());
    let msg = sample(&name).expect("message: invite, 200ok or bye");
    let edits = relay_edits(&name);
    let mut out = [0u8; 2048];
    let mut total = 0usize;
    for _ in 0..n {
        total += match mode.as_str() {
            "scan" => scan_datagram(black_box(msg)).unwrap().len(),
            "rewrite" => {
                let m = scan_datagram(black_box(msg)).unwrap();
                rewrite(&m, edits).unwrap().write_to(&mut out).unwrap()
            }
            "rsip" => rsip::SipMessage::try_from(black_box(msg)).unwrap().body().len(),
            "rsip-rewrite" => rsip::SipMessage::try_from(black_box(msg)).unwrap().to_string().len(),
            other => panic!("unknown mode {other}"),
        };
    }
    println!("{total}");
}
