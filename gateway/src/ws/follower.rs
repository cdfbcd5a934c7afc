//! The gateway's side of end-to-end backpressure: for every execution a socket follows, how far the
//! socket has *written* its events (not merely queued them) is reported to the bus, where the worker
//! reads the slowest live follower's position before each chunk (`worker/src/window.rs`).
//!
//! Invariants: a follower is live while its stream is followed (its position is refreshed at least every
//! third of the resume grace), and for the resume grace after it stops (its socket closed, its node died,
//! or it finished); the position reported never goes back; the session loop writes the position after
//! each frame is written, and a reporter task per followed execution sends it at most every
//! [`REPORT_INTERVAL`], only when it moved or a refresh is due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::Bus;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often a moved position is reported.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// What the session loop needs to tell a follower that a frame of its stream was written.
pub struct Written {
    pub position: Arc<AtomicU64>,
    pub seq: u64,
}

impl Written {
    /// The frame was written to the socket.
    pub fn record(self) {
        self.position.fetch_max(self.seq, Ordering::Relaxed);
    }
}

/// One socket's following of one execution, as reported to the bus. Dropping it (the stream ended,
/// or its task was aborted with the socket) makes the reporter send a last position and stop.
pub struct Follower {
    position: Arc<AtomicU64>,
    _stop: DropGuard,
}

impl Follower {
    /// Starts reporting for `execution_id` from `after_seq` (what the client already has).
    pub fn start(
        bus: Arc<dyn Bus>,
        execution_id: String,
        node_id: &str,
        after_seq: u64,
    ) -> Follower {
        let position = Arc::new(AtomicU64::new(after_seq));
        let stop = CancellationToken::new();
        let reporter = Reporter {
            bus,
            execution_id,
            reader: format!("{node_id}/{}", uuid::Uuid::new_v4().simple()),
            position: position.clone(),
        };
        tokio::spawn(reporter.run(stop.clone()));
        Follower {
            position,
            _stop: stop.drop_guard(),
        }
    }

    /// The ack to attach to the frame of event `seq`.
    pub fn written(&self, seq: u64) -> Written {
        Written {
            position: self.position.clone(),
            seq,
        }
    }
}

struct Reporter {
    bus: Arc<dyn Bus>,
    execution_id: String,
    reader: String,
    position: Arc<AtomicU64>,
}

impl Reporter {
    async fn run(self, stop: CancellationToken) {
        let grace = self.bus.settings().resume_grace;
        let refresh = (grace / 3).max(REPORT_INTERVAL);
        let mut reported: Option<u64> = None;
        let mut last_report = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        loop {
            let stopping = tokio::select! {
                // The stream ended or its socket closed: one last report, so it holds for a full grace.
                _ = stop.cancelled() => true,
                // Time to look at the position.
                _ = tick.tick() => false,
            };
            let taken = self.position.load(Ordering::Relaxed);
            let due = stopping || reported != Some(taken) || last_report.elapsed() >= refresh;
            if due {
                match self
                    .bus
                    .follower_position(&self.execution_id, &self.reader, taken, grace)
                    .await
                {
                    Ok(()) => reported = Some(taken),
                    // Told again at the next tick (the worker waits meanwhile, within its time).
                    Err(e) => tracing::debug!(error = %e, "follower position not recorded"),
                }
                last_report = tokio::time::Instant::now();
            }
            if stopping {
                return;
            }
        }
    }
}
