//! `siplb ctl`: a small blocking JSON-RPC client for the admin API.
//!
//! Arguments follow opensips-cli's habits: `name=value` words make an
//! object of strings (`destination_id=1 new_status=0`), other words a
//! positional array of strings (`1 0`). One HTTP/1.1 request over a plain
//! `TcpStream`, `Connection: close`, with `Authorization: Bearer TOKEN`
//! when a token is given.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

/// What went wrong talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("bad URL {0:?} (expected http://HOST:PORT/mi)")]
    Url(String),
    /// No connection, or it broke.
    #[error("cannot reach {url}: {source}")]
    Io {
        /// Where.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP 401: no token or the wrong one.
    #[error("unauthorized: the admin API wants a bearer token (--token or SIPLB_TOKEN)")]
    Unauthorized,
    /// Not a JSON-RPC answer.
    #[error("unexpected answer (HTTP {status}): {body}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Body (truncated).
        body: String,
    },
    /// A JSON-RPC error object.
    #[error("error {code}: {message}")]
    Rpc {
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
}

/// The `params` for `args`: an object when every word is `name=value`,
/// else an array of strings (an empty array for no words).
pub fn params(args: &[String]) -> Value {
    if !args.is_empty() && args.iter().all(|a| a.contains('=')) {
        let mut o = serde_json::Map::new();
        for a in args {
            if let Some((k, v)) = a.split_once('=') {
                o.insert(k.to_string(), json!(v));
            }
        }
        Value::Object(o)
    } else {
        json!(args)
    }
}

/// Calls `method` with `params` at `url`; the `result` on success.
pub fn call(url: &str, token: Option<&str>, method: &str, params: Value) -> Result<Value, CtlError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| CtlError::Url(url.into()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/mi"),
    };
    if host.is_empty() {
        return Err(CtlError::Url(url.into()));
    }
    let addr = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let io = |source| CtlError::Io {
        url: url.into(),
        source,
    };
    let mut c = TcpStream::connect(&addr).map_err(io)?;
    c.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "1"}).to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    if status == 401 {
        return Err(CtlError::Unauthorized);
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return Err(CtlError::Http {
            status,
            body: body.chars().take(200).collect(),
        });
    };
    if let Some(r) = v.get("result") {
        return Ok(r.clone());
    }
    match v.get("error") {
        Some(e) => Err(CtlError::Rpc {
            code: e["code"].as_i64().unwrap_or(0),
            message: e["message"].as_str().unwrap_or("").to_string(),
        }),
        None => Err(CtlError::Http {
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

/// Decodes a chunked HTTP body (extensions and trailers ignored).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn params_as_opensips_cli_sends_them() {
        assert_eq!(params(&[]), json!([]));
        assert_eq!(params(&words(&["1", "0"])), json!(["1", "0"]));
        assert_eq!(
            params(&words(&["destination_id=1", "new_status=0"])),
            json!({"destination_id": "1", "new_status": "0"})
        );
        assert_eq!(params(&words(&["sip:a=b", "x"])), json!(["sip:a=b", "x"]));
    }

    #[test]
    fn bad_urls_and_chunks() {
        assert!(matches!(
            call("https://x/mi", None, "which", json!({})),
            Err(CtlError::Url(_))
        ));
        assert!(matches!(
            call("http:///mi", None, "which", json!({})),
            Err(CtlError::Url(_))
        ));
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
