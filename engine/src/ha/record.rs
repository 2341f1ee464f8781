//! The replicated dialog record: compact JSON under
//! `{cluster}:dlg:{scope}:{hash}` with a TTL equal to the dialog's
//! remaining lifetime.
//!
//! `scope` is the advertised address (what Record-Route names): the nodes
//! of an active/standby pair share it (the virtual IP), the nodes of an
//! active/active group each have their own. `hash` is [`stable_hash`] of
//! the Call-ID in hex: the same on every node and every build (the core's
//! own hash is seeded per process).

use serde::{Deserialize, Serialize};

/// A dialog as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Call-ID.
    pub cid: String,
    /// From tag.
    pub ft: String,
    /// To tag.
    pub tt: String,
    /// Destination id.
    pub d: u32,
    /// Destination URI (checked against the loading node's table).
    pub u: String,
    /// Resource names held, one unit each.
    pub r: Vec<String>,
    /// State: `"confirmed"` (only confirmed dialogs are replicated).
    pub s: String,
    /// Lifetime end, Unix milliseconds.
    pub x: u64,
    /// Node that wrote it.
    pub n: String,
}

/// The Redis key of a dialog record; `hash` is [`stable_hash`] of its Call-ID.
pub fn key(prefix: &str, scope: &str, hash: u64) -> String {
    format!("{prefix}:dlg:{scope}:{hash:016x}")
}

/// FNV-1a, 64 bits: a Call-ID hash every node computes alike.
pub fn stable_hash(call_id: &[u8]) -> u64 {
    call_id.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SCAN pattern for the records of a scope.
pub fn pattern(prefix: &str, scope: &str) -> String {
    format!("{prefix}:dlg:{scope}:*")
}

/// The hash part of a key, if it has one.
pub fn key_hash(key: &str) -> Option<u64> {
    u64::from_str_radix(key.rsplit(':').next()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_json_round_trip() {
        let k = key("siplb", "10.0.0.100:5060", 0xabc);
        assert_eq!(k, "siplb:dlg:10.0.0.100:5060:0000000000000abc");
        assert_eq!(key_hash(&k), Some(0xabc));
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(k.starts_with(pattern("siplb", "10.0.0.100:5060").trim_end_matches('*')));
        let r = Record {
            cid: "a@b".into(),
            ft: "1".into(),
            tt: "2".into(),
            d: 3,
            u: "sip:10.0.0.3:5060".into(),
            r: vec!["pstn".into()],
            s: "confirmed".into(),
            x: 1_700_000_000_000,
            n: "lb1".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.len() < 160, "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Record>("{\"cid\":1}").is_err());
    }
}
