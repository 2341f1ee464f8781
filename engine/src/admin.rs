//! The admin API: JSON-RPC 2.0 over HTTP `POST /mi`, OpenSIPS MI names.
//!
//! Served by its own thread (never a worker). It reads the shared
//! destination table and the per-worker statistics (relaxed atomics) and
//! never touches worker-owned state.
//!
//! Commands so far:
//! - `which`: the command list (what `opensips-cli` asks first), or with
//!   `{"command": C}` its parameter-name lists;
//! - `lb_list` / `load_balancer:list`: destinations with id, group, uri,
//!   enabled, and resources with name, max and load (OpenSIPS shape);
//! - `lb_status` / `load_balancer:status` (`destination_id[, new_status]`):
//!   read (`{"enable": "yes"}`) or set (1 enable, 0 disable) a destination;
//! - `lb_resize` / `load_balancer:resize` (`destination_id, res_name,
//!   new_capacity`): change a capacity at run time;
//! - `get_statistics` (`statistics` as a list of names, `group:` prefixes
//!   or `all`): dialog counters as `dialog:NAME`, the rest as `siplb:NAME`;
//! - `version`, `uptime` (OpenSIPS shapes: `Server`; `Now`, `Up since`,
//!   `Up time`);
//! - `lb_reload` / `load_balancer:reload`, `ds_reload` / `dispatcher:reload`:
//!   re-read the configuration file and its destination sources (see
//!   [`crate::reload`]); the result says what was kept, added, removed,
//!   skipped and not reloaded; a refused file is a JSON-RPC error naming
//!   the file and line.
//! - `ds_list` / `dispatcher:list` (`[full]`): the dispatcher sets (a
//!   destination's group is its set) with each destination's URI, state
//!   (`Active`, `Inactive`, `Probing`), weight, priority and attrs, in
//!   OpenSIPS's shape (`PARTITIONS` / `SETS` / `Destinations`);
//! - `ds_set_state` / `dispatcher:set_state` (`state, group, address`):
//!   `a` (or `1`) enables, `i` (`0`) disables (sticky), `p` (`2`) takes a
//!   destination out until probing finds it alive;
//! - `dlg_list` / `dialog:list` (`[callid]`): the live dialogs in OpenSIPS's
//!   shape (`Dialogs`, or `Dialog` for one Call-ID) plus siplb's
//!   `destination` and `resources`;
//! - `dlg_end` / `dlg_end_dlg` / `dialog:end_dlg` (`callid` or
//!   `dialog_id`): ends the dialogs of that Call-ID: a BYE to both sides, the
//!   load released at once (an early one is CANCELled).
//!
//! Dialogs live in the workers; the admin thread asks them over their
//! control queues ([`crate::runtime::Controller`]) and waits for the
//! answers (at most [`CONTROL_TIMEOUT`]).
//!
//! Parameters come as an array (positional) or an object (named), values
//! as strings or numbers, as opensips-cli sends them. Errors are JSON-RPC
//! error objects whose message says which parameter is wrong and why.
//!
//! `GET /metrics` serves Prometheus text ([`crate::metrics`]).
//!
//! With `admin.token` set, every request must carry `Authorization: Bearer
//! TOKEN`, else it gets HTTP 401 (the config refuses a non-loopback
//! `admin.listen` without a token).
//!
//! `health` (JSON-RPC) and `GET /health` say whether this node serves, its
//! HA role and Redis state ([`crate::ha::health`]); `GET /health` answers
//! 200 while siplb serves, also when degraded, for keepalived's check.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::core::{Control, ControlReply, DialogView, Stats};
use crate::lb::{DestState, Reason, Table};
use crate::reload::Live;

/// What the admin thread can see.
#[derive(Clone)]
pub struct View {
    /// Destinations and load.
    pub table: Arc<Table>,
    /// Per-worker statistics.
    pub stats: Vec<Arc<Stats>>,
    /// When siplb started (`uptime`, `siplb_uptime_seconds`).
    pub started: Instant,
    /// Bearer token every request must carry, if configured.
    pub token: Option<String>,
    /// The running state, for reloads (`view.table` is refreshed from it
    /// before each request); `None`: reload commands fail.
    pub live: Option<Arc<Live>>,
    /// The workers' control queues (`None`: no dialog commands).
    pub control: Option<crate::runtime::Controller>,
    /// HA state, when `[ha]` is configured.
    pub ha: Option<Arc<crate::ha::Status>>,
}

/// How long a dialog command waits for the workers.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

const COMMANDS: &[&str] = &[
    "which",
    "lb_list",
    "load_balancer:list",
    "lb_status",
    "load_balancer:status",
    "lb_resize",
    "load_balancer:resize",
    "get_statistics",
    "version",
    "uptime",
    "lb_reload",
    "load_balancer:reload",
    "ds_reload",
    "dispatcher:reload",
    "ds_list",
    "dispatcher:list",
    "ds_set_state",
    "dispatcher:set_state",
    "dlg_list",
    "dialog:list",
    "dlg_end",
    "dlg_end_dlg",
    "dialog:end_dlg",
    "health",
];

/// Starts the admin server on `addr`; it exits when `stop` is set.
pub fn start(addr: SocketAddr, view: View, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let server = tiny_http::Server::http(addr).map_err(|e| std::io::Error::other(e.to_string()))?;
    tracing::info!(%addr, "admin API at POST /mi");
    std::thread::Builder::new().name("siplb-admin".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let req = match server.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API receive failed");
                    continue;
                }
            };
            serve(req, &view);
        }
    })
}

/// Largest request body read (a JSON-RPC call is a few hundred bytes).
const MAX_BODY: u64 = 1 << 20;

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header")
}

/// True when the request carries `Authorization: Bearer TOKEN` (or no
/// token is configured). Compared in constant time.
fn authorized(req: &tiny_http::Request, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    req.headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .filter_map(|h| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let v = h.value.as_str().trim_start();
            let (scheme, given) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(given)
        })
        .any(|given| {
            let (a, b) = (given.trim().as_bytes(), token.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        })
}

fn serve(mut req: tiny_http::Request, view: &View) {
    let json_header = header("Content-Type", "application/json");
    let url = req.url().to_string();
    let method = req.method().clone();
    if !authorized(&req, view.token.as_deref()) {
        let body = error(
            Value::Null,
            -32000,
            "Unauthorized: send Authorization: Bearer TOKEN (admin.token)",
        );
        let response = tiny_http::Response::from_string(body.to_string())
            .with_status_code(401)
            .with_header(json_header)
            .with_header(header("WWW-Authenticate", "Bearer realm=\"siplb\""));
        let _ = req.respond(response);
        return;
    }
    let response = match (method, url.as_str()) {
        (tiny_http::Method::Post, "/mi") => {
            let mut body = String::new();
            let reply = if std::io::Read::read_to_string(&mut std::io::Read::take(req.as_reader(), MAX_BODY), &mut body)
                .is_err()
            {
                error(Value::Null, -32700, "Parse error: the body is not UTF-8 text")
            } else {
                handle(&body, view)
            };
            tiny_http::Response::from_string(reply.to_string()).with_header(json_header)
        }
        (tiny_http::Method::Get, "/metrics") => tiny_http::Response::from_string(metrics(view))
            .with_header(header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")),
        (tiny_http::Method::Get, "/health") => {
            let h = crate::ha::health(view.ha.as_deref(), view.stats.len());
            tiny_http::Response::from_string(format!("{h}\n")).with_header(json_header)
        }
        _ => tiny_http::Response::from_string("not found: POST /mi (JSON-RPC), GET /metrics or GET /health\n")
            .with_status_code(404),
    };
    let _ = req.respond(response);
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
}

/// Handles one JSON-RPC request body; returns the response object.
pub fn handle(body: &str, view: &View) -> Value {
    let req = match serde_json::from_str::<Value>(body) {
        Ok(r) => r,
        Err(e) => return error(Value::Null, -32700, &format!("Parse error: {e}")),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return error(id, -32600, "Invalid Request: no \"method\" string");
    };
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Array(_) | Value::Object(_)) {
        return error(
            id,
            -32602,
            "Invalid params: \"params\" must be an array (positional) or an object (named)",
        );
    }
    // Each request sees the newest snapshot.
    let current;
    let view = match &view.live {
        Some(live) => {
            current = View {
                table: live.table(),
                ..view.clone()
            };
            &current
        }
        None => view,
    };
    let result = match method {
        "which" => match params.get("command").and_then(Value::as_str) {
            Some("get_statistics") => json!([["statistics"]]),
            Some("lb_status") | Some("load_balancer:status") => {
                json!([["destination_id"], ["destination_id", "new_status"]])
            }
            Some("lb_resize") | Some("load_balancer:resize") => {
                json!([["destination_id", "res_name", "new_capacity"]])
            }
            Some("version") | Some("uptime") => json!([[]]),
            Some("ds_list") | Some("dispatcher:list") => json!([[], ["full"]]),
            Some("ds_set_state") | Some("dispatcher:set_state") => json!([["state", "group", "address"]]),
            Some("dlg_list") | Some("dialog:list") => json!([[], ["callid"]]),
            Some("dlg_end") | Some("dlg_end_dlg") | Some("dialog:end_dlg") => json!([["callid"], ["dialog_id"]]),
            Some(c) if COMMANDS.contains(&c) => json!([[]]),
            Some(c) => return error(id, -32601, &format!("Method not found: {c}")),
            None => json!(COMMANDS),
        },
        "version" => json!({
            "Server": format!("siplb {} ({}/{})", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH, std::env::consts::OS),
            "version": env!("CARGO_PKG_VERSION"),
        }),
        "uptime" => {
            let up = view.started.elapsed();
            json!({
                "Now": rfc3339(SystemTime::now()),
                "Up since": rfc3339(wall_clock(view.started)),
                "Up time": format!("{} [sec]", up.as_secs()),
                "seconds": up.as_secs(),
            })
        }
        "lb_list" | "load_balancer:list" => lb_list(view),
        "health" => crate::ha::health(view.ha.as_deref(), view.stats.len()),
        "lb_status" | "load_balancer:status" => {
            let d = match destination_param(view, &params) {
                Ok(d) => d,
                Err((code, msg)) => return error(id, code, &msg),
            };
            match param(&params, 1, "new_status") {
                None => json!({"enable": if d.enabled() { "yes" } else { "no" }}),
                Some(v) => match v.trim() {
                    // An operator's status is sticky: probing does not undo it.
                    "0" | "1" => {
                        d.set_status(v.trim() == "1", Reason::Admin, None, Some(Instant::now()));
                        json!("OK")
                    }
                    _ => {
                        return error(
                            id,
                            -32602,
                            &format!("Invalid params: new_status must be 0 (disable) or 1 (enable), not {v:?}"),
                        )
                    }
                },
            }
        }
        "lb_resize" | "load_balancer:resize" => {
            let d = match destination_param(view, &params) {
                Ok(d) => d,
                Err((code, msg)) => return error(id, code, &msg),
            };
            let Some(name) = param(&params, 1, "res_name") else {
                return error(id, -32602, "Invalid params: res_name (2nd) is missing");
            };
            let cap = match param(&params, 2, "new_capacity") {
                None => return error(id, -32602, "Invalid params: new_capacity (3rd) is missing"),
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(c) => c,
                    Err(_) => {
                        return error(
                            id,
                            -32602,
                            &format!("Invalid params: new_capacity must be a whole number >= 0, not {v:?}"),
                        )
                    }
                },
            };
            let rid = view.table.resource_names().iter().position(|n| *n == name);
            let index = view
                .table
                .configured()
                .find(|(_, x)| std::ptr::eq(*x, d))
                .map(|(i, _)| i);
            match (rid, index) {
                (Some(rid), Some(i)) if view.table.resize(i, rid, cap) => json!("OK"),
                _ => {
                    return error(
                        id,
                        404,
                        &format!("Destination {} has no resource {name:?}", d.config.id),
                    )
                }
            }
        }
        "lb_reload" | "load_balancer:reload" | "ds_reload" | "dispatcher:reload" => {
            let Some(live) = &view.live else {
                return error(id, 500, "reload is not available here");
            };
            match live.reload() {
                Ok(r) => {
                    r.log(method);
                    reloaded(&r)
                }
                Err(e) => {
                    tracing::warn!(command = method, error = %e, "reload refused, the running configuration stays");
                    return error(
                        id,
                        500,
                        &format!("reload refused, the running configuration stays: {e}"),
                    );
                }
            }
        }
        "ds_list" | "dispatcher:list" => ds_list(view),
        "ds_set_state" | "dispatcher:set_state" => match ds_set_state(view, &params) {
            Ok(()) => json!("OK"),
            Err((code, message)) => return error(id, code, message),
        },
        "dlg_list" | "dialog:list" => {
            let call_id = param(&params, 0, "callid");
            let cmd = Control::ListDialogs {
                call_id: call_id.clone().map(String::into_bytes),
            };
            let dialogs: Vec<Value> = match ask(view, &cmd) {
                Ok(replies) => replies
                    .into_iter()
                    .flat_map(|r| match r {
                        ControlReply::Dialogs(d) => d,
                        ControlReply::Ended(_) => Vec::new(),
                    })
                    .map(|d| dialog_json(view, &d))
                    .collect(),
                Err(e) => return error(id, 500, &e),
            };
            match call_id {
                None => json!({ "Dialogs": dialogs }),
                Some(_) => match dialogs.into_iter().next() {
                    Some(d) => json!({ "Dialog": d }),
                    None => return error(id, 404, "No such dialog"),
                },
            }
        }
        "dlg_end" | "dlg_end_dlg" | "dialog:end_dlg" => {
            let Some(call_id) = param(&params, 0, "callid").or_else(|| param(&params, 0, "dialog_id")) else {
                return error(id, -32602, "Invalid params: callid");
            };
            let cmd = Control::EndDialogs {
                call_id: call_id.into_bytes(),
            };
            match ask(view, &cmd) {
                Ok(replies) => {
                    let ended: usize = replies
                        .into_iter()
                        .map(|r| match r {
                            ControlReply::Ended(n) => n,
                            ControlReply::Dialogs(_) => 0,
                        })
                        .sum();
                    if ended == 0 {
                        return error(id, 404, "Dialog not found");
                    }
                    json!("OK")
                }
                Err(e) => return error(id, 500, &e),
            }
        }
        "get_statistics" => {
            let wanted: Vec<String> = match &params {
                Value::Array(a) => a.iter().flat_map(names).collect(),
                Value::Object(o) => o.get("statistics").map(names).unwrap_or_default(),
                _ => Vec::new(),
            };
            if wanted.is_empty() {
                return error(
                    id,
                    -32602,
                    "Invalid params: statistics wanted (names, \"group:\" or \"all\")",
                );
            }
            statistics(view, &wanted)
        }
        _ => return error(id, -32601, &format!("Method not found: {method}")),
    };
    json!({"jsonrpc": "2.0", "result": result, "id": id})
}

/// Parameter `name` (object form) or number `pos` (array form), as text:
/// opensips-cli sends every argument as a string.
fn param(params: &Value, pos: usize, name: &str) -> Option<String> {
    let v = match params {
        Value::Object(o) => o.get(name)?,
        Value::Array(a) => a.get(pos)?,
        _ => return None,
    };
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The destination named by `destination_id` (1st parameter), or a
/// JSON-RPC error (code, message) saying what is wrong.
fn destination_param<'v>(view: &'v View, params: &Value) -> Result<&'v DestState, (i64, String)> {
    let Some(v) = param(params, 0, "destination_id") else {
        return Err((-32602, "Invalid params: destination_id (1st) is missing".into()));
    };
    let Ok(id) = v.trim().parse::<u32>() else {
        return Err((
            -32602,
            format!("Invalid params: destination_id must be a number, not {v:?}"),
        ));
    };
    view.table
        .by_id(id)
        .map(|(_, d)| d)
        .ok_or((404, format!("Destination ID {id} not found")))
}

/// The result of a reload: what it did, OpenSIPS's `"OK"` as `status`.
pub fn reloaded(r: &crate::reload::Reloaded) -> Value {
    json!({
        "status": "OK",
        "destinations": r.destinations,
        "rules": r.rules,
        "kept": r.report.kept,
        "added": r.report.added,
        "removed": r.report.removed,
        "draining": r.report.draining,
        "skipped": r.skipped,
        "not_reloaded": r.not_reloaded,
    })
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(String::from).collect(),
        Value::Array(a) => a.iter().flat_map(names).collect(),
        _ => Vec::new(),
    }
}

/// `lb_list` in OpenSIPS's shape.
pub fn lb_list(view: &View) -> Value {
    let names = view.table.resource_names();
    // Table order, then removed destinations still draining their calls.
    let dests: Vec<Value> = view
        .table
        .configured()
        .chain(view.table.draining())
        .map(|(_, d)| {
            let resources: Vec<Value> = d
                .config
                .resources
                .iter()
                .filter_map(|&(rid, _)| {
                    let c = d.counter(rid)?;
                    Some(json!({"name": names.get(rid)?, "max": c.capacity(), "load": c.load()}))
                })
                .collect();
            // OpenSIPS's keys: uri, id, group, enabled, auto-reenable
            // ("off" for a destination disabled by hand), Resources, attrs;
            // then siplb's status fields.
            let mut item = json!({
                "uri": d.config.uri,
                "id": d.config.id,
                "group": d.config.group,
                "enabled": if d.enabled() { "yes" } else { "no" },
                "auto-reenable": if d.status().sticky() { "off" } else { "on" },
                "Resources": resources,
            });
            if !d.config.attrs.is_empty() {
                item["attrs"] = json!(d.config.attrs);
            }
            if let (Value::Object(o), Value::Object(extra)) = (&mut item, status_fields(d)) {
                o.extend(extra);
            }
            if d.retired() {
                item["removed"] = json!("yes");
            }
            item
        })
        .collect();
    json!({ "Destinations": dests })
}

/// A destination's status for listings (`lb_list`, `ds_list`): `reason`
/// of the last change (`config`, `admin`, `probe`, `call_failure`),
/// `last_change` (UTC, RFC 3339; `null` when unchanged since loaded),
/// `last_code` (the reply code behind it, 408 for a timeout),
/// `probe_mode`, and `last_probe` (`"ok 200"`, `"failed 503"`,
/// `"timeout"`) once probed.
pub fn status_fields(d: &DestState) -> Value {
    let s = d.status();
    let probe = d.last_probe().map(|r| match r {
        crate::lb::ProbeResult::Ok(c) => format!("ok {c}"),
        crate::lb::ProbeResult::Failed(c) => format!("failed {c}"),
        crate::lb::ProbeResult::Timeout => "timeout".to_string(),
    });
    json!({
        "reason": s.reason.as_str(),
        "last_change": s.since.map(|t| rfc3339(wall_clock(t))),
        "last_code": s.code,
        "probe_mode": d.config.probe_mode,
        "last_probe": probe,
    })
}

/// The wall-clock time of an `Instant` in the past.
pub fn wall_clock(t: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(Instant::now().saturating_duration_since(t))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `2026-11-22T03:10:42Z` (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Asks every worker; the error is the message for the JSON-RPC error.
fn ask(view: &View, cmd: &Control) -> Result<Vec<ControlReply>, String> {
    let c = view.control.as_ref().ok_or("no workers to ask")?;
    c.ask(cmd, CONTROL_TIMEOUT).map_err(|e| e.to_string())
}

/// One dialog in OpenSIPS's `dlg_list` shape (state 2 early, 4
/// confirmed; times in Unix seconds), plus `destination` and `resources`.
pub fn dialog_json(view: &View, d: &DialogView) -> Value {
    let unix = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let now = std::time::SystemTime::now();
    let start = unix(now.checked_sub(d.age));
    let timeout = unix(now.checked_add(d.expires_in));
    let mut item = json!({
        "ID": format!("{}.{}.{}", d.worker, d.index, d.generation),
        "state": if d.confirmed { 4 } else { 2 },
        "timestart": start,
        "timeout": timeout,
        "callid": d.call_id,
        "from_uri": d.from_uri,
        "to_uri": d.to_uri,
        "caller_tag": d.from_tag,
        "caller_contact": d.caller_contact,
        "CALLEES": if d.confirmed {
            json!([{"callee_tag": d.to_tag, "callee_contact": d.callee_contact}])
        } else {
            json!([])
        },
    });
    let dest = d.hold.and_then(|h| view.table.dest(h.dest)).or_else(|| {
        d.destination
            .and_then(|a| view.table.configured().map(|(_, x)| x).find(|x| x.addr() == a))
    });
    item["destination"] = match dest {
        Some(x) => json!({"id": x.config.id, "group": x.config.group, "uri": x.config.uri}),
        None => d
            .destination
            .map_or(Value::Null, |a| json!({ "uri": format!("sip:{a}") })),
    };
    let names = view.table.resource_names();
    item["resources"] = json!(d
        .hold
        .map(|h| h
            .resources
            .iter()
            .filter_map(|r| names.get(r).cloned())
            .collect::<Vec<_>>())
        .unwrap_or_default());
    item
}

/// A dispatcher state as OpenSIPS names it: up, down for good (an
/// operator's or the config's), or down until probing brings it back.
fn ds_state(d: &DestState) -> &'static str {
    let s = d.status();
    if s.up {
        "Active"
    } else if s.sticky() {
        "Inactive"
    } else {
        "Probing"
    }
}

/// `ds_list` in OpenSIPS's shape: one partition (`default`), the sets in
/// ascending id order, each set's destinations in table order.
pub fn ds_list(view: &View) -> Value {
    let dests: Vec<&DestState> = view.table.configured().map(|(_, d)| d).collect();
    let mut sets: Vec<u32> = dests.iter().map(|d| d.config.group).collect();
    sets.sort_unstable();
    sets.dedup();
    let sets: Vec<Value> = sets
        .into_iter()
        .map(|set| {
            let members: Vec<Value> = dests
                .iter()
                .filter(|d| d.config.group == set)
                .map(|d| {
                    let mut item = json!({
                        "URI": d.config.uri,
                        "state": ds_state(d),
                        "weight": d.config.weight,
                        "priority": d.config.priority,
                    });
                    if !d.config.attrs.is_empty() {
                        item["attr"] = json!(d.config.attrs);
                    }
                    if !d.config.description.is_empty() {
                        item["description"] = json!(d.config.description);
                    }
                    if let (Value::Object(o), Value::Object(extra)) = (&mut item, status_fields(d)) {
                        o.extend(extra);
                    }
                    item
                })
                .collect();
            json!({"id": set, "Destinations": members})
        })
        .collect();
    json!({"PARTITIONS": [{"name": "default", "SETS": sets}]})
}

/// `ds_set_state <a|i|p> <[partition:]set> <uri>`.
fn ds_set_state(view: &View, params: &Value) -> Result<(), (i64, &'static str)> {
    let state = param(params, 0, "state").ok_or((-32602, "Invalid params: state"))?;
    let group = param(params, 1, "group").ok_or((-32602, "Invalid params: group"))?;
    let address = param(params, 2, "address").ok_or((-32602, "Invalid params: address"))?;
    // Active and inactive are an operator's decision (inactive is sticky);
    // probing is down until probes succeed again.
    let (up, reason) = match state.trim().chars().next() {
        Some('a' | 'A' | '1') => (true, Reason::Admin),
        Some('i' | 'I' | '0') => (false, Reason::Admin),
        Some('p' | 'P' | '2') => (false, Reason::Probe),
        _ => return Err((500, "Bad state value")),
    };
    // OpenSIPS allows "partition:set"; siplb has one partition.
    let set_text = group.rsplit(':').next().unwrap_or_default().trim();
    let set: u32 = set_text.parse().map_err(|_| (500, "bad group value"))?;
    let wanted = crate::config::uri_addr(address.trim());
    let d = view
        .table
        .configured()
        .map(|(_, d)| d)
        .find(|d| {
            d.config.group == set
                && (d.config.uri.eq_ignore_ascii_case(address.trim()) || wanted.is_some_and(|a| a == d.addr()))
        })
        .ok_or((404, "destination not found"))?;
    d.set_status(up, reason, None, Some(Instant::now()));
    Ok(())
}

fn qualified(name: &str) -> String {
    let dialog = matches!(
        name,
        "early_dialogs" | "active_dialogs" | "processed_dialogs" | "expired_dialogs" | "failed_dialogs"
    );
    if dialog {
        format!("dialog:{name}")
    } else {
        format!("siplb:{name}")
    }
}

/// `get_statistics` for names (`group:name`, `group:` or `all`).
pub fn statistics(view: &View, wanted: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, v) in crate::runtime::sum_stats(&view.stats) {
        let q = qualified(name);
        let group = &q[..=q.find(':').unwrap_or(0)];
        if wanted
            .iter()
            .any(|w| w == "all" || *w == q || w == name || (w.ends_with(':') && w == group))
        {
            out.insert(q, json!(v));
        }
    }
    Value::Object(out)
}

/// Prometheus text exposition (see [`crate::metrics`]).
pub fn metrics(view: &View) -> String {
    let mut s = crate::metrics::render(&view.table, &view.stats, view.started);
    if let Some(ha) = &view.ha {
        crate::ha::metrics(ha, &view.table, &mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn view() -> View {
        let c = Config::parse(include_str!("../../examples/siplb.toml")).unwrap();
        View {
            table: Arc::new(Table::new(&c.destinations, &c.resource_names)),
            stats: vec![Arc::new(Stats::default()), Arc::new(Stats::default())],
            started: Instant::now(),
            token: None,
            live: None,
            control: None,
            ha: None,
        }
    }

    #[test]
    fn lb_list_shape() {
        let v = view();
        let r = handle(r#"{"jsonrpc":"2.0","method":"lb_list","id":"1"}"#, &v);
        assert_eq!(r["id"], "1");
        let d = &r["result"]["Destinations"][1];
        assert_eq!(d["id"], 2);
        assert_eq!(d["uri"], "sip:127.0.0.1:5082");
        assert_eq!(d["enabled"], "yes");
        assert_eq!(d["auto-reenable"], "on");
        assert!(d.get("attrs").is_none(), "empty attrs are left out, as OpenSIPS does");
        assert_eq!(d["Resources"][0], json!({"name": "pstn", "max": 32, "load": 0}));
        let r2 = handle(r#"{"jsonrpc":"2.0","method":"load_balancer:list","id":2}"#, &v);
        assert_eq!(r2["result"], r["result"]);
    }

    #[test]
    fn statistics_sum_over_workers() {
        let v = view();
        Stats::inc(&v.stats[0].processed_dialogs);
        Stats::inc(&v.stats[1].processed_dialogs);
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"get_statistics","params":{"statistics":["dialog:"]},"id":1}"#,
            &v,
        );
        assert_eq!(r["result"]["dialog:processed_dialogs"], 2);
        assert_eq!(r["result"]["dialog:active_dialogs"], 0);
        assert!(r["result"].get("siplb:rx_requests").is_none());
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"get_statistics","params":[["all"]],"id":1}"#,
            &v,
        );
        assert_eq!(r["result"]["siplb:rx_requests"], 0);
    }

    #[test]
    fn status_and_resize() {
        let v = view();
        let r = handle(r#"{"jsonrpc":"2.0","method":"lb_status","params":["2"],"id":"1"}"#, &v);
        assert_eq!(r["result"]["enable"], "yes");
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"lb_status","params":["2","0"],"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        assert!(!v.table.destinations()[1].enabled());
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"load_balancer:status","params":{"destination_id":"2","new_status":"1"},"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        assert!(v.table.destinations()[1].enabled());
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"lb_resize","params":{"destination_id":"1","res_name":"vm","new_capacity":"7"},"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        assert_eq!(v.table.destinations()[0].counter(1).unwrap().capacity(), 7);
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"lb_resize","params":["1","gold","7"],"id":"1"}"#,
            &v,
        );
        assert_eq!(r["error"]["code"], 404);
        let r = handle(r#"{"jsonrpc":"2.0","method":"lb_status","params":["99"],"id":"1"}"#, &v);
        assert_eq!(r["error"]["code"], 404);
    }

    #[test]
    fn rfc3339_dates() {
        let t = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_795_316_642), "2026-11-22T03:04:02Z");
    }

    #[test]
    fn lb_list_shows_status_reason_and_time() {
        let v = view();
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"lb_status","params":["1","0"],"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        let r = handle(r#"{"jsonrpc":"2.0","method":"lb_list","id":"1"}"#, &v);
        let d = &r["result"]["Destinations"][0];
        assert_eq!(d["enabled"], "no");
        assert_eq!(d["auto-reenable"], "off");
        assert_eq!(d["reason"], "admin");
        assert!(d["last_change"].as_str().unwrap().ends_with('Z'), "{d}");
        let d = &r["result"]["Destinations"][1];
        assert_eq!(
            (d["reason"].as_str(), d["last_change"].is_null()),
            (Some("config"), true)
        );
    }

    #[test]
    fn ds_list_and_set_state() {
        let v = view();
        let r = handle(r#"{"jsonrpc":"2.0","method":"ds_list","id":"1"}"#, &v);
        let part = &r["result"]["PARTITIONS"][0];
        assert_eq!(part["name"], "default");
        let set = &part["SETS"][0];
        assert_eq!(set["id"], 1);
        let d = &set["Destinations"][1];
        assert_eq!(d["URI"], "sip:127.0.0.1:5082");
        assert_eq!(d["state"], "Active");
        assert_eq!((d["weight"].as_u64(), d["priority"].as_i64()), (Some(1), Some(0)));
        assert_eq!(d["description"], "media server 2");
        let r2 = handle(
            r#"{"jsonrpc":"2.0","method":"dispatcher:list","params":[],"id":"1"}"#,
            &v,
        );
        assert_eq!(r2["result"], r["result"]);
        // Positional (opensips-cli) and named parameters, partition prefix.
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"ds_set_state","params":["i","1","sip:127.0.0.1:5082"],"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        assert!(!v.table.destinations()[1].enabled());
        let r = handle(r#"{"jsonrpc":"2.0","method":"ds_list","id":"1"}"#, &v);
        assert_eq!(
            r["result"]["PARTITIONS"][0]["SETS"][0]["Destinations"][1]["state"],
            "Inactive"
        );
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"dispatcher:set_state","params":{"state":"a","group":"default:1","address":"sip:127.0.0.1:5082"},"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        assert!(v.table.destinations()[1].enabled());
        // p: down, but not for good (probing may bring it back).
        let r = handle(
            r#"{"jsonrpc":"2.0","method":"ds_set_state","params":["p","1","sip:127.0.0.1:5082"],"id":"1"}"#,
            &v,
        );
        assert_eq!(r["result"], "OK");
        let d = &v.table.destinations()[1];
        assert!(!d.enabled() && !d.status().sticky());
        let r = handle(r#"{"jsonrpc":"2.0","method":"ds_list","id":"1"}"#, &v);
        let item = &r["result"]["PARTITIONS"][0]["SETS"][0]["Destinations"][1];
        assert_eq!(
            (item["state"].as_str(), item["reason"].as_str()),
            (Some("Probing"), Some("probe"))
        );
        for (params, code) in [
            (r#"["x","1","sip:127.0.0.1:5082"]"#, 500),
            (r#"["a","2","sip:127.0.0.1:5082"]"#, 404),
            (r#"["a","1","sip:127.0.0.1:5099"]"#, 404),
            (r#"["a","one","sip:127.0.0.1:5082"]"#, 500),
            (r#"["a"]"#, -32602),
        ] {
            let r = handle(
                &format!(r#"{{"jsonrpc":"2.0","method":"ds_set_state","params":{params},"id":"1"}}"#),
                &v,
            );
            assert_eq!(r["error"]["code"], code, "{params}: {r}");
        }
    }

    #[test]
    fn which_and_errors() {
        let v = view();
        let r = handle(r#"{"jsonrpc":"2.0","method":"which","params":{},"id":"7"}"#, &v);
        assert!(r["result"].as_array().unwrap().contains(&json!("lb_list")));
        let r = handle(r#"{"jsonrpc":"2.0","method":"nope","id":1}"#, &v);
        assert_eq!(r["error"]["code"], -32601);
        let r = handle(r#"{"jsonrpc":"2.0","method":"health","id":1}"#, &v);
        assert_eq!(r["result"]["status"], "ok");
        assert_eq!(r["result"]["workers"], 2);
        let r = handle("{", &v);
        assert_eq!(r["error"]["code"], -32700);
        assert!(metrics(&v).contains("siplb_destination_load{group=\"1\",destination=\"1\",resource=\"pstn\"} 0"));
    }
}
