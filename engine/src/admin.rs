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
//! - `lb_reload` / `load_balancer:reload`, `ds_reload` / `dispatcher:reload`:
//!   re-read the configuration file and its destination source (see
//!   [`crate::reload`]); the result says what was kept, added, removed,
//!   skipped and not reloaded; a refused file is a JSON-RPC error naming
//!   the file and line.
//!
//! `GET /metrics` serves the same counters in Prometheus text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::core::Stats;
use crate::lb::Table;
use crate::reload::Live;

/// What the admin thread can see.
#[derive(Clone)]
pub struct View {
    /// Destinations and load (refreshed from `live` before each request).
    pub table: Arc<Table>,
    /// Per-worker statistics.
    pub stats: Vec<Arc<Stats>>,
    /// The running state, for reloads; `None`: reload commands fail.
    pub live: Option<Arc<Live>>,
}

impl View {
    /// A view of a fixed table, without reload.
    pub fn new(table: Arc<Table>, stats: Vec<Arc<Stats>>) -> View {
        View {
            table,
            stats,
            live: None,
        }
    }

    /// A view that follows the reloads of `live`.
    pub fn live(live: Arc<Live>, stats: Vec<Arc<Stats>>) -> View {
        View {
            table: live.table(),
            stats,
            live: Some(live),
        }
    }
}

const COMMANDS: &[&str] = &[
    "which",
    "lb_list",
    "load_balancer:list",
    "lb_status",
    "load_balancer:status",
    "lb_resize",
    "load_balancer:resize",
    "get_statistics",
    "lb_reload",
    "load_balancer:reload",
    "ds_reload",
    "dispatcher:reload",
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

fn serve(mut req: tiny_http::Request, view: &View) {
    let json_header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static");
    let url = req.url().to_string();
    let method = req.method().clone();
    let response = match (method, url.as_str()) {
        (tiny_http::Method::Post, "/mi") => {
            let mut body = String::new();
            let reply = if std::io::Read::read_to_string(&mut req.as_reader(), &mut body).is_err() {
                error(Value::Null, -32700, "Parse error")
            } else {
                handle(&body, view)
            };
            tiny_http::Response::from_string(reply.to_string()).with_header(json_header)
        }
        (tiny_http::Method::Get, "/metrics") => tiny_http::Response::from_string(metrics(view)),
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    };
    let _ = req.respond(response);
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
}

/// Handles one JSON-RPC request body; returns the response object.
pub fn handle(body: &str, view: &View) -> Value {
    let Ok(req) = serde_json::from_str::<Value>(body) else {
        return error(Value::Null, -32700, "Parse error");
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return error(id, -32600, "Invalid Request");
    };
    let params = req.get("params").cloned().unwrap_or(Value::Null);
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
            Some(c) if COMMANDS.contains(&c) => json!([[]]),
            Some(_) => return error(id, -32601, "Method not found"),
            None => json!(COMMANDS),
        },
        "lb_list" | "load_balancer:list" => lb_list(view),
        "lb_status" | "load_balancer:status" => {
            let Some(d) = param(&params, 0, "destination_id").and_then(|v| destination(view, &v)) else {
                return error(id, 404, "Destination ID not found");
            };
            match param(&params, 1, "new_status") {
                None => json!({"enable": if d.enabled() { "yes" } else { "no" }}),
                Some(v) => match v.as_str() {
                    "0" => {
                        d.set_enabled(false);
                        json!("OK")
                    }
                    "1" => {
                        d.set_enabled(true);
                        json!("OK")
                    }
                    _ => return error(id, -32602, "Invalid params"),
                },
            }
        }
        "lb_resize" | "load_balancer:resize" => {
            let Some(d) = param(&params, 0, "destination_id").and_then(|v| destination(view, &v)) else {
                return error(id, 404, "Destination ID not found");
            };
            let (Some(name), Some(cap)) = (
                param(&params, 1, "res_name"),
                param(&params, 2, "new_capacity").and_then(|v| v.parse::<u32>().ok()),
            ) else {
                return error(id, -32602, "Invalid params");
            };
            let rid = view.table.resource_names().iter().position(|n| *n == name);
            let index = view
                .table
                .configured()
                .find(|(_, x)| std::ptr::eq(*x, d))
                .map(|(i, _)| i);
            match (rid, index) {
                (Some(rid), Some(i)) if view.table.resize(i, rid, cap) => json!("OK"),
                _ => return error(id, 404, "Destination has no such resource"),
            }
        }
        "lb_reload" | "load_balancer:reload" | "ds_reload" | "dispatcher:reload" => {
            let Some(live) = &view.live else {
                return error(id, 500, "reload is not available here");
            };
            match live.reload() {
                Ok(r) => {
                    tracing::info!(
                        command = method,
                        destinations = r.destinations,
                        rules = r.rules,
                        kept = ?r.report.kept,
                        added = ?r.report.added,
                        removed = ?r.report.removed,
                        draining = ?r.report.draining,
                        skipped = r.skipped.len(),
                        not_reloaded = ?r.not_reloaded,
                        "reloaded"
                    );
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
        "get_statistics" => {
            let wanted: Vec<String> = match &params {
                Value::Array(a) => a.iter().flat_map(names).collect(),
                Value::Object(o) => o.get("statistics").map(names).unwrap_or_default(),
                _ => Vec::new(),
            };
            if wanted.is_empty() {
                return error(id, -32602, "Invalid params");
            }
            statistics(view, &wanted)
        }
        _ => return error(id, -32601, "Method not found"),
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

fn destination<'v>(view: &'v View, id: &str) -> Option<&'v crate::lb::DestState> {
    let id: u32 = id.trim().parse().ok()?;
    view.table.by_id(id).map(|(_, d)| d)
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
            // ("off" for a destination disabled by hand), Resources, attrs.
            let mut item = json!({
                "uri": d.config.uri,
                "id": d.config.id,
                "group": d.config.group,
                "enabled": if d.enabled() { "yes" } else { "no" },
                "auto-reenable": if d.config.disabled { "off" } else { "on" },
                "Resources": resources,
            });
            if !d.config.attrs.is_empty() {
                item["attrs"] = json!(d.config.attrs);
            }
            if d.retired() {
                item["removed"] = json!("yes");
            }
            item
        })
        .collect();
    json!({ "Destinations": dests })
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

/// Prometheus text exposition of the counters and loads.
pub fn metrics(view: &View) -> String {
    let mut s = String::new();
    for (name, v) in crate::runtime::sum_stats(&view.stats) {
        s.push_str(&format!("siplb_{name} {v}\n"));
    }
    let names = view.table.resource_names();
    for (_, d) in view.table.configured() {
        for &(rid, _) in &d.config.resources {
            if let (Some(c), Some(r)) = (d.counter(rid), names.get(rid)) {
                let labels = format!(
                    "group=\"{}\",destination=\"{}\",resource=\"{r}\"",
                    d.config.group, d.config.id
                );
                s.push_str(&format!("siplb_destination_load{{{labels}}} {}\n", c.load()));
                s.push_str(&format!("siplb_destination_capacity{{{labels}}} {}\n", c.capacity()));
            }
        }
        s.push_str(&format!(
            "siplb_destination_enabled{{group=\"{}\",destination=\"{}\"}} {}\n",
            d.config.group,
            d.config.id,
            u8::from(d.enabled())
        ));
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
            live: None,
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
    fn which_and_errors() {
        let v = view();
        let r = handle(r#"{"jsonrpc":"2.0","method":"which","params":{},"id":"7"}"#, &v);
        assert!(r["result"].as_array().unwrap().contains(&json!("lb_list")));
        let r = handle(r#"{"jsonrpc":"2.0","method":"nope","id":1}"#, &v);
        assert_eq!(r["error"]["code"], -32601);
        let r = handle("{", &v);
        assert_eq!(r["error"]["code"], -32700);
        assert!(metrics(&v).contains("siplb_destination_load{group=\"1\",destination=\"1\",resource=\"pstn\"} 0"));
    }
}
