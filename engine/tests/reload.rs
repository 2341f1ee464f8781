//! Reload (`lb_reload`, SIGHUP) on a running siplb between real SIPp user
//! agents: calls in progress survive and release their load, a removed
//! destination takes no new calls, a bad file is refused as a whole.
//!
//! Skipped, with a message, when `sipp` (Debian `sip-tester`) is missing.
//! Ports: bases 17000-17990 plus `SIPLB_TEST_PORT_OFFSET`.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::json;

/// How long siplb may take to start and to reach each awaited state.
const LIMIT: Duration = Duration::from_secs(20);
/// How long a SIPp caller may take to finish its calls.
const SIPP_LIMIT: Duration = Duration::from_secs(60);

fn load_of(list: &[(u64, u64, u64, bool)], id: u64) -> (u64, u64, bool) {
    list.iter()
        .find(|d| d.0 == id)
        .map(|d| (d.1, d.2, d.3))
        .unwrap_or_else(|| panic!("destination {id} not listed: {list:?}"))
}

#[test]
fn reload_keeps_calls_in_progress_and_their_load() {
    if !sipp_available() {
        return;
    }
    let base = port(17000);
    let (a, b, c) = (base + 11, base + 12, base + 13);
    let lb = Siplb::start(
        "keep",
        base,
        &config(base, &[(1, a, "pstn=10"), (2, b, "pstn=10")]),
        LIMIT,
    );
    let _ua = uas("keep", a);
    let _ub = uas("keep", b);
    let _uc = uas("keep", c);
    std::thread::sleep(Duration::from_millis(200));

    // Six long calls: three on each destination (equal availability).
    let mut first = uac("keep", base, base + 15, 6, 12_000);
    wait_until(LIMIT, "six calls up", || {
        let l = lb.list();
        load_of(&l, 1).0 == 3 && load_of(&l, 2).0 == 3
    });

    // Reload: 1 kept (capacity 4, so 1 free), 2 removed (7 free if it were
    // eligible), 3 added with 5 free.
    std::fs::write(&lb.path, config(base, &[(3, c, "pstn=5"), (1, a, "pstn=4")])).unwrap();
    let r = lb.rpc("lb_reload", json!([]));
    assert_eq!(r["kept"], json!([1]), "{r}");
    assert_eq!(r["added"], json!([3]), "{r}");
    assert_eq!(r["removed"], json!([2]), "{r}");
    assert_eq!(r["draining"], json!([2]), "{r}");
    let l = lb.list();
    assert_eq!(load_of(&l, 1), (3, 4, false), "load kept, capacity applied");
    assert_eq!(load_of(&l, 3), (0, 5, false));
    assert_eq!(load_of(&l, 2), (3, 10, true), "removed, still holding its calls");

    // Two more long calls: 3 has the most room; 2 would have more but is
    // removed, so it must not get any.
    let mut second = uac("keep", base, base + 16, 2, 4_000);
    wait_until(LIMIT, "two new calls on destination 3", || {
        load_of(&lb.list(), 3).0 == 2
    });
    let l = lb.list();
    assert_eq!(load_of(&l, 2).0, 3, "a removed destination took a new call: {l:?}");
    assert_eq!(load_of(&l, 1).0, 3);

    // Everything ends with BYE through siplb; the load goes back to zero
    // and the removed destination is freed.
    assert!(second.finished(SIPP_LIMIT), "calls after the reload failed");
    assert!(first.finished(SIPP_LIMIT), "calls held across the reload failed");
    wait_until(LIMIT, "idle", || {
        let l = lb.list();
        l.len() == 2 && l.iter().all(|d| d.1 == 0) && lb.stat("dialog:active_dialogs") == 0
    });
    assert_eq!(lb.stat("dialog:processed_dialogs"), 8);
    assert_eq!(lb.stat("dialog:failed_dialogs"), 0);
}

#[test]
fn a_bad_config_is_refused_and_the_running_one_keeps_serving() {
    if !sipp_available() {
        return;
    }
    let base = port(17100);
    let a = base + 11;
    let good = config(base, &[(1, a, "pstn=10")]);
    let lb = Siplb::start("bad", base, &good, LIMIT);
    let _ua = uas("bad", a);
    std::thread::sleep(Duration::from_millis(200));

    // A bad capacity on line 16: refused with file and line, nothing changes.
    let bad = good.replace("pstn=10", "pstn=ten");
    let line = bad.lines().position(|l| l.contains("pstn=ten")).unwrap() + 1;
    std::fs::write(&lb.path, &bad).unwrap();
    let r = lb.response("lb_reload", json!([])).unwrap();
    let msg = r["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains(&format!("siplb.toml: line {line}")), "{r}");
    assert_eq!(load_of(&lb.list(), 1).1, 10);

    // The same by SIGHUP: logged, refused.
    lb.hangup();
    wait_until(LIMIT, "the refusal in the log", || {
        lb.log().contains("reload refused") && lb.log().contains("SIGHUP")
    });
    assert!(
        uac("bad", base, base + 15, 2, 100).finished(SIPP_LIMIT),
        "calls after a refused reload"
    );

    // A good file by SIGHUP applies; a listen change is named and not applied.
    let changed = config(base, &[(1, a, "pstn=7")]).replace(&format!("127.0.0.1:{base}\""), "127.0.0.1:1\"");
    std::fs::write(&lb.path, changed).unwrap();
    lb.hangup();
    wait_until(LIMIT, "capacity 7", || load_of(&lb.list(), 1).1 == 7);
    assert!(lb.log().contains("server.listen"), "{}", lb.log());
    assert!(
        uac("bad", base, base + 16, 2, 100).finished(SIPP_LIMIT),
        "calls after SIGHUP"
    );
    wait_until(LIMIT, "idle", || lb.list().iter().all(|d| d.1 == 0));
}
