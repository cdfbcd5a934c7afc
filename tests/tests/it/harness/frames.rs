//! Reading server frames as JSON: their type, execution, `seq`, short descriptions for assertion
//! messages, and the event-type lists.

use serde_json::Value;

/// The lists of the protocol crate: execution events (numbered with the execution's `seq`), the ones
/// that end a stream, and session events (numbered with the session's `seq`).
pub use c2s_shared::protocol::{
    EXECUTION_EVENT_TYPES as EVENT_TYPES, SESSION_EVENT_TYPES,
    TERMINAL_EVENT_TYPES as TERMINAL_TYPES,
};

pub(super) fn tail_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A frame shortened for error messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 400 {
        s
    } else {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

pub fn ty(f: &Value) -> &str {
    f.get("type").and_then(Value::as_str).unwrap_or("<no type>")
}

pub fn exec_of(f: &Value) -> Option<&str> {
    f.get("payload")?.get("executionId")?.as_str()
}

pub fn seq_of(f: &Value) -> u64 {
    f.get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("frame without integer `seq`: {}", short(f)))
}

pub fn is_event(f: &Value) -> bool {
    EVENT_TYPES.contains(&ty(f))
}

pub fn is_event_of(f: &Value, exec: &str) -> bool {
    is_event(f) && exec_of(f) == Some(exec)
}

pub fn is_terminal(f: &Value) -> bool {
    TERMINAL_TYPES.contains(&ty(f))
}

pub fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(ty).collect()
}

/// Compact description of a frame list for assertion messages: `type#seq` of each (runs collapsed).
pub fn describe(frames: &[Value]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let t = ty(&frames[i]);
        let mut j = i + 1;
        while j < frames.len() && ty(&frames[j]) == t {
            j += 1;
        }
        let s = |f: &Value| {
            f.get("seq")
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into())
        };
        if j - i == 1 {
            out.push(format!("{t}#{}", s(&frames[i])));
        } else {
            out.push(format!(
                "{t}#{}..{} (x{})",
                s(&frames[i]),
                s(&frames[j - 1]),
                j - i
            ));
        }
        i = j;
    }
    format!("[{}]", out.join(", "))
}

/// The current wall clock in ms since the epoch (to compare with server timestamps on this machine).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An HS256 JWT of `claims` (the gateway's `--jwt-secret` mode).
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encoding a JWT")
}
