//! The sans-IO core driven by simulated user agents on a virtual clock:
//! scripted call flows first, then seeded random runs with loss,
//! duplication, delay, CANCEL races and BYE from either side.
//!
//! Replay one random seed: `SIPLB_SIM_SEED=1234 cargo test -p siplb --test core random`;
//! run more seeds: `SIPLB_SIM_RUNS=2000 cargo test -p siplb --release --test core random`.

mod sim;

use std::time::Duration;

use sim::*;
use siplb::core::Local;

const CLEAN: Conditions = Conditions {
    loss: 0.0,
    duplicate: 0.0,
    max_delay_ms: 5,
    corrupt: 0.0,
};

fn plan(start_ms: u64) -> CallerPlan {
    CallerPlan {
        start: Duration::from_millis(start_ms),
        cancel_after: None,
        hold: Duration::from_secs(1),
        callee_hangs_up: false,
        voicemail: false,
        reinvite: false,
    }
}

fn answer() -> CalleePlan {
    CalleePlan::Answer {
        ring: Duration::from_millis(100),
        answer: Duration::from_millis(200),
    }
}

/// A world with destinations on 5081.. each always following one plan.
fn world(dests: &[(u16, &str, CalleePlan, Option<Duration>)], extra: &str, seed: u64, net: Conditions) -> World {
    // Every world offers `vm` somewhere so the voicemail rule is valid.
    let res: Vec<String> = dests
        .iter()
        .map(|d| {
            if d.1.contains("vm") {
                d.1.to_string()
            } else {
                format!("{};vm=5", d.1)
            }
        })
        .collect();
    let spec: Vec<(u16, &str)> = dests.iter().zip(&res).map(|(d, r)| (d.0, r.as_str())).collect();
    let mut w = World::new(&config_text(&spec, extra), seed, net);
    for &(port, _, p, hangup) in dests {
        w.uas.push(Uas::new(
            addr(&format!("127.0.0.1:{port}")),
            Box::new(move |_| (p, hangup)),
        ));
    }
    w
}

fn finish(w: &mut World) {
    let until = w.now + Duration::from_secs(200);
    w.run_checked(until).unwrap();
    assert_eq!(w.proxy.dialogs(), 0, "dialogs left");
    assert_eq!(w.proxy.transactions(), 0, "transactions left");
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.stat("early_dialogs"), 0);
    assert_eq!(w.stat("active_dialogs"), 0);
}

fn outcome(w: &World) -> sim::Outcome {
    let o = w.uac.outcomes();
    assert_eq!(o.len(), 1);
    assert!(o[0].2, "call not finished: {o:?}");
    o[0].1
}

#[test]
fn basic_call_holds_load_until_bye() {
    let mut w = world(&[(5081, "pstn=2", answer(), None)], "", 1, CLEAN);
    w.uac.add_call(w.base, plan(0));
    w.run_checked(w.base + Duration::from_millis(700)).unwrap();
    assert_eq!(w.table.total_load(), 1, "the answered call holds one unit");
    assert_eq!(w.stat("active_dialogs"), 1);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("processed_dialogs"), 1);
    assert_eq!(w.stat("failed_dialogs"), 0);
    assert_eq!(w.stat("expired_dialogs"), 0);
}

#[test]
fn finished_transactions_linger_as_configured() {
    let mut w = world(&[(5081, "pstn=2", answer(), None)], "linger = \"5s\"", 1, CLEAN);
    w.uac.add_call(w.base, plan(0));
    // The call ends (BYE answered) about 1.3 s in; its INVITE and BYE
    // transactions stay to absorb retransmissions...
    w.run_checked(w.base + Duration::from_secs(3)).unwrap();
    assert_eq!(w.stat("processed_dialogs"), 1);
    assert_eq!(w.stat("active_dialogs"), 0);
    assert!(w.proxy.transactions() > 0, "finished transactions linger");
    // ...for `linger` (5 s here instead of 64*T1 = 32 s), then go.
    w.run_checked(w.base + Duration::from_secs(7)).unwrap();
    assert_eq!(w.proxy.transactions(), 0);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
}

#[test]
fn ended_dialogs_leave_no_lifetime_timers_behind() {
    // Timers are cancelled lazily, and a dialog's lifetime timer (1 h here,
    // 12 h by default) outlives a one-second call by far: 3,000 calls left
    // 6,000 dead entries queued for the whole lifetime (two per dialog),
    // a leak at carrier rates. The proxy arms one per dialog and sweeps the
    // dead ones once they outnumber the live owners.
    let config = config_text(&[(5081, "pstn=1000;vm=5")], "linger = \"5s\"")
        .replace("dialog_lifetime = \"60s\"", "dialog_lifetime = \"1h\"");
    let mut w = World::new(&config, 1, CLEAN);
    w.uas
        .push(Uas::new(addr("127.0.0.1:5081"), Box::new(|_| (answer(), None))));
    for i in 0..3000u64 {
        w.uac.add_call(w.base, plan(i * 10));
    }
    w.run_checked(w.base + Duration::from_secs(45)).unwrap();
    assert_eq!(w.stat("processed_dialogs"), 3000);
    assert_eq!((w.proxy.dialogs(), w.proxy.transactions()), (0, 0));
    let pending = w.proxy.pending_timers();
    assert!(
        pending < 1500,
        "{pending} timer entries left for 0 dialogs and 0 transactions"
    );
    finish(&mut w);
    assert!(w.uac.outcomes().iter().all(|o| o.1 == sim::Outcome::Answered && o.2));
}

#[test]
fn reinvite_passes_through_the_dialog() {
    let mut w = world(&[(5081, "pstn=2", answer(), None)], "", 26, CLEAN);
    let mut p = plan(0);
    p.reinvite = true;
    p.hold = Duration::from_secs(2);
    w.uac.add_call(w.base, p);
    w.run_checked(w.base + Duration::from_millis(1800)).unwrap();
    // INVITE, ACK, re-INVITE, its ACK relayed; load still held.
    assert_eq!(w.stat("relayed_requests"), 4);
    assert_eq!(w.table.total_load(), 1);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("relayed_requests"), 5);
}

#[test]
fn callee_hangs_up() {
    let mut w = world(
        &[(5081, "pstn=2", answer(), Some(Duration::from_millis(500)))],
        "",
        2,
        CLEAN,
    );
    let mut p = plan(0);
    p.callee_hangs_up = true;
    w.uac.add_call(w.base, p);
    w.run_checked(w.base + Duration::from_secs(3)).unwrap();
    assert_eq!(w.table.total_load(), 0, "callee BYE released the load");
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
}

#[test]
fn failover_on_503_then_answer() {
    let reject = CalleePlan::Reject {
        code: 503,
        after: Duration::from_millis(50),
    };
    // 5081 has more room, so it is tried first.
    let mut w = world(
        &[(5081, "pstn=5", reject, None), (5082, "pstn=2", answer(), None)],
        "",
        3,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    w.run_checked(w.base + Duration::from_millis(900)).unwrap();
    assert_eq!(w.table.destinations()[0].counter(0).unwrap().load(), 0);
    assert_eq!(
        w.table.destinations()[1].counter(0).unwrap().load(),
        1,
        "load moved to 5082"
    );
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("failovers"), 1);
    assert_eq!(w.uas[0].invites, 1);
    assert_eq!(w.uas[1].invites, 1);
}

#[test]
fn failover_on_silence_after_fr_timeout() {
    let mut w = world(
        &[
            (5081, "pstn=5", CalleePlan::Silent, None),
            (5082, "pstn=2", answer(), None),
        ],
        "",
        4,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("failovers"), 1);
    assert!(w.stat("retransmissions") >= 2, "INVITE retransmitted to the silent one");
}

#[test]
fn all_destinations_fail_gives_503() {
    let reject = CalleePlan::Reject {
        code: 500,
        after: Duration::from_millis(10),
    };
    let mut w = world(
        &[(5081, "pstn=5", reject, None), (5082, "pstn=2", reject, None)],
        "",
        5,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(503));
    assert_eq!(w.stat("failed_dialogs"), 1);
}

#[test]
fn final_reply_last_relays_the_last_failure() {
    let reject = CalleePlan::Reject {
        code: 502,
        after: Duration::from_millis(10),
    };
    let mut w = world(
        &[(5081, "pstn=5", reject, None), (5082, "pstn=2", reject, None)],
        "[failover]\nfinal_reply = \"last\"\n",
        5,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(502));
}

#[test]
fn busy_is_not_failed_over() {
    let busy = CalleePlan::Reject {
        code: 486,
        after: Duration::from_millis(10),
    };
    let mut w = world(
        &[(5081, "pstn=5", busy, None), (5082, "pstn=2", answer(), None)],
        "",
        6,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(486));
    assert_eq!(w.uas[1].invites, 0);
}

#[test]
fn ringing_without_answer_times_out_and_fails_over() {
    let mut w = world(
        &[
            (5081, "pstn=5", CalleePlan::RingForever, None),
            (5082, "pstn=2", answer(), None),
        ],
        "",
        7,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("failovers"), 1);
}

#[test]
fn cancel_while_ringing() {
    let ring_long = CalleePlan::Answer {
        ring: Duration::from_millis(50),
        answer: Duration::from_secs(3),
    };
    let mut w = world(&[(5081, "pstn=5", ring_long, None)], "", 8, CLEAN);
    let mut p = plan(0);
    p.cancel_after = Some(Duration::from_millis(500));
    w.uac.add_call(w.base, p);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Cancelled);
    assert_eq!(w.stat("failed_dialogs"), 1);
}

#[test]
fn cancel_before_any_provisional() {
    let mut w = world(&[(5081, "pstn=5", CalleePlan::Silent, None)], "", 9, CLEAN);
    let mut p = plan(0);
    p.cancel_after = Some(Duration::from_millis(100));
    w.uac.add_call(w.base, p);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Cancelled);
    assert_eq!(w.stat("failovers"), 0, "a cancelled call is not failed over");
}

#[test]
fn all_full_gives_503_at_once() {
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 10, CLEAN);
    let mut long = plan(0);
    long.hold = Duration::from_secs(5);
    w.uac.add_call(w.base, long);
    w.uac.add_call(w.base, plan(1000));
    finish(&mut w);
    let o = w.uac.outcomes();
    assert_eq!(o[0].1, sim::Outcome::Answered);
    assert_eq!(o[1].1, sim::Outcome::Rejected(503));
    assert_eq!(w.stat("full"), 1);
    assert_eq!(w.uas[0].invites, 1);
}

#[test]
fn voicemail_calls_take_vm_resource() {
    let mut w = world(&[(5081, "pstn=1;vm=1", answer(), None)], "", 11, CLEAN);
    let mut vm = plan(0);
    vm.voicemail = true;
    w.uac.add_call(w.base, vm);
    w.run_checked(w.base + Duration::from_millis(700)).unwrap();
    let d = &w.table.destinations()[0];
    assert_eq!((d.counter(0).unwrap().load(), d.counter(1).unwrap().load()), (0, 1));
    finish(&mut w);
}

#[test]
fn lifetime_expiry_releases_when_bye_never_comes() {
    // Caller holds for longer than the 60 s lifetime.
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 12, CLEAN);
    let mut p = plan(0);
    p.hold = Duration::from_secs(100);
    w.uac.add_call(w.base, p);
    w.run_checked(w.base + Duration::from_secs(30)).unwrap();
    assert_eq!(w.table.total_load(), 1);
    w.run_checked(w.base + Duration::from_secs(62)).unwrap();
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.stat("expired_dialogs"), 1);
    finish(&mut w);
}

// ---- local replies and bad input ---------------------------------------------

fn local_reply(w: &mut World, bytes: &[u8]) -> Option<String> {
    w.proxy
        .handle_datagram(w.now, Local::Public(0), addr(UAC), bytes, false);
    let t = w.proxy.poll_transmit()?;
    assert_eq!(t.dst, addr(UAC));
    Some(String::from_utf8_lossy(&t.payload).into_owned())
}

fn request(method: &str, to_tag: bool, mf: Option<u8>, routes: &[String]) -> Vec<u8> {
    let to = if to_tag {
        "<sip:1000@127.0.0.1>;tag=x"
    } else {
        "<sip:1000@127.0.0.1>"
    };
    sim::Req {
        method,
        ruri: "sip:1000@127.0.0.1:5060",
        via: addr(UAC),
        branch: "z9hG4bKlocal1",
        from: "<sip:a@127.0.0.2>;tag=f",
        to,
        call_id: "local@x",
        cseq: 1,
        routes,
        contact: Some(addr(UAC)),
        max_forwards: mf,
    }
    .build()
}

#[test]
fn local_replies() {
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 13, CLEAN);
    let r = local_reply(&mut w, &request("OPTIONS", false, Some(70), &[])).unwrap();
    assert!(r.starts_with("SIP/2.0 200 "), "{r}");
    assert!(r.contains("received=127.0.0.2;rport=6000"), "{r}");
    assert!(r.contains("To: <sip:1000@127.0.0.1>;tag="), "{r}");
    let r = local_reply(&mut w, &request("MESSAGE", false, Some(70), &[])).unwrap();
    assert!(r.starts_with("SIP/2.0 405 "), "{r}");
    let r = local_reply(&mut w, &request("INVITE", false, Some(0), &[])).unwrap();
    assert!(r.starts_with("SIP/2.0 483 "), "{r}");
    assert_eq!(w.table.total_load(), 0);
    // In-dialog request naming a dialog siplb does not know.
    let routes = vec!["<sip:127.0.0.1:5060;lr;did=7.0.99.1>".to_string()];
    let r = local_reply(&mut w, &request("BYE", true, Some(70), &routes)).unwrap();
    assert!(r.starts_with("SIP/2.0 481 "), "{r}");
    // In-dialog request that does not route through siplb.
    let r = local_reply(&mut w, &request("BYE", true, Some(70), &[])).unwrap();
    assert!(r.starts_with("SIP/2.0 481 "), "{r}");
    // CANCEL matching nothing.
    let r = local_reply(&mut w, &request("CANCEL", false, Some(70), &[])).unwrap();
    assert!(r.starts_with("SIP/2.0 481 "), "{r}");
    // Stray ACK: dropped and counted.
    assert!(local_reply(&mut w, &request("ACK", true, Some(70), &[])).is_none());
    assert_eq!(w.stat("drop_stray_ack"), 1);
}

#[test]
fn malformed_requests_get_400_or_are_dropped() {
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 14, CLEAN);
    let bad = b"INVITE sip:1@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:6000;branch=z9hG4bK1\r\n\
        From: <sip:a@b>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: c\r\nCSeq: banana INVITE\r\n\r\n";
    let r = local_reply(&mut w, bad).unwrap();
    assert!(r.starts_with("SIP/2.0 400 "), "{r}");
    assert!(local_reply(&mut w, b"\x16\x03\x01 definitely not SIP").is_none());
    assert!(local_reply(&mut w, b"").is_none());
    assert!(local_reply(&mut w, &vec![b'A'; 70_000]).is_none());
    assert_eq!(w.stat("bad_requests"), 1);
    assert_eq!(w.stat("drop_malformed"), 2);
    assert_eq!(w.stat("drop_too_big"), 1);
    // A response that is not ours.
    let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKother\r\n\
        From: <sip:a@b>;tag=1\r\nTo: <sip:1@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(local_reply(&mut w, resp).is_none());
    assert_eq!(w.stat("drop_stray_response"), 1);
}

#[test]
fn relayed_invite_carries_via_record_route_and_max_forwards() {
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 15, CLEAN);
    let inv = request("INVITE", false, None, &[]);
    w.proxy.handle_datagram(w.now, Local::Public(0), addr(UAC), &inv, false);
    let trying = w.proxy.poll_transmit().unwrap();
    assert!(String::from_utf8_lossy(&trying.payload).starts_with("SIP/2.0 100 "));
    let out = w.proxy.poll_transmit().unwrap();
    assert_eq!(out.local, Local::Internal);
    assert_eq!(out.dst, addr("127.0.0.1:5081"));
    let text = String::from_utf8(out.payload).unwrap();
    assert!(
        text.starts_with("INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKslb"),
        "{text}"
    );
    assert!(text.contains(";received=127.0.0.2"), "{text}");
    assert!(text.contains(";rport=6000"), "{text}");
    assert!(text.contains("Record-Route: <sip:127.0.0.1:5060;lr;did=7.0."), "{text}");
    assert!(text.contains("Max-Forwards: 70\r\n"), "{text}");
    // A retransmission is absorbed: 100 Trying again, nothing downstream.
    w.proxy.handle_datagram(w.now, Local::Public(0), addr(UAC), &inv, false);
    let again = w.proxy.poll_transmit().unwrap();
    assert_eq!(again.dst, addr(UAC));
    assert!(w.proxy.poll_transmit().is_none());
    assert_eq!(w.stat("absorbed"), 1);
    w.proxy.shutdown();
    assert_eq!(w.table.total_load(), 0);
}

#[test]
fn dialog_size_is_small() {
    // Reported in the README: a tracked dialog's fixed part.
    const { assert!(siplb::core::DIALOG_SIZE <= 256) };
    println!("dialog record: {} bytes", siplb::core::DIALOG_SIZE);
}

// ---- random simulation ------------------------------------------------------------

fn random_run(seed: u64, corrupt: f64) -> Result<(), String> {
    let net = Conditions {
        loss: 0.04,
        duplicate: 0.04,
        max_delay_ms: 40,
        corrupt,
    };
    let dests: [(u16, &str); 3] = [(5081, "pstn=3;vm=2"), (5082, "pstn=2;vm=2"), (5083, "pstn=4")];
    let mut w = World::new(&config_text(&dests, ""), seed, net);
    for (i, &(port, _)) in dests.iter().enumerate() {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(i as u64));
        w.uas.push(Uas::new(
            addr(&format!("127.0.0.1:{port}")),
            Box::new(move |_| {
                let roll = rng.below(100);
                let plan = match roll {
                    0..=59 => CalleePlan::Answer {
                        ring: rng.ms(0, 800),
                        answer: rng.ms(0, 2000),
                    },
                    60..=69 => CalleePlan::Reject {
                        code: 486,
                        after: rng.ms(0, 500),
                    },
                    70..=79 => CalleePlan::Reject {
                        code: 503,
                        after: rng.ms(0, 500),
                    },
                    80..=84 => CalleePlan::Reject {
                        code: 603,
                        after: rng.ms(0, 500),
                    },
                    85..=91 => CalleePlan::Silent,
                    _ => CalleePlan::RingForever,
                };
                let hangup = rng.chance(0.3).then(|| rng.ms(100, 3000));
                (plan, hangup)
            }),
        ));
    }
    let calls = 30;
    for _ in 0..calls {
        let p = CallerPlan {
            start: w.rng.ms(0, 15_000),
            cancel_after: w.rng.chance(0.15).then(|| w.rng.ms(0, 3000)),
            hold: w.rng.ms(100, 4000),
            callee_hangs_up: w.rng.chance(0.3),
            voicemail: w.rng.chance(0.3),
            reinvite: w.rng.chance(0.3),
        };
        let base = w.base;
        w.uac.add_call(base, p);
    }
    let until = w.base + Duration::from_secs(300);
    w.run_checked(until)?;
    if !w.uac.all_done() {
        let open: Vec<_> = w.uac.outcomes().into_iter().filter(|o| !o.2).collect();
        return Err(format!("calls not finished: {open:?}"));
    }
    if corrupt == 0.0 {
        // Without corruption siplb always answers a call in time.
        let gave_up: Vec<_> = w
            .uac
            .outcomes()
            .into_iter()
            .filter(|o| o.1 == sim::Outcome::GaveUp)
            .collect();
        if !gave_up.is_empty() {
            return Err(format!("callers gave up waiting: {gave_up:?}"));
        }
    }
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
    if w.stat("early_dialogs") != 0 || w.stat("active_dialogs") != 0 {
        return Err("dialog gauges not zero".into());
    }
    if corrupt == 0.0 && w.stat("bad_requests") + w.stat("drop_malformed") != 0 {
        return Err("the simulated agents sent something siplb could not parse".into());
    }
    if w.stat("processed_dialogs") == 0 {
        return Err("no dialog at all".into());
    }
    Ok(())
}

#[test]
fn random_call_flows_keep_counters_exact() {
    let seeds: Vec<u64> = match std::env::var("SIPLB_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIPLB_SIM_SEED must be a number")],
        Err(_) => {
            let runs = std::env::var("SIPLB_SIM_RUNS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(60);
            (1..=runs).collect()
        }
    };
    let mut failures = Vec::new();
    for seed in seeds {
        if let Err(e) = random_run(seed, 0.0) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "replay with SIPLB_SIM_SEED=N:\n{}",
        failures.join("\n")
    );
}

// ---- policy details --------------------------------------------------------------

fn loads(w: &World) -> Vec<u32> {
    w.table
        .destinations()
        .iter()
        .map(|d| d.counter(0).unwrap().load())
        .collect()
}

fn spread_calls(flags: &str) -> Vec<u32> {
    // The pstn rule with the given flags, on capacities 10/20/30.
    let mut text = config_text(&[(5081, "pstn=10;vm=1"), (5082, "pstn=20"), (5083, "pstn=30")], "");
    text = text.replace(
        "load_balance = { group = 1, resources = \"pstn\" }",
        &format!("load_balance = {{ group = 1, resources = \"pstn\", flags = \"{flags}\" }}"),
    );
    let mut w = World::new(&text, 21, CLEAN);
    for port in [5081, 5082, 5083] {
        w.uas.push(Uas::new(
            addr(&format!("127.0.0.1:{port}")),
            Box::new(|_| (answer(), None)),
        ));
    }
    for i in 0..30 {
        let mut p = plan(i * 100);
        p.hold = Duration::from_secs(20);
        let base = w.base;
        w.uac.add_call(base, p);
    }
    w.run_checked(w.base + Duration::from_secs(10)).unwrap();
    let l = loads(&w);
    finish(&mut w);
    l
}

#[test]
fn absolute_availability_equalizes_free_channels() {
    // 30 calls on 10/20/30: the free channels end equal (10 each).
    assert_eq!(spread_calls(""), vec![0, 10, 20]);
}

#[test]
fn relative_availability_is_proportional_to_capacity() {
    // 30 calls on 10/20/30 with `r`: every destination half full.
    assert_eq!(spread_calls("r"), vec![5, 10, 15]);
}

#[test]
fn disable_on_failure_takes_the_destination_out() {
    let reject = CalleePlan::Reject {
        code: 500,
        after: Duration::from_millis(10),
    };
    let mut w = world(
        &[(5081, "pstn=9", reject, None), (5082, "pstn=5", answer(), None)],
        "[failover]\ndisable_on_failure = true\n",
        22,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    w.uac.add_call(w.base, plan(2000));
    finish(&mut w);
    let d = &w.table.destinations()[0];
    assert!(!d.enabled());
    let s = d.status();
    assert_eq!((s.reason, s.code), (siplb::lb::Reason::CallFailure, Some(500)));
    assert!(!s.sticky(), "probing may bring it back");
    assert_eq!(d.changes(siplb::lb::Reason::CallFailure), 1, "counted once");
    assert_eq!(w.uas[0].invites, 1, "the disabled destination gets no second call");
    assert_eq!(w.uas[1].invites, 2);
    assert_eq!(w.stat("failovers"), 1);
}

#[test]
fn no_eligible_destination_uses_the_configured_code() {
    let mut w = world(
        &[(5081, "pstn=9", answer(), None)],
        "[failover]\nno_destination_code = 480\n",
        23,
        CLEAN,
    );
    w.table.destinations()[0].set_enabled(false);
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(480));
    assert_eq!(w.stat("no_destination"), 1);
}

#[test]
fn max_attempts_limits_failover() {
    let reject = CalleePlan::Reject {
        code: 503,
        after: Duration::from_millis(10),
    };
    let mut w = world(
        &[
            (5081, "pstn=9", reject, None),
            (5082, "pstn=8", reject, None),
            (5083, "pstn=7", answer(), None),
        ],
        "[failover]\nmax_attempts = 2\n",
        24,
        CLEAN,
    );
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(503));
    assert_eq!(w.uas[2].invites, 0);
}

#[test]
fn a_final_without_the_callers_via_is_answered_locally() {
    let mut w = world(&[(5081, "pstn=1", answer(), None)], "", 25, CLEAN);
    let inv = request("INVITE", false, Some(70), &[]);
    w.proxy.handle_datagram(w.now, Local::Public(0), addr(UAC), &inv, false);
    let _trying = w.proxy.poll_transmit().unwrap();
    let out = w.proxy.poll_transmit().unwrap();
    let relayed = siplb_parser::scan_datagram(&out.payload).unwrap();
    // A 486 carrying only siplb's Via.
    let top = String::from_utf8_lossy(relayed.via_values().next().unwrap()).into_owned();
    let resp = format!(
        "SIP/2.0 486 Busy Here\r\nVia: {top}\r\nFrom: <sip:a@127.0.0.2>;tag=f\r\nTo: <sip:1000@127.0.0.1>;tag=b\r\n\
         Call-ID: local@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    w.proxy
        .handle_datagram(w.now, Local::Internal, addr("127.0.0.1:5081"), resp.as_bytes(), false);
    let mut got = Vec::new();
    while let Some(t) = w.proxy.poll_transmit() {
        got.push((t.dst, String::from_utf8_lossy(&t.payload).into_owned()));
    }
    assert!(
        got.iter()
            .any(|(d, t)| *d == addr("127.0.0.1:5081") && t.starts_with("ACK ")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(d, t)| *d == addr(UAC) && t.starts_with("SIP/2.0 486 ")),
        "{got:?}"
    );
    assert_eq!(w.table.total_load(), 0);
}

#[test]
fn corrupted_datagrams_never_break_the_counters() {
    // 5 % of the datagrams towards siplb are damaged (bytes flipped,
    // truncated, lines duplicated or removed, numbers overflowed, junk
    // inserted). Calls may fail; nothing may panic, and the invariants and
    // the final zero must hold.
    let seeds: Vec<u64> = match std::env::var("SIPLB_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIPLB_SIM_SEED must be a number")],
        Err(_) => {
            let runs: u64 = std::env::var("SIPLB_SIM_RUNS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(30);
            (1000..1000 + runs).collect()
        }
    };
    let mut failures = Vec::new();
    for seed in seeds {
        if let Err(e) = random_run(seed, 0.05) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "replay with SIPLB_SIM_SEED=N:\n{}",
        failures.join("\n")
    );
}

// ---- rules: relay, source matching, lb_count_call ---------------------------------

#[test]
fn relay_counts_calls_from_a_destination() {
    // The caller (127.0.0.2:6000) is itself a destination of group 2:
    // its calls are relayed to 5081 and counted as load on it.
    let mut text = config_text(&[(5081, "pstn=5;vm=5")], "");
    text.push_str("[[destinations]]\nid = 9\ngroup = 2\nuri = \"sip:127.0.0.2:6000\"\nresources = \"pstn=3\"\n");
    text = text.replacen(
        "[[rules]]",
        "[[rules]]\nname = \"from backends\"\nsource = \"destinations\"\nmethod = \"INVITE\"\n\
         relay = { uri = \"sip:127.0.0.1:5081\", count = \"pstn\" }\n[[rules]]",
        1,
    );
    let mut w = World::new(&text, 31, CLEAN);
    w.uas
        .push(Uas::new(addr("127.0.0.1:5081"), Box::new(|_| (answer(), None))));
    w.uac.add_call(w.base, plan(0));
    w.run_checked(w.base + Duration::from_millis(700)).unwrap();
    let load = |w: &World, i: usize| w.table.destinations()[i].counter(0).unwrap().load();
    assert_eq!(
        (load(&w, 0), load(&w, 1)),
        (0, 1),
        "counted on the source, not the target"
    );
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("processed_dialogs"), 1);
}

#[test]
fn rules_match_source_networks() {
    let mut text = config_text(&[(5081, "pstn=5;vm=5")], "");
    text = text.replacen(
        "[[rules]]",
        "[[rules]]\nsource = [\"10.0.0.0/8\", \"192.0.2.7\"]\nreply = { code = 403, reason = \"Not From There\" }\n[[rules]]",
        1,
    );
    let mut w = World::new(&text, 32, CLEAN);
    let req = request("OPTIONS", false, Some(70), &[]);
    for (src, want) in [
        ("10.1.2.3:5060", "SIP/2.0 403 Not From There"),
        ("192.0.2.7:5060", "SIP/2.0 403 "),
        ("192.0.2.8:5060", "SIP/2.0 200 "),
    ] {
        w.proxy.handle_datagram(w.now, Local::Public(0), addr(src), &req, false);
        let t = w.proxy.poll_transmit().unwrap();
        assert_eq!(t.dst, addr(src));
        let text = String::from_utf8_lossy(&t.payload);
        assert!(text.starts_with(want), "{src}: {text}");
    }
}

#[test]
fn ack_of_a_local_503_is_absorbed() {
    let mut w = world(&[(5081, "pstn=0", answer(), None)], "", 33, CLEAN);
    w.uac.add_call(w.base, plan(0));
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Rejected(503));
    assert_eq!(w.stat("drop_stray_ack"), 0);
    assert!(w.stat("absorbed") >= 1);
}

#[test]
fn cancel_after_the_200_changes_nothing() {
    let mut w = world(&[(5081, "pstn=2", answer(), None)], "", 34, CLEAN);
    let mut p = plan(0);
    p.hold = Duration::from_secs(3);
    w.uac.add_call(w.base, p);
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    assert_eq!(w.stat("active_dialogs"), 1);
    // The caller's CANCEL crosses the 200 and arrives after it.
    let cancel = sim::Req {
        method: "CANCEL",
        ruri: &format!("sip:1001@{PUBLIC}"),
        via: addr(UAC),
        branch: "z9hG4bKuac1",
        from: &format!("<sip:caller@{UAC}>;tag=f1"),
        to: &format!("<sip:1001@{PUBLIC}>"),
        call_id: "call-1@sim",
        cseq: 1,
        routes: &[],
        contact: None,
        max_forwards: Some(70),
    }
    .build();
    w.send(addr(UAC), addr(PUBLIC), cancel);
    w.run_checked(w.base + Duration::from_millis(1500)).unwrap();
    assert_eq!(w.stat("active_dialogs"), 1, "the confirmed call stays up");
    assert_eq!(w.table.total_load(), 1);
    finish(&mut w);
    assert_eq!(outcome(&w), sim::Outcome::Answered);
    assert_eq!(w.stat("failed_dialogs"), 0);
}
