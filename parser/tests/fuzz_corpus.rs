//! Runs the fuzz target's structural checks over its seed corpus and the
//! test fixtures on stable Rust, so every CI run exercises them; libFuzzer
//! (`cargo fuzz run scan` in `fuzz/`) explores beyond them.

include!("../../fuzz/fuzz_targets/check.rs");

#[test]
fn seed_corpus_passes_the_structural_checks() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut seen = 0;
    let mut scanned = 0;
    for dir in [format!("{root}/../fuzz/corpus/scan"), format!("{root}/tests/data")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            check(&data);
            // Every prefix and a few corruptions too.
            for cut in (0..data.len()).step_by(7) {
                check(&data[..cut]);
            }
            let mut flipped = data.clone();
            for i in (0..flipped.len()).step_by(13) {
                flipped[i] ^= 0x20;
                check(&flipped);
            }
            seen += 1;
            scanned += usize::from(siplb_parser::scan_datagram(&data).is_ok());
        }
    }
    assert!(seen >= 12, "seed corpus missing ({seen} files)");
    assert!(scanned >= 10, "most seeds must be valid messages ({scanned} of {seen})");
}
