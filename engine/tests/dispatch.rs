//! The dispatcher wired into the sans-IO core, on the simulated network:
//! distribution per algorithm and weight, failover in the algorithm's order,
//! disabled destinations, dispatched calls, and a seeded random run mixing
//! dispatched REGISTERs with load-balanced calls.
//!
//! Replay one random seed: `SIPLB_SIM_SEED=1234 cargo test -p siplb --test dispatch random`.

mod sim;

use std::time::Duration;

use sim::*;

const CLEAN: Conditions = Conditions {
    loss: 0.0,
    duplicate: 0.0,
    max_delay_ms: 5,
    corrupt: 0.0,
};

/// Where the registering client sends from.
const CLIENT: &str = "127.0.0.3:6100";

/// Destinations on 5081.. in set 1 with `(weight, priority)`, a REGISTER
/// rule `dispatch = { set = 1, algorithm, flags }` first, then the usual
/// rules of [`config_text`].
fn dispatch_config(dests: &[(u32, i32)], algorithm: &str, flags: &str, extra: &str) -> String {
    let mut t = format!(
        "[server]\nlisten = [\"{PUBLIC}\"]\nworkers = 1\ninternal_address = \"127.0.0.1\"\ninternal_port_base = 5070\n\
         [timers]\nt1 = \"500ms\"\nt2 = \"4s\"\nfr_timeout = \"2s\"\nfr_inv_timeout = \"4s\"\ndialog_lifetime = \"60s\"\n{extra}\n"
    );
    for (i, (weight, priority)) in dests.iter().enumerate() {
        t.push_str(&format!(
            "[[destinations]]\nid = {}\ngroup = 1\nuri = \"sip:127.0.0.1:{}\"\nresources = \"pstn=5;vm=5\"\n\
             weight = {weight}\npriority = {priority}\n",
            i + 1,
            5081 + i
        ));
    }
    t.push_str(&format!(
        "[[rules]]\nmethod = [\"REGISTER\", \"MESSAGE\"]\ndispatch = {{ set = 1, algorithm = \"{algorithm}\", flags = \"{flags}\" }}\n\
         [[rules]]\nmethod = \"INVITE\"\nruri_user = \"^D\"\ndispatch = {{ set = 1, algorithm = \"{algorithm}\", flags = \"{flags}\" }}\n\
         [[rules]]\nmethod = \"INVITE\"\nruri_user = \"^VM_\"\nload_balance = {{ group = 1, resources = \"vm\" }}\n\
         [[rules]]\nmethod = \"INVITE\"\nload_balance = {{ group = 1, resources = \"pstn\" }}\n\
         [[rules]]\nreply = {{ code = 405 }}\n"
    ));
    t
}

/// A world whose destinations answer non-INVITEs by `answers[i]` (a code
/// or silence) and INVITEs with 180/200.
fn world(dests: &[(u32, i32)], algorithm: &str, flags: &str, answers: &[Option<u16>], seed: u64) -> World {
    world_from(
        &dispatch_config(dests, algorithm, flags, ""),
        dests.len(),
        answers,
        seed,
    )
}

fn world_from(text: &str, n: usize, answers: &[Option<u16>], seed: u64) -> World {
    let mut w = World::new(text, seed, CLEAN);
    for i in 0..n {
        let mut u = Uas::new(
            addr(&format!("127.0.0.1:{}", 5081 + i)),
            Box::new(|_| {
                (
                    CalleePlan::Answer {
                        ring: Duration::from_millis(50),
                        answer: Duration::from_millis(100),
                    },
                    None,
                )
            }),
        );
        let a = answers.get(i).copied().unwrap_or(Some(200));
        u.non_invite = Box::new(move |_| a);
        w.uas.push(u);
    }
    w
}

/// A REGISTER from [`CLIENT`] with Call-ID `reg-{n}` and From/To user `user`.
fn register(n: u32, user: &str) -> Vec<u8> {
    Req {
        method: "REGISTER",
        ruri: &format!("sip:{PUBLIC}"),
        via: addr(CLIENT),
        branch: &format!("z9hG4bKreg{n}"),
        from: &format!("<sip:{user}@example.com>;tag=f{n}"),
        to: &format!("<sip:{user}@example.com>"),
        call_id: &format!("reg-{n}"),
        cseq: 1,
        routes: &[],
        contact: Some(addr(CLIENT)),
        max_forwards: Some(70),
    }
    .build()
}

/// Sends `n` REGISTERs (user from `user(i)`) 1 ms apart and runs until all
/// are answered; returns the requests each destination received.
fn send_registers(w: &mut World, n: u32, user: impl Fn(u32) -> String) -> Vec<u32> {
    for i in 0..n {
        let b = register(i, &user(i));
        w.send(addr(CLIENT), addr(PUBLIC), b);
        w.run_checked(w.now + Duration::from_millis(1)).unwrap();
    }
    w.run_checked(w.now + Duration::from_secs(40)).unwrap();
    assert_eq!(w.proxy.transactions(), 0, "transactions left");
    assert_eq!(w.table.total_load(), 0, "a REGISTER never holds load");
    w.uas.iter().map(|u| u.non_invites).collect()
}

fn assert_within(got: u32, want: f64, tolerance: f64, what: &str) {
    let (lo, hi) = (want * (1.0 - tolerance), want * (1.0 + tolerance));
    assert!(
        (lo..=hi).contains(&f64::from(got)),
        "{what}: {got} not within {lo:.0}..={hi:.0}"
    );
}

#[test]
fn round_robin_is_exact_per_weight() {
    let mut w = world(&[(1, 0), (2, 0), (3, 0)], "round-robin", "", &[], 1);
    let got = send_registers(&mut w, 600, |i| format!("u{i}"));
    assert_eq!(got, [100, 200, 300]);
    assert_eq!(w.finals_to(addr(CLIENT)).values().filter(|&&c| c == 200).count(), 600);
}

#[test]
fn hash_over_call_id_is_sticky_and_weighted() {
    let mut w = world(&[(1, 0), (3, 0)], "hash-callid", "", &[], 2);
    let got = send_registers(&mut w, 2000, |i| format!("u{i}"));
    // Weights 1:3 -> 500 / 1500; 15 % bounds are more than 5 standard deviations.
    assert_within(got[0], 500.0, 0.15, "weight 1");
    assert_within(got[1], 1500.0, 0.15, "weight 3");
    // The same Call-ID again goes where it went: send the first 50 again
    // (new branches, same Call-IDs) to a world that saw them before.
    let mut w2 = world(&[(1, 0), (3, 0)], "hash-callid", "", &[], 99);
    let first = send_registers(&mut w2, 50, |i| format!("u{i}"));
    let mut w3 = world(&[(1, 0), (3, 0)], "hash-callid", "", &[], 12345);
    let again = send_registers(&mut w3, 50, |i| format!("u{i}"));
    assert_eq!(
        first, again,
        "hashing does not depend on the seed or the worker's state"
    );
}

#[test]
fn hash_over_from_user_keeps_a_user_on_one_destination() {
    let mut w = world(&[(1, 0), (1, 0), (1, 0)], "hash-from-user", "", &[], 3);
    // 300 REGISTERs from only 3 users: each user always lands on the same
    // destination, so every destination's count is a multiple of 100.
    let got = send_registers(&mut w, 300, |i| format!("user{}", i % 3));
    assert_eq!(got.iter().sum::<u32>(), 300);
    assert!(got.iter().all(|c| c % 100 == 0), "{got:?}");
    // The `u` flag hashes the From user with `hash-from` too.
    let mut w = world(&[(1, 0), (1, 0), (1, 0)], "hash-from", "u", &[], 3);
    let got_u = send_registers(&mut w, 300, |i| format!("user{}", i % 3));
    assert_eq!(got, got_u);
}

#[test]
fn a_dead_destination_spreads_its_keys_over_the_live_ones() {
    let mut up = world(&[(1, 0), (1, 0), (1, 0), (1, 0)], "hash-callid", "", &[], 4);
    let before = send_registers(&mut up, 2000, |i| format!("u{i}"));
    let mut down = world(&[(1, 0), (1, 0), (1, 0), (1, 0)], "hash-callid", "", &[], 4);
    down.table.destinations()[1].set_enabled(false);
    let after = send_registers(&mut down, 2000, |i| format!("u{i}"));
    assert_eq!(after[1], 0, "a disabled destination is never a candidate");
    // Keys only move away from the dead one: every live one gains, and it
    // gains about a third of the dead one's share (rendezvous hashing).
    for d in [0, 2, 3] {
        assert!(after[d] >= before[d], "{before:?} -> {after:?}");
        assert_within(after[d] - before[d], f64::from(before[1]) / 3.0, 0.35, "moved keys");
    }
}

#[test]
fn weighted_random_follows_the_weights() {
    let mut w = world(&[(1, 0), (4, 0)], "weighted-random", "", &[], 5);
    let got = send_registers(&mut w, 2000, |i| format!("u{i}"));
    assert_within(got[0], 400.0, 0.2, "weight 1");
    assert_within(got[1], 1600.0, 0.1, "weight 4");
}

#[test]
fn priority_and_srv_pick_by_priority() {
    // `priority`: highest first.
    let mut w = world(&[(1, 1), (1, 5), (1, 3)], "priority", "", &[], 6);
    assert_eq!(send_registers(&mut w, 50, |i| format!("u{i}")), [0, 50, 0]);
    // `srv`: lowest value first, weighted inside it.
    let mut w = world(&[(1, 1), (3, 1), (9, 2)], "srv", "", &[], 7);
    let got = send_registers(&mut w, 2000, |i| format!("u{i}"));
    assert_eq!(got[2], 0, "priority 2 is only a fallback");
    assert_within(got[0], 500.0, 0.2, "weight 1 of 4");
    assert_within(got[1], 1500.0, 0.1, "weight 3 of 4");
}

#[test]
fn failover_on_503_in_the_algorithms_order() {
    // Priority order 2, 3, 1 (ids): 2 answers 503, 3 answers 200.
    let mut w = world(
        &[(1, 1), (1, 9), (1, 5)],
        "priority",
        "f",
        &[Some(200), Some(503), Some(200)],
        8,
    );
    let got = send_registers(&mut w, 10, |i| format!("u{i}"));
    assert_eq!(got, [0, 10, 10]);
    assert_eq!(w.stat("failovers"), 10);
    let finals = w.finals_to(addr(CLIENT));
    assert_eq!(finals.len(), 10);
    assert!(finals.values().all(|&c| c == 200), "{finals:?}");
}

#[test]
fn without_failover_flag_the_503_goes_upstream() {
    let mut w = world(&[(1, 9), (1, 5)], "priority", "", &[Some(503), Some(200)], 9);
    assert_eq!(send_registers(&mut w, 3, |i| format!("u{i}")), [3, 0]);
    assert_eq!(w.stat("failovers"), 0);
    assert!(w.finals_to(addr(CLIENT)).values().all(|&c| c == 503));
}

#[test]
fn failover_on_silence_and_503_when_all_fail() {
    // 1 is silent (local 408 after fr_timeout), 2 answers 500: the client
    // gets siplb's 503 once both failed.
    let mut w = world(&[(1, 9), (1, 5)], "priority", "f", &[None, Some(500)], 10);
    assert_eq!(send_registers(&mut w, 2, |i| format!("u{i}")), [2, 2]);
    assert_eq!(w.stat("failovers"), 2);
    assert!(
        w.stat("retransmissions") >= 2,
        "the REGISTER was retransmitted to the silent one"
    );
    assert!(w.finals_to(addr(CLIENT)).values().all(|&c| c == 503));
    // With `final_reply = "last"` the last destination's reply goes up.
    let text = dispatch_config(
        &[(1, 9), (1, 5)],
        "priority",
        "f",
        "[failover]\nfinal_reply = \"last\"\n",
    );
    let mut w = world_from(&text, 2, &[Some(503), Some(500)], 11);
    send_registers(&mut w, 1, |i| format!("u{i}"));
    assert_eq!(w.finals_to(addr(CLIENT)).values().copied().collect::<Vec<_>>(), [500]);
}

#[test]
fn max_attempts_bounds_dispatch_failover() {
    let text = dispatch_config(
        &[(1, 9), (1, 8), (1, 7)],
        "priority",
        "f",
        "[failover]\nmax_attempts = 2\n",
    );
    let mut w = world_from(&text, 3, &[Some(503), Some(503), Some(503)], 12);
    assert_eq!(send_registers(&mut w, 1, |i| format!("u{i}")), [1, 1, 0]);
}

#[test]
fn no_enabled_destination_answers_the_configured_code() {
    let mut w = world(&[(1, 0), (1, 0)], "round-robin", "f", &[], 13);
    for d in w.table.destinations() {
        d.set_enabled(false);
    }
    assert_eq!(send_registers(&mut w, 2, |i| format!("u{i}")), [0, 0]);
    assert!(w.finals_to(addr(CLIENT)).values().all(|&c| c == 503));
    assert_eq!(w.stat("no_destination"), 2);
}

#[test]
fn a_dispatched_call_is_a_dialog_without_load() {
    // The simulated caller dials 1001: route it to the dispatch rule.
    let text = dispatch_config(&[(1, 0), (1, 0)], "round-robin", "f", "").replace("^D", "^1001");
    let mut w = world_from(&text, 2, &[], 14);
    w.uac.add_call(
        w.base,
        CallerPlan {
            start: Duration::from_millis(10),
            cancel_after: None,
            hold: Duration::from_secs(2),
            callee_hangs_up: false,
            voicemail: false,
            reinvite: false,
        },
    );
    w.run_checked(w.base + Duration::from_secs(1)).unwrap();
    assert_eq!(w.proxy.dialogs(), 1, "tracked as a dialog");
    assert_eq!(w.stat("active_dialogs"), 1);
    assert_eq!(w.table.total_load(), 0, "dispatch holds no load");
    w.run_checked(w.base + Duration::from_secs(60)).unwrap();
    assert_eq!(w.uac.outcomes()[0].1, sim::Outcome::Answered);
    assert_eq!((w.proxy.dialogs(), w.proxy.transactions()), (0, 0));
    assert_eq!(w.stat("active_dialogs"), 0);
}

// ---- seeded random run: REGISTERs and calls together ------------------------------

/// One seeded run; returns (failovers, REGISTER finals seen by the client).
fn random_run(seed: u64) -> Result<(u64, usize), String> {
    let net = Conditions {
        loss: 0.03,
        duplicate: 0.03,
        max_delay_ms: 40,
        corrupt: 0.0,
    };
    let algorithms = [
        "hash-callid",
        "round-robin",
        "weighted-random",
        "priority",
        "srv",
        "hash-from",
    ];
    let mut rng = Rng::new(seed);
    let algorithm = algorithms[rng.below(algorithms.len())];
    let dests: Vec<(u32, i32)> = (0..3).map(|_| (rng.below(4) as u32, rng.below(3) as i32)).collect();
    let mut w = World::new(&dispatch_config(&dests, algorithm, "f", ""), seed, net);
    for i in 0..dests.len() {
        let mut plan_rng = Rng::new(seed.wrapping_mul(31).wrapping_add(i as u64));
        let mut u = Uas::new(
            addr(&format!("127.0.0.1:{}", 5081 + i)),
            Box::new(move |_| {
                let plan = match plan_rng.below(10) {
                    0..=6 => CalleePlan::Answer {
                        ring: plan_rng.ms(0, 500),
                        answer: plan_rng.ms(0, 1000),
                    },
                    7 => CalleePlan::Reject {
                        code: 503,
                        after: plan_rng.ms(0, 300),
                    },
                    8 => CalleePlan::Reject {
                        code: 486,
                        after: plan_rng.ms(0, 300),
                    },
                    _ => CalleePlan::Silent,
                };
                (plan, None)
            }),
        );
        let mut reg_rng = Rng::new(seed.wrapping_mul(77).wrapping_add(i as u64));
        u.non_invite = Box::new(move |_| match reg_rng.below(10) {
            0..=5 => Some(200),
            6 => Some(401),
            7 | 8 => Some(503),
            _ => None,
        });
        w.uas.push(u);
    }
    for _ in 0..15 {
        let p = CallerPlan {
            start: w.rng.ms(0, 8_000),
            cancel_after: w.rng.chance(0.1).then(|| w.rng.ms(0, 2000)),
            hold: w.rng.ms(100, 3000),
            callee_hangs_up: false,
            voicemail: w.rng.chance(0.3),
            reinvite: false,
        };
        let base = w.base;
        w.uac.add_call(base, p);
    }
    let registers = 40;
    for n in 0..registers {
        let at = w.base + w.rng.ms(0, 8_000);
        w.run_checked(at.max(w.now))?;
        let b = register(n, &format!("user{}", n % 7));
        w.send(addr(CLIENT), addr(PUBLIC), b);
    }
    w.run_checked(w.base + Duration::from_secs(200))?;
    if w.proxy.dialogs() != 0 || w.proxy.transactions() != 0 {
        return Err(format!(
            "{} dialog(s), {} transaction(s) left",
            w.proxy.dialogs(),
            w.proxy.transactions()
        ));
    }
    if w.table.total_load() != 0 {
        return Err(format!("load left: {}", w.table.total_load()));
    }
    if !w.uac.all_done() {
        return Err("calls not finished".into());
    }
    // Every REGISTER that reached siplb got exactly one kind of final
    // (the client's copy may be lost on the way back).
    let finals = w.finals_to(addr(CLIENT));
    if finals.len() > registers as usize {
        return Err(format!("{} finals for {registers} REGISTERs", finals.len()));
    }
    if let Some((id, c)) = finals.iter().find(|(_, c)| ![200, 401, 503].contains(*c)) {
        return Err(format!("{id}: unexpected final {c}"));
    }
    Ok((w.stat("failovers"), finals.len()))
}

#[test]
fn random_dispatch_and_calls_keep_counters_exact() {
    let seeds: Vec<u64> = match std::env::var("SIPLB_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIPLB_SIM_SEED must be a number")],
        Err(_) => (1..=30).collect(),
    };
    let (mut failovers, mut finals) = (0, 0);
    let mut failures = Vec::new();
    for seed in seeds {
        match random_run(seed) {
            Ok((f, n)) => {
                failovers += f;
                finals += n;
            }
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "replay with SIPLB_SIM_SEED=N:\n{}",
        failures.join("\n")
    );
    assert!(
        failovers > 0 && finals > 0,
        "the runs exercised nothing: {failovers} failovers, {finals} finals"
    );
}
