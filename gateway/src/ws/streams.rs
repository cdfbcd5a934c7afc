//! The streams one socket follows: one relay task ([`Forward`]) per topic, all feeding the socket's
//! one bounded outbound channel and byte budget.
//!
//! Invariants: a topic is followed at most once per socket (a resume replaces the earlier relay);
//! at most `C2S_MAX_STREAMS_PER_CONNECTION` are followed at a time; every relay is aborted when the
//! socket ends ([`Streams::stop_all`]). The subscription is taken before `follow` returns, so no event
//! published after it can be missed.

use std::collections::HashMap;
use std::sync::Arc;

use c2s_shared::bus::Topic;
use c2s_shared::codes::ErrorCode;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::follower::Follower;
use super::forward::Forward;
use super::outbound::Outbound;
use super::refusal::Refusal;
use crate::state::AppState;

pub struct Streams {
    state: Arc<AppState>,
    /// The socket's outbound channel (its receiver is the session loop's).
    out: mpsc::Sender<Outbound>,
    /// Bytes of event frames queued for this socket and not yet written (C2S_OUTBOUND_QUEUE_BYTES).
    out_bytes: Arc<Semaphore>,
    followed: HashMap<Topic, JoinHandle<()>>,
}

impl Streams {
    /// The streams of a new socket, and the receiving end of its outbound channel.
    pub fn new(state: Arc<AppState>) -> (Self, mpsc::Receiver<Outbound>) {
        let limits = &state.ws;
        let (out, outbound) = mpsc::channel::<Outbound>(limits.outbound_queue.max(1));
        let out_bytes = Arc::new(Semaphore::new(limits.outbound_queue_bytes.max(1)));
        let streams = Streams {
            state,
            out,
            out_bytes,
            followed: HashMap::new(),
        };
        (streams, outbound)
    }

    /// Refuses a new stream when the socket already follows its limit of them.
    pub fn check_capacity(&mut self) -> Result<(), Refusal> {
        self.followed.retain(|_, task| !task.is_finished());
        let limit = self.state.ws.max_streams_per_connection;
        if self.followed.len() >= limit {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "this connection already follows {limit} executions; wait for one to finish"
                ),
            ));
        }
        Ok(())
    }

    /// Stops relaying a topic (a resume replaces it, or a failed enqueue takes it back).
    pub fn stop(&mut self, topic: &Topic) {
        if let Some(task) = self.followed.remove(topic) {
            task.abort();
        }
    }

    /// Stops every relay (the socket is closing).
    pub fn stop_all(&mut self) {
        for (_, task) in self.followed.drain() {
            task.abort();
        }
    }

    /// Subscribes to the topic's live events (before returning) and starts relaying them.
    pub async fn follow(&mut self, topic: Topic, after_seq: u64) -> Result<(), Refusal> {
        if self.followed.contains_key(&topic) {
            return Ok(());
        }
        let bus = self.state.bus.clone();
        let subscription = bus.subscribe(&topic).await.map_err(Refusal::unavailable)?;
        // An execution's follower reports what this socket wrote (end-to-end backpressure).
        let follower = match &topic {
            Topic::Execution(id) => Some(Follower::start(
                bus.clone(),
                id.clone(),
                &self.state.node_id,
                after_seq,
            )),
            Topic::Session(_) => None,
        };
        let limits = &self.state.ws;
        let forward = Forward {
            bus,
            follower,
            topic: topic.clone(),
            subscription,
            after_seq,
            out: self.out.clone(),
            out_bytes: self.out_bytes.clone(),
            budget_total: limits.outbound_queue_bytes.max(1),
            resync_interval: limits.resync_interval(),
            replay_batch: limits.replay_batch.max(1),
            queue_position_interval: limits.queue_position_interval(),
        };
        let task = actix_web::rt::spawn(forward.run());
        self.followed.insert(topic, task);
        Ok(())
    }
}
