//! The gateway's side of end-to-end backpressure: for every execution a socket follows, how far the
//! socket has *written* its events (not merely queued them) is reported to the bus, where the worker
//! reads the slowest live follower's position before each chunk (`worker/src/window.rs`).
//!
//! Invariants: a follower is live while its stream is followed (its position is refreshed at least every
//! third of the resume grace), and for the resume grace after it stops (its socket closed, its node died,
//! or it finished); the position reported never goes back; the relay writes the position after
//! each frame is written, and a reporter task per followed execution sends it every
//! [`REPORT_INTERVAL`] when it moved or a refresh is due, and at once when a quarter of the execution's
//! window (`C2S_STREAM_WINDOW_BYTES`) was written since the last report: a fast reader's position must
//! reach the worker before the window fills, or the reporting interval, not the reader, sets the pace
//! (84 MB/s filled the 8 MiB window in one interval). At most one report is on its way at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::Bus;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often a moved position is reported.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// How far a follower's socket has written, shared by the relay and the reporter.
struct Progress {
    /// The last seq written.
    position: AtomicU64,
    /// Bytes written since the last report.
    unreported: AtomicU64,
    /// Bytes written that make a report due at once.
    report_bytes: u64,
    /// Wakes the reporter when they were written.
    due: Notify,
}

/// What the relay needs to tell a follower that a frame of its stream was written.
pub struct Written {
    progress: Arc<Progress>,
    seq: u64,
    bytes: u64,
}

impl Written {
    /// The frame was written to the socket.
    pub fn record(self) {
        let p = &self.progress;
        p.position.fetch_max(self.seq, Ordering::Relaxed);
        let before = p.unreported.fetch_add(self.bytes, Ordering::Relaxed);
        if before < p.report_bytes && before + self.bytes >= p.report_bytes {
            p.due.notify_one();
        }
    }
}

/// One socket's following of one execution, as reported to the bus. Dropping it (the stream ended,
/// or its task was aborted with the socket) makes the reporter send a last position and stop.
pub struct Follower {
    progress: Arc<Progress>,
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
        let progress = Arc::new(Progress {
            position: AtomicU64::new(after_seq),
            unreported: AtomicU64::new(0),
            report_bytes: (bus.settings().stream_window_bytes / 4).max(1),
            due: Notify::new(),
        });
        let stop = CancellationToken::new();
        let reporter = Reporter {
            bus,
            execution_id,
            reader: format!("{node_id}/{}", uuid::Uuid::new_v4().simple()),
            progress: progress.clone(),
        };
        tokio::spawn(reporter.run(stop.clone()));
        Follower {
            progress,
            _stop: stop.drop_guard(),
        }
    }

    /// The ack to attach to the frame of event `seq` (`bytes` long).
    pub fn written(&self, seq: u64, bytes: usize) -> Written {
        Written {
            progress: self.progress.clone(),
            seq,
            bytes: bytes as u64,
        }
    }
}

struct Reporter {
    bus: Arc<dyn Bus>,
    execution_id: String,
    reader: String,
    progress: Arc<Progress>,
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
                // A quarter window was written since the last report.
                _ = self.progress.due.notified() => false,
            };
            let unreported = self.progress.unreported.load(Ordering::Relaxed);
            let taken = self.progress.position.load(Ordering::Relaxed);
            let due = stopping || reported != Some(taken) || last_report.elapsed() >= refresh;
            if due {
                match self
                    .bus
                    .follower_position(&self.execution_id, &self.reader, taken, grace)
                    .await
                {
                    Ok(()) => {
                        reported = Some(taken);
                        // What was written while the report was on its way counts towards the next.
                        self.progress
                            .unreported
                            .fetch_sub(unreported, Ordering::Relaxed);
                    }
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
