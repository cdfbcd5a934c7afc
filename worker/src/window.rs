//! The worker's side of end-to-end backpressure: an execution may have at most
//! `C2S_STREAM_WINDOW_BYTES` of published events that some live follower has not written to its socket
//! yet. Before each `data_chunk` the worker checks; when the chunk would overfill the window it waits
//! (and, as it waits, stops reading from PostgreSQL, which holds the cursor) until the slowest live
//! follower catches up. Each time it asks where the followers are, the events that lie more than one
//! window behind what every live follower took are trimmed from the log. That margin covers what a
//! follower's gateway counted as written but its client never read (socket buffers lost with a closed
//! connection), so a resume from the last seq the client *received* still finds it; so the log of a
//! running execution holds at most two windows, and a result of less than one is never trimmed.
//!
//! Invariants: the wait ends with the query's deadline (reader pauses count against `timeoutMs`), with a
//! cancel, or — when no follower has been live for the resume grace — with [`Failure::NoReaders`]; the
//! followers are asked once per quarter window of bytes while it is not full, so a fast reader costs
//! a round trip per couple of MiB. While the window has room that question runs beside the query (its
//! answer is taken at a later chunk), so a fast reader's query never waits for it; at most one question
//! is out at a time, and only a full window waits for an answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c2s_shared::bus::{Bus, BusError, Followers};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;

/// While the window is full, how often the worker looks at the followers again.
const POLL: Duration = Duration::from_millis(20);

/// What stops a query while it waits for its followers.
pub struct Limits {
    pub cancel: CancellationToken,
    pub deadline: tokio::time::Instant,
    pub timeout: Duration,
}

pub struct Window {
    bus: Arc<dyn Bus>,
    execution_id: String,
    bytes: u64,
    grace: Duration,
    limits: Option<Limits>,
    /// (seq, bytes of events published up to and including it), for the events still in the log.
    published: VecDeque<(u64, u64)>,
    /// Bytes of every event published.
    total: u64,
    /// Bytes of the events every live follower took (never goes down).
    taken: u64,
    /// `total` when the followers were last asked.
    asked_at: u64,
    /// Since when no follower was live (as last seen).
    alone_since: Option<Instant>,
    /// The question to the followers that runs beside the query, if one is out.
    asking: Option<Ask>,
}

/// A question to the followers on its way: what it may trim, and its answer.
struct Ask {
    trim_up_to: u64,
    answer: JoinHandle<Result<Followers, BusError>>,
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(ask) = self.asking.take() {
            ask.answer.abort();
        }
    }
}

impl Window {
    pub fn new(bus: Arc<dyn Bus>, execution_id: String) -> Window {
        let settings = bus.settings();
        let (bytes, grace) = (settings.stream_window_bytes.max(1), settings.resume_grace);
        Window {
            bus,
            execution_id,
            bytes,
            grace,
            limits: None,
            published: VecDeque::new(),
            total: 0,
            taken: 0,
            asked_at: 0,
            alone_since: None,
            asking: None,
        }
    }

    /// The cancel token and deadline a wait honours (none: the window is not enforced).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = Some(limits);
    }

    /// Counts an event as published.
    pub fn published(&mut self, seq: u64, size: usize) {
        self.total += size as u64;
        self.published.push_back((seq, self.total));
    }

    /// Returns when an event of `size` bytes fits in the window.
    pub async fn admit(&mut self, size: usize) -> Result<(), Failure> {
        let Some(limits) = self.limits.take() else {
            return Ok(());
        };
        let admitted = self.wait_for_room(size as u64, &limits).await;
        self.limits = Some(limits);
        admitted
    }

    async fn wait_for_room(&mut self, size: u64, limits: &Limits) -> Result<(), Failure> {
        let fits = |w: &Window| w.total - w.taken + size <= w.bytes;
        if self.asking.as_ref().is_some_and(|a| a.answer.is_finished()) {
            self.answered().await?;
        }
        if fits(self) {
            if self.asking.is_none() && self.total - self.asked_at >= self.bytes / 4 {
                self.ask();
            }
            return Ok(());
        }
        loop {
            if self.asking.is_none() {
                self.ask();
            }
            self.answered().await?;
            if fits(self) {
                return Ok(());
            }
            if self.alone_since.is_some_and(|t| t.elapsed() >= self.grace) {
                return Err(Failure::NoReaders);
            }
            tokio::select! {
                biased;
                // Cancelled while it waited.
                _ = limits.cancel.cancelled() => return Err(Failure::Cancelled),
                // The query's time is up, pauses included.
                _ = tokio::time::sleep_until(limits.deadline) => return Err(Failure::timeout(limits.timeout)),
                // Look again.
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Asks where the followers are (on a task of its own), trimming from the log what lies a window
    /// behind what they all took.
    fn ask(&mut self) {
        let keep_from = self.taken.saturating_sub(self.bytes);
        // The last event whose bytes all lie before that margin (0: none).
        let trim_up_to = self
            .published
            .iter()
            .take_while(|(_, upto)| *upto <= keep_from)
            .last()
            .map_or(0, |(seq, _)| *seq);
        let (bus, execution_id) = (self.bus.clone(), self.execution_id.clone());
        let answer = tokio::spawn(async move { bus.followers(&execution_id, trim_up_to).await });
        self.asked_at = self.total;
        self.asking = Some(Ask { trim_up_to, answer });
    }

    /// Waits for the answer of the question that is out (if any) and takes it in.
    async fn answered(&mut self) -> Result<(), Failure> {
        let Some(Ask { trim_up_to, answer }) = self.asking.take() else {
            return Ok(());
        };
        let followers = answer
            .await
            .map_err(|e| BusError::Unavailable(format!("asking the followers failed: {e}")))??;
        match followers.min_taken {
            Some(lowest) if followers.live > 0 => {
                self.alone_since = None;
                if let Some((_, upto)) = self
                    .published
                    .iter()
                    .take_while(|(s, _)| *s <= lowest)
                    .last()
                {
                    self.taken = self.taken.max(*upto);
                }
                while self
                    .published
                    .front()
                    .is_some_and(|(seq, _)| *seq <= trim_up_to)
                {
                    self.published.pop_front();
                }
            }
            _ => {
                self.alone_since.get_or_insert_with(Instant::now);
            }
        }
        Ok(())
    }
}
