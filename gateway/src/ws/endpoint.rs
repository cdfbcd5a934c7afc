//! The four WebSocket endpoints and the one table of which client messages each takes.
//!
//! Invariant: whether a message is accepted depends only on [`Endpoint::accepts`], never on the order
//! of a match; a refused type gets `unknown_type` with the endpoint's [`Endpoint::refusal_hint`].

/// Which endpoint a socket came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/query`: run, cancel and resume queries.
    Query,
    /// `/ws/data`: follow the data stream of an execution started elsewhere.
    Data,
    /// `/ws/collaboration/{sessionId}`: a shared query space.
    Collaboration,
    /// `/ws/monitoring`: latency pings, node status, system notices.
    Monitoring,
}

/// Client message types every endpoint takes.
const COMMON: &[&str] = &["ping", "refresh_token"];

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Query => "/ws/query",
            Endpoint::Data => "/ws/data",
            Endpoint::Collaboration => "/ws/collaboration",
            Endpoint::Monitoring => "/ws/monitoring",
        }
    }

    /// The client message types this endpoint takes besides `ping` and `refresh_token`.
    fn own_types(self) -> &'static [&'static str] {
        match self {
            Endpoint::Query => &["execute_query", "cancel_query", "resume", "subscribe"],
            Endpoint::Data => &["resume", "subscribe"],
            Endpoint::Collaboration => &[
                "execute_query",
                "cancel_query",
                "resume",
                "subscribe",
                "update_query",
                "move_cursor",
                "chat_message",
            ],
            Endpoint::Monitoring => &[],
        }
    }

    /// Whether a client message of this `type` is taken here.
    pub fn accepts(self, message_type: &str) -> bool {
        COMMON.contains(&message_type) || self.own_types().contains(&message_type)
    }

    /// What the client is told when it sends a `type` this endpoint does not take.
    pub fn refusal_hint(self, message_type: &str) -> &'static str {
        match (self, message_type) {
            (Endpoint::Monitoring, _) => "/ws/monitoring takes ping and refresh_token only",
            (_, "update_query" | "move_cursor" | "chat_message") => {
                "update_query, move_cursor and chat_message belong on /ws/collaboration/{sessionId}"
            }
            _ => "execute_query and cancel_query belong on /ws/query; /ws/data takes subscribe, resume and ping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2s_shared::protocol::CLIENT_MESSAGE_TYPES;

    #[test]
    fn every_type_is_taken_somewhere_and_ping_everywhere() {
        let all = [
            Endpoint::Query,
            Endpoint::Data,
            Endpoint::Collaboration,
            Endpoint::Monitoring,
        ];
        for t in CLIENT_MESSAGE_TYPES {
            assert!(all.iter().any(|e| e.accepts(t)), "{t} is taken nowhere");
        }
        for e in all {
            assert!(e.accepts("ping"));
            for t in e.own_types() {
                assert!(CLIENT_MESSAGE_TYPES.contains(t), "{t} is not a client type");
            }
        }
        assert!(!Endpoint::Monitoring.accepts("subscribe"));
        assert!(!Endpoint::Data.accepts("execute_query"));
        assert!(!Endpoint::Query.accepts("chat_message"));
    }
}
