//! Publishes one execution's events on a task of its own, in the order they were handed over, so that
//! the worker reads and encodes the next rows while the previous chunk travels to Redis (PostgreSQL
//! keeps streaming instead of waiting on the worker's round trip).
//!
//! Events that are waiting when the task is free go to the bus together, in one round trip
//! ([`EventLog::publish_events`]): on a busy machine each round trip costs far more in wake-ups than in
//! Redis time, and the reader of a fast query is not kept waiting by them.
//!
//! Invariants: events reach the bus in `seq` order; at most [`DEPTH`] wait (so a query holds at most
//! that many encoded frames beyond the one being built), and a batch is at most the events that were
//! waiting; an event with its own publish span (`C2S_OTEL_CHUNK_SPANS`) goes alone, under its span; the
//! first publish error stops the task and is what the next `send` or `flush` returns; dropping the
//! publisher aborts its task.
//!
//! [`EventLog::publish_events`]: c2s_shared::bus::EventLog::publish_events

use std::sync::Arc;

use c2s_shared::bus::{Bus, BusError, BusEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Events handed over and not yet published, at most.
pub const DEPTH: usize = 4;

struct Pending {
    event: BusEvent,
    /// The event's publish span, when traces are exported.
    span: Option<tracing::Span>,
}

pub struct Publisher {
    tx: Option<mpsc::Sender<Pending>>,
    task: Option<JoinHandle<Result<(), BusError>>>,
}

impl Publisher {
    pub fn new(bus: Arc<dyn Bus>, execution_id: String) -> Publisher {
        let (tx, rx) = mpsc::channel(DEPTH);
        Publisher {
            tx: Some(tx),
            task: Some(tokio::spawn(publish_all(bus, execution_id, rx))),
        }
    }

    /// Hands one event over; waits while [`DEPTH`] are pending.
    pub async fn send(
        &mut self,
        event: BusEvent,
        span: Option<tracing::Span>,
    ) -> Result<(), BusError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(Pending { event, span }).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The task stopped: its error says why.
            self.flush().await.and(Err(BusError::Closed))
        }
    }

    /// Waits until every event handed over is published; no event can be sent afterwards.
    pub async fn flush(&mut self) -> Result<(), BusError> {
        self.tx = None;
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| BusError::Unavailable(format!("event publisher failed: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn publish_all(
    bus: Arc<dyn Bus>,
    execution_id: String,
    mut rx: mpsc::Receiver<Pending>,
) -> Result<(), BusError> {
    let mut batch: Vec<BusEvent> = Vec::with_capacity(DEPTH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(Pending { event, span }) = next.take() {
            if let Some(span) = span {
                // Traced alone, so that its span measures its own publish.
                bus.publish_events(&execution_id, &batch).await?;
                batch.clear();
                bus.publish_event(&execution_id, &event)
                    .instrument(span)
                    .await?;
            } else {
                batch.push(event);
            }
            // No more than were waiting (the sender may refill the channel meanwhile).
            if batch.len() < DEPTH {
                next = rx.try_recv().ok();
            }
        }
        bus.publish_events(&execution_id, &batch).await?;
        batch.clear();
    }
    Ok(())
}
