//! How the streams a socket follows reach the client: each stream's relay writes its frames to the
//! socket itself (its own clone of the `actix_ws::Session`), and hands the session task only what the
//! session must act on ([`Outbound`]), through the socket's small instruction channel.
//!
//! Why not through the session task: a delivery that went relay → session task → socket woke two
//! tasks and ran the session's whole `select!` (its timers, the node's notice and drain channels) per
//! frame; at 100 frames a second on thousands of sockets that was the gateway's largest cost.
//!
//! Invariants: a frame is written within the send timeout or the client is a slow consumer, which the
//! relay reports ([`Outbound::SlowConsumer`]) and the session closes (1013); both variants are one
//! pointer wide (tokio's mpsc allocates its first block of 32 slots with the channel).

use std::time::Duration;

use bytestring::ByteString;
use c2s_shared::metrics::count_frame_out;
use futures_util::FutureExt;

/// What a relay asks of the socket's session task.
pub enum Outbound {
    /// A shared execution was announced in the collaboration session: follow it too.
    Follow(Box<str>),
    /// The client took nothing for the send timeout: close it (1013); it resumes with `afterSeq`.
    SlowConsumer,
}

/// How many instructions may wait for the session task (a relay waits for room, never drops one).
pub const INSTRUCTIONS: usize = 32;

/// Why a frame was not written.
#[derive(Debug, PartialEq, Eq)]
pub enum Unwritten {
    /// The socket is closed.
    Closed,
    /// The client took nothing for the send timeout.
    TimedOut,
}

/// Writes one frame (counted by type), giving up after `limit`. A write the socket's queue takes at
/// once (the common case) arms no timer.
pub async fn send_within(
    ws: &mut actix_ws::Session,
    text: ByteString,
    limit: Duration,
) -> Result<(), Unwritten> {
    count_frame_out(&text);
    let mut send = std::pin::pin!(ws.text(text));
    let written = match send.as_mut().now_or_never() {
        Some(done) => done,
        // Boxed: the timer is only needed on this slow path, and inline it would enlarge every
        // relay's future.
        None => Box::pin(tokio::time::timeout(limit, send))
            .await
            .map_err(|_| Unwritten::TimedOut)?,
    };
    written.map_err(|_| Unwritten::Closed)
}
