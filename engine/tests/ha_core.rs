//! Takeover in the sans-IO core: a dialog confirmed by one process is
//! replicated as an event, adopted by a new process (another epoch, a
//! fresh load table), and its BYE, whose Route names the old process's
//! dialog slot, is relayed and releases the load on the right destination.

mod sim;

use std::sync::Arc;
use std::time::Duration;

use sim::*;
use siplb::config::Config;
use siplb::core::replica::{Adopted, DialogEvent};
use siplb::core::{Proxy, Stats};
use siplb::lb::Table;

const CLEAN: Conditions = Conditions {
    loss: 0.0,
    duplicate: 0.0,
    max_delay_ms: 5,
    corrupt: 0.0,
};

const HA: &str = "[ha]\nredis = \"redis://127.0.0.1:1\"\nnode = \"a\"\n";

fn world(hangup: Option<Duration>) -> World {
    let text = config_text(&[(5081, "pstn=4;vm=5"), (5082, "pstn=4;vm=5")], HA);
    let mut w = World::new(&text, 11, CLEAN);
    let answer = CalleePlan::Answer {
        ring: Duration::from_millis(100),
        answer: Duration::from_millis(200),
    };
    for port in [5081, 5082] {
        w.uas.push(Uas::new(
            addr(&format!("127.0.0.1:{port}")),
            Box::new(move |_| (answer, hangup)),
        ));
    }
    w
}

fn events(w: &mut World) -> Vec<DialogEvent> {
    std::iter::from_fn(|| w.proxy.poll_event()).collect()
}

/// The process dies; a new one (epoch 8) adopts what was replicated.
fn take_over(w: &mut World, replicated: &[DialogEvent]) {
    let text = config_text(&[(5081, "pstn=4;vm=5"), (5082, "pstn=4;vm=5")], HA);
    let cfg = Arc::new(Config::parse(&text).unwrap());
    let table = Arc::new(Table::new(&cfg.destinations, &cfg.resource_names));
    let stats = Arc::new(Stats::default());
    let mut proxy = Proxy::new(cfg, table.clone(), stats.clone(), 0, 8, 99);
    for e in replicated {
        if let DialogEvent::Confirmed(c) = e {
            assert!(proxy.adopt(
                w.now,
                Adopted {
                    call_id_hash: c.call_id_hash,
                    hold: c.hold,
                    expires: w.now + c.lifetime,
                }
            ));
            // Adopting twice is refused (a second load of the same records).
            assert!(!proxy.adopt(
                w.now,
                Adopted {
                    call_id_hash: c.call_id_hash,
                    hold: c.hold,
                    expires: w.now + c.lifetime,
                }
            ));
        }
    }
    w.proxy = proxy;
    w.table = table;
    w.stats = stats;
}

fn finish(w: &mut World) {
    let until = w.now + Duration::from_secs(120);
    w.run_checked(until).unwrap();
    assert_eq!(w.proxy.dialogs(), 0, "dialogs left");
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.stat("active_dialogs"), 0);
}

fn caller_plan() -> CallerPlan {
    CallerPlan {
        start: Duration::ZERO,
        cancel_after: None,
        hold: Duration::from_secs(2),
        callee_hangs_up: false,
        voicemail: false,
        reinvite: false,
    }
}

#[test]
fn confirmed_dialogs_are_replicated_and_their_end_too() {
    let mut w = world(None);
    w.uac.add_call(w.base, caller_plan());
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    let ev = events(&mut w);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let DialogEvent::Confirmed(c) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(!c.call_id.is_empty() && !c.from_tag.is_empty() && !c.to_tag.is_empty());
    assert_eq!(c.lifetime, Duration::from_secs(60));
    assert_eq!(w.table.total_load(), 1);
    finish(&mut w);
    let ev = events(&mut w);
    assert_eq!(
        ev,
        vec![DialogEvent::Ended {
            call_id_hash: c.call_id_hash
        }]
    );
}

#[test]
fn adopted_dialog_relays_the_callers_bye_and_releases_its_load() {
    let mut w = world(None);
    w.uac.add_call(w.base, caller_plan());
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    let replicated = events(&mut w);
    let dest = match &replicated[0] {
        DialogEvent::Confirmed(c) => c.hold.dest,
        e => panic!("{e:?}"),
    };
    take_over(&mut w, &replicated);
    // The new process counts the call on the same destination.
    assert_eq!(w.table.destinations()[usize::from(dest)].counter(0).unwrap().load(), 1);
    assert_eq!(w.stat("active_dialogs"), 1);
    finish(&mut w);
    assert_eq!(w.uac.outcomes()[0].1, Outcome::Answered);
    assert!(w.uac.outcomes()[0].2, "BYE answered");
    assert_eq!(w.stat("unknown_dialogs"), 0, "no 481");
    assert!(matches!(events(&mut w)[..], [DialogEvent::Ended { .. }]));
}

#[test]
fn adopted_dialog_relays_the_callees_bye() {
    let mut w = world(Some(Duration::from_millis(1500)));
    let mut p = caller_plan();
    p.callee_hangs_up = true;
    p.hold = Duration::from_secs(30);
    w.uac.add_call(w.base, p);
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    let replicated = events(&mut w);
    take_over(&mut w, &replicated);
    finish(&mut w);
    assert_eq!(w.uac.outcomes()[0].1, Outcome::Answered);
    assert_eq!(w.stat("unknown_dialogs"), 0, "no 481");
}

#[test]
fn without_adoption_the_bye_is_481_and_release_all_emits_nothing() {
    let mut w = world(None);
    w.uac.add_call(w.base, caller_plan());
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    let _ = events(&mut w);
    take_over(&mut w, &[]);
    let until = w.now + Duration::from_secs(40);
    w.run_checked(until).unwrap();
    assert!(w.stat("unknown_dialogs") >= 1);
    // A node that loses the VIP drops what it adopted, silently.
    let mut w = world(None);
    w.uac.add_call(w.base, caller_plan());
    w.run_checked(w.base + Duration::from_millis(800)).unwrap();
    let replicated = events(&mut w);
    take_over(&mut w, &replicated);
    w.proxy.release_all();
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.proxy.dialogs(), 0);
    assert!(events(&mut w).is_empty());
}
