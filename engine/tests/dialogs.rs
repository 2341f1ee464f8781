//! The control plane of the sans-IO core on the simulated network:
//! `dlg_list` and `dlg_end` (BYE to both sides, load released exactly once,
//! early dialogs CANCELled), for load-balanced and counted inbound calls.

mod sim;

use std::time::Duration;

use sim::*;
use siplb::core::{Control, ControlReply, DialogView};

const CLEAN: Conditions = Conditions {
    loss: 0.0,
    duplicate: 0.0,
    max_delay_ms: 5,
    corrupt: 0.0,
};

fn plan(hold_s: u64) -> CallerPlan {
    CallerPlan {
        start: Duration::ZERO,
        cancel_after: None,
        hold: Duration::from_secs(hold_s),
        callee_hangs_up: false,
        voicemail: false,
        reinvite: false,
    }
}

fn world_with(callee: CalleePlan, seed: u64, net: Conditions) -> World {
    let mut w = World::new(&config_text(&[(5081, "pstn=5;vm=5")], ""), seed, net);
    w.uas
        .push(Uas::new(addr("127.0.0.1:5081"), Box::new(move |_| (callee, None))));
    w
}

fn answer() -> CalleePlan {
    CalleePlan::Answer {
        ring: Duration::from_millis(50),
        answer: Duration::from_millis(100),
    }
}

fn list(w: &mut World, call_id: Option<&str>) -> Vec<DialogView> {
    let cmd = Control::ListDialogs {
        call_id: call_id.map(|c| c.as_bytes().to_vec()),
    };
    match w.proxy.handle_control(w.now, cmd) {
        ControlReply::Dialogs(d) => d,
        other => panic!("{other:?}"),
    }
}

fn end(w: &mut World, call_id: &str) -> usize {
    let cmd = Control::EndDialogs {
        call_id: call_id.as_bytes().to_vec(),
    };
    let r = w.proxy.handle_control(w.now, cmd);
    w.flush_proxy();
    match r {
        ControlReply::Ended(n) => n,
        other => panic!("{other:?}"),
    }
}

fn finish(w: &mut World) {
    let until = w.now + Duration::from_secs(120);
    w.run_checked(until).unwrap();
    assert_eq!((w.proxy.dialogs(), w.proxy.transactions()), (0, 0), "state left");
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.table.underflows(), 0, "a release found a zero counter");
    assert_eq!((w.stat("early_dialogs"), w.stat("active_dialogs")), (0, 0));
}

#[test]
fn dlg_list_shows_a_live_call() {
    let mut w = world_with(answer(), 1, CLEAN);
    w.uac.add_call(w.base, plan(30));
    w.run_checked(w.base + Duration::from_millis(60)).unwrap();
    let early = list(&mut w, None);
    assert_eq!(early.len(), 1);
    assert!(!early[0].confirmed);
    w.run_checked(w.base + Duration::from_secs(2)).unwrap();
    let d = list(&mut w, None);
    assert_eq!(d.len(), 1);
    let d = &d[0];
    assert!(d.confirmed);
    assert_eq!(d.call_id, "call-1@sim");
    assert_eq!(d.from_uri, format!("sip:caller@{UAC}"));
    assert_eq!(d.to_uri, format!("sip:1001@{PUBLIC}"));
    assert_eq!(d.from_tag, "f1");
    assert!(!d.to_tag.is_empty());
    assert_eq!(d.caller_contact, format!("sip:ua@{UAC}"));
    assert_eq!(d.callee_contact, "sip:ua@127.0.0.1:5081");
    assert_eq!(d.destination, Some(addr("127.0.0.1:5081")));
    let hold = d.hold.expect("holds load");
    assert_eq!(hold.dest, 0);
    assert_eq!(hold.resources.iter().collect::<Vec<_>>(), [0], "pstn");
    assert!(d.age >= Duration::from_secs(1) && d.expires_in > Duration::from_secs(50));
    assert_eq!(list(&mut w, Some("call-1@sim")).len(), 1);
    assert!(list(&mut w, Some("nope")).is_empty());
    finish(&mut w);
    assert!(list(&mut w, None).is_empty());
}

#[test]
fn dlg_end_sends_bye_both_ways_and_releases_once() {
    let mut w = world_with(answer(), 2, CLEAN);
    w.uac.add_call(w.base, plan(30));
    w.run_checked(w.base + Duration::from_secs(2)).unwrap();
    assert_eq!(w.table.total_load(), 1);
    assert_eq!(end(&mut w, "call-1@sim"), 1);
    // Released at once, before any BYE is answered.
    assert_eq!(w.table.total_load(), 0);
    assert_eq!(w.stat("active_dialogs"), 0);
    assert_eq!(end(&mut w, "call-1@sim"), 0, "a second dlg_end finds nothing");
    w.run_checked(w.now + Duration::from_secs(1)).unwrap();
    // Both sides got their BYE and answered it: the caller's call is over
    // long before its 30 s hold, and siplb absorbed both 200s.
    let o = w.uac.outcomes();
    assert!(o[0].2, "the caller saw the call end: {o:?}");
    assert!(w.stat("absorbed") >= 2);
    assert_eq!(w.stat("retransmissions"), 0, "both BYEs answered at once");
    finish(&mut w);
    assert_eq!(w.stat("processed_dialogs"), 1);
}

#[test]
fn dlg_end_survives_loss() {
    // With loss, siplb retransmits its BYEs; the counters stay exact.
    let net = Conditions {
        loss: 0.3,
        duplicate: 0.1,
        max_delay_ms: 20,
        corrupt: 0.0,
    };
    for seed in 1..=20 {
        let mut w = world_with(answer(), seed, net);
        w.uac.add_call(w.base, plan(40));
        w.run_checked(w.base + Duration::from_secs(15)).unwrap();
        let ended = end(&mut w, "call-1@sim");
        assert!(ended <= 1);
        assert_eq!(w.table.total_load(), 0, "seed {seed}");
        finish(&mut w);
    }
}

#[test]
fn dlg_end_cancels_an_early_dialog() {
    let mut w = world_with(CalleePlan::RingForever, 3, CLEAN);
    w.uac.add_call(w.base, plan(30));
    w.run_checked(w.base + Duration::from_millis(500)).unwrap();
    assert_eq!(w.table.total_load(), 1);
    assert_eq!(end(&mut w, "call-1@sim"), 1);
    w.run_checked(w.now + Duration::from_secs(1)).unwrap();
    assert_eq!(w.uac.outcomes()[0].1, sim::Outcome::Cancelled, "the caller got the 487");
    assert_eq!(w.table.total_load(), 0);
    finish(&mut w);
    assert_eq!(w.stat("failed_dialogs"), 1);
}

#[test]
fn dlg_end_releases_a_counted_inbound_call() {
    // The caller (127.0.0.2:6000) is a destination of group 2: its call is
    // relayed to 5081 and counted as load on it (lb_count_call).
    let mut text = config_text(&[(5081, "pstn=5;vm=5")], "");
    text.push_str("[[destinations]]\nid = 9\ngroup = 2\nuri = \"sip:127.0.0.2:6000\"\nresources = \"pstn=3\"\n");
    text = text.replacen(
        "[[rules]]",
        "[[rules]]\nsource = \"destinations\"\nmethod = \"INVITE\"\n\
         relay = { uri = \"sip:127.0.0.1:5081\", count = \"pstn\" }\n[[rules]]",
        1,
    );
    let mut w = World::new(&text, 4, CLEAN);
    w.uas
        .push(Uas::new(addr("127.0.0.1:5081"), Box::new(|_| (answer(), None))));
    w.uac.add_call(w.base, plan(30));
    w.run_checked(w.base + Duration::from_secs(2)).unwrap();
    let d = list(&mut w, None);
    assert_eq!(
        d[0].hold.map(|h| h.dest),
        Some(1),
        "the load is on the source destination"
    );
    assert_eq!(w.table.destinations()[1].counter(0).unwrap().load(), 1);
    assert_eq!(end(&mut w, "call-1@sim"), 1);
    assert_eq!(w.table.total_load(), 0);
    finish(&mut w);
}
