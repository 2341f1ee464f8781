//! Operating siplb with real peers on loopback: health probing against
//! SIPp backends that stop and come back, operator status and capacity
//! changes, the admin API as opensips-cli and `siplb ctl` speak it, and
//! the Prometheus scrape.
//!
//! Every test starts the `siplb` binary with its own config on its own
//! ports (bases 15000-15990, shifted by `SIPLB_TEST_PORT_OFFSET`), waits by
//! polling with a bounded deadline (never a timed assertion), and ends
//! with every load counter back at zero. The SIPp tests skip, saying so,
//! when `sipp` (Debian `sip-tester`) is missing.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{destination, http, port, scenarios, sipp_available, wait_for, workdir, ServerConfig, Siplb, Sipp};
use serde_json::{json, Value};

/// How long every counter may take to go back to zero.
const IDLE: Duration = Duration::from_secs(5);

/// Destination `i` (id i+1) of a test: (port, resources, probe_mode).
type Dest = (u16, &'static str, u8);

/// Starts siplb: listen `base`, internal ports base+1.., admin base+9
/// (with `token` if given), `fr_timeout` 1 s; `extra` is appended to the
/// generated config's top sections.
fn start(name: &str, base: u16, dests: &[Dest], extra: &str, token: Option<&str>) -> Siplb {
    let server = ServerConfig {
        token: token.map(String::from),
        fr_timeout: "1s".to_string(),
        ..ServerConfig::new(base, "epoll")
    };
    let mut cfg = format!("{server}{extra}\n");
    for (i, (port, res, mode)) in dests.iter().enumerate() {
        let uri = format!("sip:127.0.0.1:{port}");
        let extra = format!("resources = \"{res}\"\nprobe_mode = {mode}");
        cfg.push_str(&destination(i as u32 + 1, 1, &uri, &extra));
    }
    cfg.push_str(
        "[[rules]]\nmethod = \"INVITE\"\nload_balance = { group = 1, resources = \"pstn\" }\n\
         [[rules]]\nmethod = \"OPTIONS\"\nreply = { code = 200 }\n\
         [[rules]]\nreply = { code = 405 }\n",
    );
    let mut lb = Siplb::spawn(&workdir(name), "siplb", &cfg, base + 9);
    lb.token = token.map(String::from);
    lb.wait_up(Duration::from_secs(10));
    lb
}

/// A SIPp UAS that also answers OPTIONS (`-aa`), as a live backend does.
fn uas(name: &str, port: u16) -> Sipp {
    Sipp::start(name, &scenarios().join("uas.xml"), port, None, &["-aa"])
}

/// Runs a SIPp UAC to completion (at most 40 s): (successful, failed)
/// calls, from its `-trace_stat` file.
fn uac(name: &str, target: u16, port: u16, args: &[&str]) -> (u64, u64) {
    let stat = workdir(name).join(format!("uac-{port}.csv"));
    let _ = std::fs::remove_file(&stat);
    let stat_arg = stat.to_string_lossy();
    let common = [
        "-s",
        "1234",
        "-timeout",
        "30",
        "-timeout_error",
        "-trace_stat",
        "-fd",
        "1",
        "-stf",
    ];
    let args = [&common[..], &[&stat_arg], args].concat();
    let mut uac = Sipp::start(name, &scenarios().join("uac.xml"), port, Some(target), &args);
    wait_for(Duration::from_secs(40), "sipp uac to finish", || {
        uac.exit(Duration::ZERO)
    });
    let text = std::fs::read_to_string(&stat).expect("sipp -trace_stat file");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or_default().split(';').collect();
    let col = |name: &str| -> u64 {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name}"));
        last.get(i).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    (col("SuccessfulCall(C)"), col("FailedCall(C)"))
}

const FAST_PROBING: &str = "[probing]\ninterval = \"200ms\"\ntimeout = \"400ms\"\n";

#[test]
fn probing_takes_a_stopped_backend_out_and_brings_it_back() {
    if !sipp_available() {
        return;
    }
    let base = port(15000);
    let (a_port, b_port) = (base + 11, base + 12);
    let mut a = Some(uas("probing", a_port));
    let _b = uas("probing", b_port);
    let lb = start(
        "probing",
        base,
        &[(a_port, "pstn=100", 2), (b_port, "pstn=100", 2)],
        FAST_PROBING,
        None,
    );
    // Both answer probes (SIPp -aa answers OPTIONS with 200).
    wait_for(Duration::from_secs(5), "both destinations probed ok", || {
        (lb.dest(1)["last_probe"] == "ok 200" && lb.dest(2)["last_probe"] == "ok 200").then_some(())
    });
    let caller = std::thread::spawn(move || uac("probing", base, base + 15, &["-m", "60", "-r", "20", "-d", "500"]));
    wait_for(Duration::from_secs(10), "calls flowing", || {
        (lb.stat("dialog:processed_dialogs") >= 15).then_some(())
    });
    let changes = "siplb_destination_status_changes_total{group=\"1\",destination=\"1\",reason=\"probe\"}";
    let changes_before = lb.sample(changes);
    drop(a.take());
    // Calls that were up on A when it stopped are the only ones allowed to fail.
    let in_flight = lb.load(1);
    let down = wait_for(Duration::from_secs(5), "A taken down by probing", || {
        let d = lb.dest(1);
        (d["enabled"] == "no").then_some(d)
    });
    assert_eq!(down["reason"], "probe", "{down}");
    assert_eq!(down["last_code"], 408, "a timeout: {down}");
    assert_eq!(down["auto-reenable"], "on");
    assert_eq!(lb.dest(2)["enabled"], "yes");
    let (ok, failed) = caller.join().unwrap();
    eprintln!("{ok} calls ok, {failed} failed, {in_flight} in flight on the stopped backend");
    assert_eq!(ok + failed, 60);
    // A BYE relayed to A in the instant before it stopped has released
    // its load already, yet that call fails too: at most one such here.
    assert!(
        failed <= in_flight + 1,
        "{failed} calls failed, only {in_flight} were in flight on the stopped backend"
    );
    // Back: restarted, it answers probes again and takes calls.
    let _a = uas("probing", a_port);
    let up = wait_for(Duration::from_secs(5), "A back up", || {
        let d = lb.dest(1);
        (d["enabled"] == "yes").then_some(d)
    });
    assert_eq!(up["reason"], "probe", "{up}");
    assert_eq!(lb.sample("siplb_destination_up{group=\"1\",destination=\"1\"}"), 1.0);
    assert_eq!(lb.sample(changes), changes_before + 2.0, "one change down, one up");
    lb.assert_idle(IDLE, &[]);
}

/// Runs `siplb ctl ARGS...`: (exit success, stdout, stderr).
fn ctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_siplb"))
        .arg("ctl")
        .args(args)
        .env_remove("SIPLB_TOKEN")
        .env_remove("SIPLB_URL")
        .output()
        .expect("run siplb ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (name, type) of every family in a Prometheus text scrape, checking the
/// format on the way: HELP and TYPE before the samples, samples only of
/// declared families, numeric values, counters named `_total`.
fn scrape_families(text: &str) -> Vec<(String, String)> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut helped = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "HELP before TYPE for {name}"
            );
            assert!(kind == "counter" || kind == "gauge", "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(name.starts_with("siplb_"), "{line}");
            assert!(!families.iter().any(|(n, _)| n == name), "{name} twice");
            families.push((name.to_string(), kind.to_string()));
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(
                families.last().map(|f| f.0.as_str()),
                Some(name),
                "sample outside its family: {line}"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "value of {line}");
            if let Some(l) = line.split_once('{').map(|(_, l)| l) {
                assert!(l.contains("}"), "{line}");
            }
        }
    }
    families.sort();
    families
}

/// (name, type) of the rows of the README's metrics table: lines
/// `| \`siplb_...\` | counter | ...` under "### Metrics".
fn readme_families() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme
        .split("\n### Metrics\n")
        .nth(1)
        .expect("README has a ### Metrics section");
    let section = section.split("\n#").next().unwrap();
    let mut families: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("siplb_")
                .then(|| (name.to_string(), cells.get(2).unwrap_or(&"").to_string()))
        })
        .collect();
    families.sort();
    families
}

#[test]
fn admin_api_as_opensips_cli_and_siplb_ctl_speak_it() {
    let base = port(15200);
    let lb = start("admin", base, &[(base + 11, "pstn=10", 0)], "", Some("s3cret"));
    // Without the token, or with a wrong one: 401, on /mi and /metrics.
    let which = r#"{"jsonrpc":"2.0","method":"which","params":{},"id":"1"}"#;
    assert_eq!(http(lb.admin, "POST", "/mi", None, which).unwrap().0, 401);
    assert_eq!(http(lb.admin, "POST", "/mi", Some("nope"), which).unwrap().0, 401);
    assert_eq!(http(lb.admin, "GET", "/metrics", None, "").unwrap().0, 401);
    assert_eq!(http(lb.admin, "POST", "/mi", Some("s3cret2"), which).unwrap().0, 401);
    // opensips-cli asks `which` first, then sends strings, positional or named.
    let cmds = lb.rpc("which", json!({}));
    for c in [
        "lb_list",
        "lb_status",
        "lb_resize",
        "get_statistics",
        "version",
        "uptime",
    ] {
        assert!(cmds.as_array().unwrap().contains(&json!(c)), "{c} missing in {cmds}");
    }
    assert_eq!(
        lb.rpc("which", json!({"command": "lb_status"})),
        json!([["destination_id"], ["destination_id", "new_status"]])
    );
    assert_eq!(lb.rpc("lb_status", json!(["1", "0"])), "OK");
    assert_eq!(
        lb.rpc("lb_status", json!({"destination_id": "1"})),
        json!({"enable": "no"})
    );
    assert_eq!(
        lb.rpc(
            "load_balancer:status",
            json!({"destination_id": "1", "new_status": "1"})
        ),
        "OK"
    );
    assert_eq!(lb.rpc("lb_status", json!([1])), json!({"enable": "yes"}));
    assert_eq!(
        lb.rpc(
            "lb_resize",
            json!({"destination_id": "1", "res_name": "pstn", "new_capacity": "7"})
        ),
        "OK"
    );
    assert_eq!(lb.dest(1)["Resources"][0]["max"], 7);
    // Errors say what is wrong.
    let err = |m: &str, p: Value| lb.call(m, p).expect_err("an error");
    let e = err("lb_status", json!(["99"]));
    assert_eq!(
        (e["code"].as_i64(), e["message"].as_str()),
        (Some(404), Some("Destination ID 99 not found"))
    );
    let e = err("lb_status", json!(["1", "yes"]));
    assert_eq!(e["code"], -32602);
    assert!(e["message"].as_str().unwrap().contains("new_status"), "{e}");
    let e = err("lb_resize", json!(["1", "pstn", "-3"]));
    assert!(e["message"].as_str().unwrap().contains("new_capacity"), "{e}");
    let e = err("lb_resize", json!(["1", "gold", "3"]));
    assert!(e["message"].as_str().unwrap().contains("gold"), "{e}");
    let e = err("lb_status", json!([]));
    assert!(e["message"].as_str().unwrap().contains("destination_id"), "{e}");
    let e = err("lb_status", json!("1"));
    assert!(e["message"].as_str().unwrap().contains("array"), "{e}");
    assert_eq!(err("no_such_command", json!([]))["code"], -32601);
    assert!(lb.rpc("version", json!([]))["Server"]
        .as_str()
        .unwrap()
        .starts_with("siplb "));
    let up = lb.rpc("uptime", json!({}));
    assert!(up["Up time"].as_str().unwrap().ends_with("[sec]"), "{up}");
    assert!(up["Up since"].as_str().unwrap().ends_with('Z'), "{up}");

    // siplb ctl: positional and named arguments, readable JSON, the token.
    let url = format!("http://127.0.0.1:{}/mi", lb.admin);
    let (ok, out, err) = ctl(&["lb_list", "--url", &url, "--token", "s3cret"]);
    assert!(ok, "{err}");
    assert!(out.contains("\n  \""), "pretty-printed: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Destinations"][0]["id"], 1);
    let (ok, out, _) = ctl(&["lb_status", "1", "0", "--url", &url, "--token", "s3cret"]);
    assert!(ok);
    assert_eq!(out.trim(), "\"OK\"");
    let (ok, out, _) = ctl(&["lb_status", "destination_id=1", "--url", &url, "--token", "s3cret"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"enable": "no"}));
    let (ok, _, err) = ctl(&["lb_status", "1", "1", "--url", &url]);
    assert!(!ok);
    assert!(err.contains("token"), "{err}");
    let (ok, _, err) = ctl(&["lb_status", "42", "--url", &url, "--token", "s3cret"]);
    assert!(!ok);
    assert!(err.contains("Destination ID 42 not found"), "{err}");
    assert_eq!(lb.rpc("lb_status", json!(["1", "1"])), "OK");

    // The scrape is well-formed and has exactly the README's families.
    let scraped = scrape_families(&lb.metrics());
    let documented = readme_families();
    let missing: Vec<_> = scraped.iter().filter(|f| !documented.contains(f)).collect();
    let stale: Vec<_> = documented.iter().filter(|f| !scraped.contains(f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README metrics table and /metrics differ:\n  not documented: {missing:?}\n  not exposed: {stale:?}"
    );
    lb.assert_idle(IDLE, &[]);
}

#[test]
fn operator_status_is_sticky_and_resize_moves_calls() {
    if !sipp_available() {
        return;
    }
    let base = port(15300);
    let _a = uas("sticky", base + 11);
    let _b = uas("sticky", base + 12);
    let lb = start(
        "sticky",
        base,
        &[(base + 11, "pstn=10", 2), (base + 12, "pstn=10", 2)],
        FAST_PROBING,
        None,
    );
    let calls = |id: u64| {
        lb.sample(&format!(
            "siplb_destination_calls_total{{group=\"1\",destination=\"{id}\"}}"
        ))
    };
    let probes_ok = |id: u64| {
        lb.sample(&format!(
            "siplb_destination_probes_total{{group=\"1\",destination=\"{id}\",result=\"ok\"}}"
        ))
    };
    let replies_2xx = || -> f64 {
        let m = lb.metrics();
        m.lines()
            .filter(|l| l.starts_with("siplb_replies_sent_total{") && l.contains("class=\"2xx\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    // An operator disables 1: good probes do not bring it back.
    assert_eq!(lb.rpc("lb_status", json!(["1", "0"])), "OK");
    let seen = probes_ok(1);
    wait_for(Duration::from_secs(5), "two more good probes of destination 1", || {
        (probes_ok(1) >= seen + 2.0).then_some(())
    });
    let d = lb.dest(1);
    assert_eq!(
        (d["enabled"].as_str(), d["reason"].as_str()),
        (Some("no"), Some("admin")),
        "{d}"
    );
    assert_eq!(d["auto-reenable"], "off");
    let (c1, c2, r2xx) = (calls(1), calls(2), replies_2xx());
    let (ok, failed) = uac("sticky", base, base + 15, &["-m", "6", "-r", "20", "-d", "100"]);
    assert_eq!((ok, failed), (6, 0));
    assert_eq!((calls(1), calls(2)), (c1, c2 + 6.0), "all calls on destination 2");
    assert!(replies_2xx() >= r2xx + 12.0, "200s for 6 INVITEs and 6 BYEs");
    // Enabled again, then destination 2 resized to nothing: calls go to 1.
    assert_eq!(
        lb.rpc("lb_status", json!({"destination_id": "1", "new_status": "1"})),
        "OK"
    );
    assert_eq!(lb.dest(1)["enabled"], "yes");
    assert_eq!(lb.rpc("lb_resize", json!(["2", "pstn", "0"])), "OK");
    let (c1, c2) = (calls(1), calls(2));
    let (ok, failed) = uac("sticky", base, base + 15, &["-m", "6", "-r", "20", "-d", "100"]);
    assert_eq!((ok, failed), (6, 0));
    assert_eq!((calls(1), calls(2)), (c1 + 6.0, c2), "all calls on destination 1");
    assert_eq!(lb.dest(2)["Resources"][0]["max"], 0);
    lb.assert_idle(IDLE, &[]);
}

#[test]
fn the_systemd_unit_has_what_operators_need() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/siplb.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    for key in [
        "Type=simple",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "KillSignal=SIGTERM",
        "ExecStartPre=/usr/local/bin/siplb check-config",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(key)),
            "{key} missing in {}",
            path.display()
        );
    }
    // systemd's own check, where systemd is installed.
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not installed: syntax not verified");
        return;
    }
    let dir = workdir("unit");
    let copy = dir.join("siplb.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/siplb", env!("CARGO_BIN_EXE_siplb"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real opensips-cli (PyPI `opensipscli`), when installed: on PATH,
/// or where `.ci/run` puts it.
fn opensips_cli() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("opensips-cli"),
        PathBuf::from("/opt/opensips-cli/bin/opensips-cli"),
    ];
    let found = candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if found.is_none() {
        eprintln!("skipping: opensips-cli is not installed (pip install opensipscli)");
    }
    found
}

#[test]
fn stock_opensips_cli_drives_siplb() {
    let Some(cli) = opensips_cli() else { return };
    let base = port(15400);
    let lb = start("opensips-cli", base, &[(base + 11, "pstn=10", 0)], "", None);
    let url = format!("url=http://127.0.0.1:{}/mi", lb.admin);
    let run = |args: &[&str]| {
        let out = Command::new(&cli)
            .args(["-o", "communication_type=http", "-o", &url, "-x", "mi"])
            .args(args)
            .env("HOME", workdir("opensips-cli"))
            .output()
            .expect("run opensips-cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = run(&["lb_list"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["Destinations"][0]["uri"], format!("sip:127.0.0.1:{}", base + 11));
    let (ok, out) = run(&["lb_status", "1", "0"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = run(&["lb_status", "destination_id=1"]);
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"enable": "no"}));
    let (ok, out) = run(&["lb_resize", "destination_id=1", "res_name=pstn", "new_capacity=50"]);
    assert!(ok && out.contains("OK"), "{out}");
    assert_eq!(lb.dest(1)["Resources"][0]["max"], 50);
    let (ok, out) = run(&["lb_status", "1", "7"]);
    assert!(
        !ok && out.contains("new_status must be 0 (disable) or 1 (enable)"),
        "{out}"
    );
    lb.assert_idle(IDLE, &[]);
}
