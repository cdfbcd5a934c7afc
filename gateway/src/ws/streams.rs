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
    /// The socket's outbound channel and budget, made when the first stream is followed: a socket
    /// that never follows one (an idle tab) pays no channel (tokio allocates a block of 32 slots and
    /// a ~0.5 KB header per channel at creation).
    outlet: Option<Outlet>,
    followed: HashMap<Topic, JoinHandle<()>>,
}

/// The socket's one outbound channel, both ends (the receiver is read by the session loop through
/// [`Streams::recv`]), and its byte budget.
struct Outlet {
    out: mpsc::Sender<Outbound>,
    inbox: mpsc::Receiver<Outbound>,
    /// Bytes of event frames queued for this socket and not yet written (C2S_OUTBOUND_QUEUE_BYTES).
    out_bytes: Arc<Semaphore>,
}

impl Streams {
    /// The streams of a new socket (none followed, no channel yet).
    pub fn new(state: Arc<AppState>) -> Self {
        Streams {
            state,
            outlet: None,
            followed: HashMap::new(),
        }
    }

    /// The next frame or instruction from the followed streams; pending forever while none was
    /// ever followed. Never `None`: the streams keep a sender for as long as they live.
    pub async fn recv(&mut self) -> Option<Outbound> {
        match self.outlet.as_mut() {
            Some(outlet) => outlet.inbox.recv().await,
            None => std::future::pending().await,
        }
    }

    fn outlet(&mut self) -> &Outlet {
        let limits = &self.state.ws;
        self.outlet.get_or_insert_with(|| {
            let (out, inbox) = mpsc::channel::<Outbound>(limits.outbound_queue.max(1));
            let out_bytes = Arc::new(Semaphore::new(limits.outbound_queue_bytes.max(1)));
            Outlet {
                out,
                inbox,
                out_bytes,
            }
        })
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
        let outlet = self.outlet();
        let (out, out_bytes) = (outlet.out.clone(), outlet.out_bytes.clone());
        let limits = &self.state.ws;
        let forward = Forward {
            bus,
            follower,
            topic: topic.clone(),
            subscription,
            after_seq,
            out,
            out_bytes,
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
