//! The shared, lock-free load counters (`siplb::lb`) under N threads.
//!
//! Every thread runs the same loop concurrently, released together by a
//! spinning barrier (they start within nanoseconds of each other, not a
//! futex wake-up apart): reserve one call with `Table::load_balance`
//! (selection, then compare-and-swap against the capacity), give it back
//! with `Table::release`. Reported time is per operation *per thread*: the
//! slowest thread's time divided by its operation count. Cases:
//! - `private_line`: the reference, without siplb: each thread
//!   compare-and-swaps up and down an atomic alone on its own cache lines,
//!   what `own_dest` would cost if the table shared nothing else;
//! - `same_dest`: every thread on the same destination (one group of one):
//!   the worst case, one cache line bounced between the cores;
//! - `own_dest`: each thread on its own destination (one group each):
//!   nothing is shared, so the ratio N = 2 / N = 1 should be that of
//!   `private_line`;
//! - `select8`: least-loaded selection among 8 destinations of one group
//!   (capacities 400..=1100, background load leaving 300 free on each: a
//!   balanced steady state, where concurrent calls spread over ties).
//!
//! N = 1, 2, 4; on a 2-core machine N = 4 shows oversubscription (a thread
//! preempted for a time slice counts it in its time per operation). On a
//! shared machine the threads only run concurrently if they get the cores:
//! see `perf/RESULTS.md` for how the figures there were taken.
//!
//! Run: `cargo bench -p siplb-bench --bench load_counters -- --quick`

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use siplb::config::Config;
use siplb::lb::{Flags, ResourceSet, Table, Tried};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREADS: [usize; 3] = [1, 2, 4];

/// `load_balance` calls refused although every destination has room (each
/// thread holds at most one call, far below the capacities): only
/// compare-and-swap retries running out under contention can cause that.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// A table from `(group, capacity)` pairs, one destination each, offering
/// the single resource `pstn` (id 0).
fn table(dests: &[(u32, u32)]) -> Table {
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:5060\"]\n");
    for (i, (group, cap)) in dests.iter().enumerate() {
        text.push_str(&format!(
            "[[destinations]]\nid = {}\ngroup = {group}\nuri = \"sip:127.0.0.1:{}\"\nresources = \"pstn={cap}\"\n",
            i + 1,
            6000 + i
        ));
    }
    let c = Config::parse(&text).expect("bench config");
    Table::new(&c.destinations, &c.resource_names)
}

/// Reports (and resets) the refusals counted since the last call.
fn report_refused(case: &str, n: usize) {
    let refused = REFUSED.swap(0, Ordering::Relaxed);
    if refused > 0 {
        eprintln!("load_counters/{case}/{n}: {refused} load_balance calls refused (Full) with room left");
    }
}

fn first(_: usize) -> usize {
    0
}

/// One call: reserve in `group`, release.
fn call(t: &Table, group: u32, set: ResourceSet) {
    match t.load_balance(black_box(group), set, Flags::default(), &Tried::default(), &mut first) {
        Ok(hold) => t.release(black_box(hold)),
        Err(_) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An atomic alone on its pair of cache lines (128 bytes: the adjacent-line
/// prefetcher of x86 fetches lines in pairs).
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU32);

/// The reference operation: what a reservation and its release do to one
/// counter, nothing else.
fn private(line: &Line) {
    let v = line.0.load(Ordering::Relaxed);
    let _ = line.0.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Relaxed);
    let _ = line
        .0
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| v.checked_sub(1));
}

/// Runs `iters` calls on each of `n` threads at once; thread `i` uses group
/// `group(i)`. Returns the slowest thread's time.
fn concurrent(t: &Table, n: usize, iters: u64, group: impl Fn(usize) -> u32 + Sync) -> Duration {
    let set = ResourceSet::EMPTY.with(0);
    on_threads(n, iters, |i| {
        let g = group(i);
        move || call(t, g, set)
    })
}

/// Runs `iters` times, on each of `n` threads at once, the operation
/// `op(i)` makes for thread `i`. Returns the slowest thread's time.
fn on_threads<F, O>(n: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize) -> O + Sync,
    O: FnMut(),
{
    let arrived = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (arrived, op) = (&arrived, &op);
                s.spawn(move || {
                    let mut op = op(i);
                    arrived.fetch_add(1, Ordering::AcqRel);
                    let mut spins = 0u32;
                    while arrived.load(Ordering::Acquire) < n {
                        spins += 1;
                        // Oversubscribed (n > cores): let the others arrive.
                        if spins % 1024 == 0 {
                            std::thread::yield_now();
                        }
                        std::hint::spin_loop();
                    }
                    let start = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn load_counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("load_counters");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));

    let max = THREADS[THREADS.len() - 1];
    let lines: Vec<Line> = (0..max).map(|_| Line::default()).collect();
    for n in THREADS {
        g.bench_with_input(BenchmarkId::new("private_line", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                on_threads(n, iters, |i| {
                    let line = &lines[i];
                    move || private(black_box(line))
                })
            })
        });
    }

    let same = table(&[(1, 1_000_000)]);
    for n in THREADS {
        g.bench_with_input(BenchmarkId::new("same_dest", n), &n, |b, &n| {
            b.iter_custom(|iters| concurrent(&same, n, iters, |_| 1))
        });
        report_refused("same_dest", n);
    }

    let own = table(&(1..=max as u32).map(|g| (g, 1_000_000)).collect::<Vec<_>>());
    for n in THREADS {
        g.bench_with_input(BenchmarkId::new("own_dest", n), &n, |b, &n| {
            b.iter_custom(|iters| concurrent(&own, n, iters, |i| i as u32 + 1))
        });
        report_refused("own_dest", n);
    }

    let caps: Vec<(u32, u32)> = (0..8).map(|i| (1, 400 + 100 * i)).collect();
    let select = table(&caps);
    let set = ResourceSet::EMPTY.with(0);
    for (dest, &(_, cap)) in caps.iter().enumerate() {
        for _ in 0..cap - 300 {
            select.count_call(dest as u16, set).expect("background load");
        }
    }
    for n in THREADS {
        g.bench_with_input(BenchmarkId::new("select8", n), &n, |b, &n| {
            b.iter_custom(|iters| concurrent(&select, n, iters, |_| 1))
        });
        report_refused("select8", n);
    }
    g.finish();
}

criterion_group!(benches, load_counters);
criterion_main!(benches);
