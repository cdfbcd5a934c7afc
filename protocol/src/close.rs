//! The one table of WebSocket close codes (RFC 6455 and PROTOCOL.md's application range 4000-4999).
//!
//! Each entry says its number, the reason text the gateway sends with it, and whether a client should
//! reconnect after it. The table is exported in `/schema` (`tables.closeCodes`), and the TypeScript SDK
//! generates its close codes and its retry rule from it, so the two cannot disagree.
//!
//! Invariant: [`Close::ALL`] lists every variant once, in number order (tested), and `from_code` is its
//! inverse. A number outside the table is retried unless it is in 4000-4999 ([`reconnect_after`]).

use schemars::JsonSchema;
use serde::Serialize;

/// A close code the gateway sends, or one a client observes locally (marked in its doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// The server or the client ended the socket on purpose.
    Normal,
    /// The peer is going away (idle timeout, browser navigation).
    GoingAway,
    /// The peer broke the WebSocket protocol (a client bug).
    ProtocolError,
    /// A binary frame where only text is accepted (a client bug).
    UnsupportedData,
    /// No status code in the close frame (observed locally, never sent).
    NoStatus,
    /// The connection dropped without a close frame (observed locally, never sent).
    Abnormal,
    /// A text frame that is not valid UTF-8.
    InvalidData,
    /// Policy violation: bad origin, abuse (rate limit).
    Policy,
    /// A frame over the gateway's size limit.
    TooBig,
    /// The client required an extension the server did not accept (a client bug).
    MandatoryExtension,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// Node draining: reconnect, possibly to another node.
    ServiceRestart,
    /// Overloaded or slow consumer: try again later (resume with `afterSeq`).
    TryAgainLater,
    /// Bad or expired token: the client must not reconnect with it.
    Unauthorized,
    /// Not allowed (for example, not a member of the session).
    Forbidden,
    /// The endpoint or the session does not exist.
    NotFound,
}

impl Close {
    /// Every entry of the table, in number order.
    pub const ALL: [Close; 16] = [
        Close::Normal,
        Close::GoingAway,
        Close::ProtocolError,
        Close::UnsupportedData,
        Close::NoStatus,
        Close::Abnormal,
        Close::InvalidData,
        Close::Policy,
        Close::TooBig,
        Close::MandatoryExtension,
        Close::Internal,
        Close::ServiceRestart,
        Close::TryAgainLater,
        Close::Unauthorized,
        Close::Forbidden,
        Close::NotFound,
    ];

    /// The entry's row: number, constant name, reason text, reconnect.
    const fn row(self) -> (u16, &'static str, &'static str, bool) {
        match self {
            Close::Normal => (1000, "NORMAL", "normal closure", true),
            Close::GoingAway => (1001, "GOING_AWAY", "going away", true),
            Close::ProtocolError => (1002, "PROTOCOL_ERROR", "protocol error", false),
            Close::UnsupportedData => (1003, "UNSUPPORTED_DATA", "unsupported data", false),
            Close::NoStatus => (1005, "NO_STATUS", "no status", true),
            Close::Abnormal => (1006, "ABNORMAL", "abnormal closure", true),
            Close::InvalidData => (1007, "INVALID_DATA", "text frame is not valid UTF-8", false),
            Close::Policy => (1008, "POLICY", "policy violation", false),
            Close::TooBig => (1009, "TOO_BIG", "frame too big", false),
            Close::MandatoryExtension => (1010, "MANDATORY_EXTENSION", "extension required", false),
            Close::Internal => (1011, "INTERNAL", "internal error", true),
            Close::ServiceRestart => (1012, "SERVICE_RESTART", "service restart: reconnect", true),
            Close::TryAgainLater => (1013, "TRY_AGAIN_LATER", "try again later", true),
            Close::Unauthorized => (4001, "UNAUTHORIZED", "unauthorized", false),
            Close::Forbidden => (4003, "FORBIDDEN", "forbidden", false),
            Close::NotFound => (4004, "NOT_FOUND", "not found", false),
        }
    }

    /// The number sent in the close frame.
    pub const fn code(self) -> u16 {
        self.row().0
    }

    /// The constant's name in the SDKs (`TRY_AGAIN_LATER`).
    pub const fn name(self) -> &'static str {
        self.row().1
    }

    /// The short reason text the gateway sends with this code.
    pub const fn reason(self) -> &'static str {
        self.row().2
    }

    /// Whether a client should reconnect (with backoff) after this code. Never after a refusal that the
    /// same request would meet again (4000-4999, policy, size) or after its own protocol bug.
    pub const fn reconnect(self) -> bool {
        self.row().3
    }

    /// The entry for a number, if it is in the table.
    pub fn from_code(code: u16) -> Option<Close> {
        Close::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// The retry rule for any number a client sees: the table's answer, else no for 4000-4999, else yes.
pub fn reconnect_after(code: u16) -> bool {
    match Close::from_code(code) {
        Some(close) => close.reconnect(),
        None => !(4000..=4999).contains(&code),
    }
}

/// One row of the table as `/schema` exports it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CloseCodeEntry {
    pub code: u16,
    pub name: &'static str,
    pub reason: &'static str,
    pub reconnect: bool,
}

/// The whole table, in number order.
pub fn close_code_table() -> Vec<CloseCodeEntry> {
    Close::ALL
        .into_iter()
        .map(|c| CloseCodeEntry {
            code: c.code(),
            name: c.name(),
            reason: c.reason(),
            reconnect: c.reconnect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_number_order_without_repeats() {
        let codes: Vec<u16> = Close::ALL.iter().map(|c| c.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(codes, sorted);
        for close in Close::ALL {
            assert_eq!(Close::from_code(close.code()), Some(close));
        }
    }

    #[test]
    fn application_codes_are_never_retried() {
        for close in Close::ALL.into_iter().filter(|c| c.code() >= 4000) {
            assert!(!close.reconnect(), "{close:?}");
        }
        assert!(!reconnect_after(4999));
        assert!(reconnect_after(1014));
        assert!(reconnect_after(Close::TryAgainLater.code()));
        assert!(!reconnect_after(Close::Policy.code()));
    }
}
