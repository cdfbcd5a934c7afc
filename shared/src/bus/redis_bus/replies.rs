//! Reading Redis replies into bus types: event log entries (`<seq>-0` ids, `t`/`f` fields), job entries,
//! and the session join script's snapshot. Malformed data is an error, never a panic.

use bytes::Bytes;
use bytestring::ByteString;
use redis::streams::StreamId;
use redis::Value;

use crate::bus::{BusError, BusEvent, JoinOutcome, SessionSnapshot};

/// The `seq` of an event log entry: its stream id is `<seq>-0`.
pub(in crate::bus) fn seq_of_entry(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

pub(super) fn field_bytes<'a>(
    map: &'a std::collections::HashMap<String, Value>,
    name: &str,
) -> Option<&'a [u8]> {
    match map.get(name) {
        Some(Value::BulkString(b)) => Some(b.as_slice()),
        Some(Value::SimpleString(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

/// An event log entry as a [`BusEvent`]: an execution's event in its live encoding (field `e`, what
/// `exec_append.lua` writes), or the `t` and `f` fields (session events, an orphan's end, and entries
/// written before the `e` field existed).
pub(in crate::bus) fn event_of_entry(entry: &StreamId) -> Result<BusEvent, BusError> {
    let seq = seq_of_entry(&entry.id)
        .ok_or_else(|| BusError::Malformed(format!("event id {}", entry.id)))?;
    if let Some(live) = field_bytes(&entry.map, "e") {
        let event = BusEvent::decode(live)?;
        if event.seq != seq {
            return Err(BusError::Malformed(format!(
                "event {} holds seq {}",
                entry.id, event.seq
            )));
        }
        return Ok(event);
    }
    let terminal = field_bytes(&entry.map, "t") == Some(b"1");
    let frame = field_bytes(&entry.map, "f")
        .ok_or_else(|| BusError::Malformed(format!("event {} has no frame", entry.id)))?;
    let frame = ByteString::try_from(Bytes::copy_from_slice(frame))
        .map_err(|e| BusError::Malformed(e.to_string()))?;
    Ok(BusEvent {
        seq,
        terminal,
        frame,
    })
}

/// Reads the join script's reply: `{0}` (full) or
/// `{1, seq, participants, text, version, author, cursors (flat pairs), chat}`.
pub(in crate::bus) fn parse_join(reply: Value) -> Result<JoinOutcome, BusError> {
    let bad = |what: &str| BusError::Malformed(format!("session join reply: {what}"));
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let text = |v: &Value| -> Result<String, BusError> {
        redis::from_redis_value::<String>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    let number = |v: &Value| -> Result<u64, BusError> {
        redis::from_redis_value::<u64>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    let list = |v: &Value| -> Result<Vec<String>, BusError> {
        redis::from_redis_value::<Vec<String>>(v.clone()).map_err(|e| bad(&e.to_string()))
    };
    match items.first().map(number).transpose()? {
        Some(0) => return Ok(JoinOutcome::Full),
        Some(1) if items.len() == 8 => {}
        _ => return Err(bad("unexpected shape")),
    }
    let author = text(&items[5])?;
    let flat_cursors = list(&items[6])?;
    let cursors = flat_cursors
        .chunks(2)
        .filter_map(|pair| match pair {
            [id, cursor] => Some((id.clone(), cursor.clone())),
            _ => None,
        })
        .collect();
    Ok(JoinOutcome::Joined(SessionSnapshot {
        seq: number(&items[1])?,
        participants: list(&items[2])?,
        query_text: text(&items[3])?,
        query_version: number(&items[4])?,
        query_author: (!author.is_empty()).then_some(author),
        cursors,
        chat: list(&items[7])?,
    }))
}
