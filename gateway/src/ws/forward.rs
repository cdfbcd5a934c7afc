//! Following one numbered stream (an execution's events, or a collaboration session's) for one client:
//! replay its logged events after `afterSeq`, then relay the live ones, each exactly once and in `seq`
//! order, until the terminal event (executions) or until the client leaves (sessions).
//!
//! The live subscription is taken *before* the log is read, so nothing published in between is missed;
//! events already sent are skipped by `seq`. A gap in the live feed (a lagging local broadcast, a pub/sub
//! reconnect, a resubscription after a Redis failover or slot move: [`RESYNC`]) is filled from the log,
//! and a quiet feed is re-checked against the log every `resync_interval` so a lost live message can only
//! delay an event, never drop it.
//!
//! What cannot be filled ends the stream with an explicit `error` naming it, never a silent skip or an
//! endless wait: an execution's log with a hole (events lost in a failover, or trimmed) gives `not_found`
//! with the missing range and `afterSeq`; a log that ends before what this client already saw
//! (a failover lost them) gives `unavailable`; an execution whose job will never run is ended by the bus
//! with a terminal `query_error` ([`Bus::end_if_orphaned`]). A session's trimmed history is reported and
//! skipped (the snapshot of a rejoin covers it). After a resubscription the event last sent is checked
//! against the log: if a failover replaced it (a promoted replica numbered another event the same), the
//! stream ends with `error unavailable` instead of silently skipping the new one.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use c2s_shared::bus::{Bus, BusError, BusEvent, Subscription, Topic, RESYNC};
use c2s_shared::codes::ErrorCode;
use c2s_shared::protocol::{ErrorBody, QueryProgress, ServerFrame, ServerMessage};

use super::deliver_span::{self, DeliverSpan};
use super::follower::Follower;
use super::outbound::{send_within, Outbound, Unwritten};
use c2s_shared::telemetry;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

/// How a session event announcing a shared execution starts: the session's participants then follow it.
const SHARED_EXECUTION_PREFIX: &str = r#"{"type":"shared_execution","#;

pub struct Forward {
    pub bus: Arc<dyn Bus>,
    /// For an execution: reports to the bus how far this socket wrote it (dropped with the Forward).
    pub follower: Option<Follower>,
    pub topic: Topic,
    pub subscription: Subscription,
    pub after_seq: u64,
    /// The socket's instruction channel (what its session task must act on).
    pub out: mpsc::Sender<Outbound>,
    /// The socket, written to directly (see `outbound.rs`).
    pub ws: actix_ws::Session,
    /// A client that takes no frame for this long is a slow consumer.
    pub send_timeout: Duration,
    /// The socket's outbound byte budget: an event frame waits for its size in it before being written.
    pub out_bytes: Arc<Semaphore>,
    /// The size of that budget.
    pub budget_total: usize,
    pub resync_interval: Duration,
    pub replay_batch: usize,
    /// How often a queued execution's place in the job queue is looked up (and sent when it changed).
    pub queue_position_interval: Duration,
}

enum Flow {
    Continue,
    /// The terminal event was sent, or the client is gone.
    Done,
}

impl Forward {
    pub async fn run(self) {
        Relay {
            fwd: self,
            last_sent: None,
            verify: false,
            deliver: None,
            queued_at: None,
        }
        .run()
        .await
    }
}

/// A running [`Forward`] with what it remembers of the stream.
struct Relay {
    fwd: Forward,
    /// Hash of the frame of the event last sent (`after_seq`).
    last_sent: Option<u64>,
    /// Set by a resubscription: the log's event at `after_seq` must still be the one sent.
    verify: bool,
    /// This follower's `deliver` span (an execution's, once its first event is relayed).
    deliver: Option<DeliverSpan>,
    /// The queue position last sent (`query_progress` step `queued`).
    queued_at: Option<u64>,
}

impl std::ops::Deref for Relay {
    type Target = Forward;
    fn deref(&self) -> &Forward {
        &self.fwd
    }
}

impl std::ops::DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut Forward {
        &mut self.fwd
    }
}

fn frame_hash(frame: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    frame.hash(&mut h);
    h.finish()
}

impl Relay {
    async fn run(mut self) {
        if let Err(e) = self.relay().await {
            tracing::warn!(topic = %self.topic, error = %e, "event stream interrupted");
            let message = format!(
                "the event stream of {} was interrupted ({e}); resume with afterSeq {}",
                self.topic, self.after_seq
            );
            self.send_stream_end(ErrorCode::Unavailable, message, Some(self.after_seq))
                .await;
        }
    }

    /// Sends the `error` that ends this socket's following of the stream, naming the stream
    /// (`executionId` / `sessionId`), with the `afterSeq` to resume from when it was cut.
    async fn send_stream_end(&mut self, code: ErrorCode, message: String, after_seq: Option<u64>) {
        let (execution_id, session_id) = match &self.topic {
            Topic::Execution(id) => (Some(id.clone()), None),
            Topic::Session(id) => (None, Some(id.clone())),
        };
        self.send_message(ServerMessage::Error(ErrorBody {
            code,
            message,
            reference: None,
            current_version: None,
            current_query: None,
            execution_id,
            session_id,
            after_seq,
        }))
        .await;
    }

    /// Sends a message of the gateway's own (not an event of the stream) to the client.
    async fn send_message(&mut self, message: ServerMessage) {
        let frame = ServerFrame::new(message);
        self.write(ByteString::from(frame.to_text())).await;
    }

    /// Writes a frame to the socket; false when the socket is gone or the client was reported a slow
    /// consumer (the stream ends either way).
    async fn write(&mut self, text: ByteString) -> bool {
        let limit = self.send_timeout;
        match send_within(&mut self.fwd.ws, text, limit).await {
            Ok(()) => true,
            Err(Unwritten::Closed) => false,
            Err(Unwritten::TimedOut) => {
                let _ = self.out.send(Outbound::SlowConsumer).await;
                false
            }
        }
    }

    async fn relay(&mut self) -> Result<(), BusError> {
        if let Flow::Done = self.catch_up().await? {
            return Ok(());
        }
        let mut last_check = Instant::now();
        let mut heard = Instant::now();
        let mut quiet = Box::pin(tokio::time::sleep(self.resync_interval));
        loop {
            // Before its first event an execution is queued: its place is looked up more often.
            let queued = self.after_seq == 0 && matches!(self.topic, Topic::Execution(_));
            let wait = if queued {
                self.queue_position_interval.min(self.resync_interval)
            } else {
                self.resync_interval
            };
            let received = self.next_live(quiet.as_mut(), &mut heard, wait).await;
            let flow = match received {
                None if queued && last_check.elapsed() < self.resync_interval => {
                    self.report_queue_position().await?;
                    Flow::Continue
                }
                // Quiet for a while: make sure nothing was lost, and that the execution still exists.
                None => {
                    last_check = Instant::now();
                    match self.catch_up().await? {
                        Flow::Continue if queued => {
                            self.report_queue_position().await?;
                            self.check_exists().await?
                        }
                        Flow::Continue => self.check_exists().await?,
                        done => done,
                    }
                }
                // The channel was resubscribed: what was published meanwhile is in the log.
                Some(Ok(bytes)) if bytes.as_ref() == RESYNC => {
                    self.verify = self.last_sent.is_some();
                    self.catch_up().await?
                }
                Some(Ok(bytes)) => {
                    let event = BusEvent::decode_shared(&bytes)?;
                    if self.verify && event.seq == self.after_seq {
                        self.check_same(&event).await
                    } else if event.seq <= self.after_seq {
                        Flow::Continue
                    } else if event.seq == self.after_seq + 1 && !self.verify {
                        self.send(event).await
                    } else {
                        self.catch_up().await?
                    }
                }
                Some(Err(RecvError::Lagged(_))) => self.catch_up().await?,
                Some(Err(RecvError::Closed)) => return Err(BusError::Closed),
            };
            if let Flow::Done = flow {
                return Ok(());
            }
        }
    }

    /// The next live message, or None once the feed has been quiet for `wait` (since the last
    /// message, or the last None). The timer is armed once per quiet period, not per message: a
    /// message only records when it came (`heard`), and a timer that fires early is moved to the end
    /// of the quiet period.
    async fn next_live(
        &mut self,
        mut quiet: Pin<&mut Sleep>,
        heard: &mut Instant,
        wait: Duration,
    ) -> Option<Result<Bytes, RecvError>> {
        if quiet.deadline() > *heard + wait {
            quiet.as_mut().reset(*heard + wait);
        }
        loop {
            tokio::select! {
                biased;
                received = self.fwd.subscription.receiver.recv() => {
                    *heard = Instant::now();
                    return Some(received);
                }
                () = quiet.as_mut() => {
                    let due = *heard + wait;
                    if Instant::now() >= due {
                        *heard = Instant::now();
                        quiet.as_mut().reset(*heard + wait);
                        return None;
                    }
                    quiet.as_mut().reset(due);
                }
            }
        }
    }

    /// Sends every logged event after `after_seq` (after checking, if asked, the one at `after_seq`).
    async fn catch_up(&mut self) -> Result<Flow, BusError> {
        if self.verify {
            let at = self
                .bus
                .read_events(&self.topic, self.after_seq - 1, 1)
                .await?;
            match at.first() {
                Some(e) if e.seq == self.after_seq => {
                    if let Flow::Done = self.check_same(e).await {
                        return Ok(Flow::Done);
                    }
                }
                // Nothing at `after_seq` yet: checked when it comes (executions: `check_exists`).
                _ => {}
            }
        }
        loop {
            let events = self
                .bus
                .read_events(&self.topic, self.after_seq, self.replay_batch)
                .await?;
            if events.is_empty() {
                return Ok(Flow::Continue);
            }
            let full_batch = events.len() >= self.replay_batch;
            for event in events {
                if event.seq > self.after_seq + 1 {
                    if !self.gap_was_trimmed(event.seq).await? {
                        // Lost (a failover): the client's result cannot be complete.
                        self.end_at_gap(event.seq).await;
                        return Ok(Flow::Done);
                    }
                    // Taken by every live follower and trimmed (the window), or a session's trimmed
                    // history: say so, then go on.
                    self.notify_gap(event.seq).await;
                }
                if let Flow::Done = self.send(event).await {
                    return Ok(Flow::Done);
                }
            }
            if !full_batch {
                return Ok(Flow::Continue);
            }
        }
    }

    /// Sends `query_progress` step `queued` with the execution's place in the job queue when it changed
    /// (a frame of the gateway's own, without `seq`: the log numbers only the worker's events).
    async fn report_queue_position(&mut self) -> Result<(), BusError> {
        let Topic::Execution(id) = self.topic.clone() else {
            return Ok(());
        };
        let position = self.bus.queue_position(&id).await?;
        if position.is_none() || position == self.queued_at || self.after_seq > 0 {
            return Ok(());
        }
        self.queued_at = position;
        let message = ServerMessage::QueryProgress(QueryProgress {
            execution_id: id,
            timestamp: c2s_shared::now_ms(),
            progress: 0,
            step: "queued".into(),
            rows_processed: None,
            queue_position: position,
        });
        self.send_message(message).await;
        Ok(())
    }

    /// An execution whose state vanished (expired, or Redis lost its data) will never send its terminal
    /// event: say so instead of waiting forever.
    async fn check_exists(&mut self) -> Result<Flow, BusError> {
        let Topic::Execution(id) = &self.topic else {
            return Ok(Flow::Continue);
        };
        let Some(info) = self.bus.execution_info(id).await? else {
            let message = format!(
                "execution {id} no longer exists (expired, or its state was lost); run it again"
            );
            self.send_stream_end(ErrorCode::NotFound, message, None)
                .await;
            return Ok(Flow::Done);
        };
        if info.seq < self.after_seq {
            let message = format!(
                "events {}..{} of execution {id}, already sent, are no longer in its log (lost in a \
                 Redis failover); the stream cannot continue consistently: run the query again",
                info.seq + 1,
                self.after_seq
            );
            let after = Some(self.after_seq);
            self.send_stream_end(ErrorCode::Unavailable, message, after)
                .await;
            return Ok(Flow::Done);
        }
        if matches!(info.state.as_str(), "pending" | "queued")
            && self.bus.end_if_orphaned(id).await?
        {
            return self.catch_up().await;
        }
        Ok(Flow::Continue)
    }

    /// `event` has the seq of the event last sent: it must be that event, else the log was rewritten by
    /// a failover and this stream cannot go on consistently.
    async fn check_same(&mut self, event: &BusEvent) -> Flow {
        self.verify = false;
        if self.last_sent.is_none_or(|h| h == frame_hash(&event.frame)) {
            return Flow::Continue;
        }
        let rejoin = match self.topic {
            Topic::Execution(_) => "run the query again",
            Topic::Session(_) => "rejoin the session without afterSeq",
        };
        let message = format!(
            "event {} of {} was replaced after a Redis failover (the one sent was lost): {rejoin}",
            self.after_seq, self.topic
        );
        let after = Some(self.after_seq.saturating_sub(1));
        self.send_stream_end(ErrorCode::Unavailable, message, after)
            .await;
        Flow::Done
    }

    /// Whether the events before `next` are missing because they were trimmed on purpose (a session's
    /// capped history; an execution's events every live follower had taken) rather than lost.
    async fn gap_was_trimmed(&self, next: u64) -> Result<bool, BusError> {
        let Topic::Execution(id) = &self.topic else {
            return Ok(true);
        };
        Ok(self
            .bus
            .execution_info(id)
            .await?
            .is_some_and(|info| info.trimmed + 1 >= next))
    }

    /// The next event in an execution's log is `next`, not `after_seq + 1`: end with the missing range.
    async fn end_at_gap(&mut self, next: u64) {
        let message = format!(
            "events {}..{} of {} are missing from its log (lost in a Redis failover, or no longer \
             retained); the result is incomplete: run the query again",
            self.after_seq + 1,
            next - 1,
            self.topic
        );
        let after = Some(self.after_seq);
        self.send_stream_end(ErrorCode::NotFound, message, after)
            .await;
    }

    async fn send(&mut self, event: BusEvent) -> Flow {
        self.after_seq = event.seq;
        self.last_sent = Some(frame_hash(&event.frame));
        self.verify = false;
        let shared = matches!(self.topic, Topic::Session(_))
            && event.frame.starts_with(SHARED_EXECUTION_PREFIX);
        let follow = if shared {
            serde_json::from_str::<ServerFrame>(&event.frame)
                .ok()
                .and_then(|f| match f.message {
                    ServerMessage::SharedExecution(s) => Some(s.execution_id),
                    _ => None,
                })
        } else {
            None
        };
        // Bytes beyond the budget wait here (the stream pauses; the log keeps the rest), so a socket's
        // streams never hold more than C2S_OUTBOUND_QUEUE_BYTES of frames waiting for it (one larger
        // frame takes all of it).
        let want = u32::try_from(event.frame.len()).unwrap_or(u32::MAX).clamp(
            1,
            u32::try_from(self.budget_total).unwrap_or(u32::MAX).max(1),
        );
        let Ok(_budget) = self.out_bytes.clone().acquire_many_owned(want).await else {
            return Flow::Done;
        };
        let written = self
            .follower
            .as_ref()
            .map(|f| f.written(event.seq, event.frame.len()));
        if telemetry::exporting() {
            if self.deliver.is_none() {
                self.deliver = DeliverSpan::start(&self.topic, &event.frame);
            }
            if let Some(deliver) = &mut self.deliver {
                deliver.count(&event.frame);
            }
        }
        let per_event = deliver_span::event_span(&self.topic, event.seq, &event.frame);
        let delivered = match per_event {
            Some(span) => self.write(event.frame).instrument(span).await,
            None => self.write(event.frame).await,
        };
        if delivered {
            // Written: the follower may now report it taken (the execution's window).
            written.into_iter().for_each(|w| w.record());
        }
        if !delivered || event.terminal {
            // The follower's span ends with the stream.
            self.deliver = None;
            return Flow::Done;
        }
        if let Some(execution_id) = follow {
            if self
                .out
                .send(Outbound::Follow(execution_id.into()))
                .await
                .is_err()
            {
                return Flow::Done;
            }
        }
        Flow::Continue
    }

    async fn notify_gap(&mut self, next: u64) {
        // Informational (the stream goes on), so it does not carry `executionId`: an error that does
        // means the stream ended (`not_found`) or was cut (`unavailable`, with `afterSeq`).
        self.send_message(ServerMessage::error(
            ErrorCode::NotFound,
            format!(
                "events {}..{} of {} are no longer retained; continuing at {next}",
                self.after_seq + 1,
                next - 1,
                self.topic
            ),
            None,
        ))
        .await;
    }
}
