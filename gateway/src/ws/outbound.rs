//! What the streams a socket follows hand to its session task, through the socket's bounded channel.
//!
//! Both variants are one pointer wide: tokio's mpsc allocates its first block of 32 slots with the
//! channel, so every idle socket pays 32 × this size (boxing took it from 72 to 16 bytes).

use bytestring::ByteString;
use tokio::sync::OwnedSemaphorePermit;

use super::follower::Written;

pub enum Outbound {
    /// A frame to send as is (see [`QueuedFrame`]).
    Frame(Box<QueuedFrame>),
    /// A shared execution was announced in the collaboration session: follow it too.
    Follow(Box<str>),
}

/// A frame waiting for its socket.
pub struct QueuedFrame {
    pub text: ByteString,
    /// The frame's bytes' share of the connection's outbound budget, held until sent.
    pub budget: Option<OwnedSemaphorePermit>,
    /// For an execution's event, what to record once it is written (the follower's position).
    pub written: Option<Written>,
}

impl Outbound {
    pub fn frame(
        text: ByteString,
        budget: Option<OwnedSemaphorePermit>,
        written: Option<Written>,
    ) -> Self {
        Outbound::Frame(Box::new(QueuedFrame {
            text,
            budget,
            written,
        }))
    }
}
