//! The streams one socket follows: one relay task ([`Forward`]) per topic, each writing to the socket
//! (a clone of its `actix_ws::Session`) within the socket's one byte budget, and telling the session
//! task what it must act on through the socket's instruction channel ([`Outbound`]).
//!
//! Invariants: a topic is followed at most once per socket (a resume replaces the earlier relay);
//! at most `C2S_MAX_STREAMS_PER_CONNECTION` are followed at a time; every relay is aborted when the
//! socket ends ([`Streams::stop_all`]). The subscription is taken before `follow` returns, so no event
//! published after it can be missed; the relay starts only when the session calls
//! [`Streams::start_waiting`], after the reply of the message that asked for it (an `ack`, a
//! `session_state`): a replayed event never overtakes it.

use std::collections::HashMap;
use std::sync::Arc;

use c2s_shared::bus::Topic;
use c2s_shared::codes::ErrorCode;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::follower::Follower;
use super::forward::Forward;
use super::outbound::{Outbound, INSTRUCTIONS};
use super::refusal::Refusal;
use crate::state::AppState;

pub struct Streams {
    state: Arc<AppState>,
    /// The socket, for the relays to write to.
    ws: actix_ws::Session,
    /// The socket's outbound channel and budget, made when the first stream is followed: a socket
    /// that never follows one (an idle tab) pays no channel (tokio allocates a block of 32 slots and
    /// a ~0.5 KB header per channel at creation).
    outlet: Option<Outlet>,
    followed: HashMap<Topic, Relaying>,
    /// Whether some relay in `followed` is still waiting to start.
    waiting: bool,
}

/// A followed topic's relay: subscribed and waiting for the session's reply to go out, or running.
enum Relaying {
    Waiting(Box<Forward>),
    Running(JoinHandle<()>),
}

impl Relaying {
    fn is_finished(&self) -> bool {
        matches!(self, Relaying::Running(task) if task.is_finished())
    }

    fn stop(self) {
        if let Relaying::Running(task) = self {
            task.abort();
        }
    }
}

/// The socket's instruction channel, both ends (the receiver is read by the session loop through
/// [`Streams::recv`]), and its byte budget.
struct Outlet {
    out: mpsc::Sender<Outbound>,
    inbox: mpsc::Receiver<Outbound>,
    /// Bytes of event frames waiting for this socket (C2S_OUTBOUND_QUEUE_BYTES).
    out_bytes: Arc<Semaphore>,
}

impl Streams {
    /// The streams of a new socket (none followed, no channel yet).
    pub fn new(state: Arc<AppState>, ws: actix_ws::Session) -> Self {
        Streams {
            state,
            ws,
            outlet: None,
            followed: HashMap::new(),
            waiting: false,
        }
    }

    /// The next instruction from the followed streams; pending forever while none was
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
            let (out, inbox) = mpsc::channel::<Outbound>(INSTRUCTIONS);
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
        self.followed.retain(|_, relay| !relay.is_finished());
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
        if let Some(relay) = self.followed.remove(topic) {
            relay.stop();
        }
    }

    /// Stops every relay (the socket is closing).
    pub fn stop_all(&mut self) {
        for (_, relay) in self.followed.drain() {
            relay.stop();
        }
    }

    /// Starts the relays followed since the last call (the session has sent its reply).
    pub fn start_waiting(&mut self) {
        if !std::mem::take(&mut self.waiting) {
            return;
        }
        let waiting: Vec<Topic> = self
            .followed
            .iter()
            .filter(|(_, relay)| matches!(relay, Relaying::Waiting(_)))
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in waiting {
            if let Some(Relaying::Waiting(forward)) = self.followed.remove(&topic) {
                let task = actix_web::rt::spawn(forward.run());
                self.followed.insert(topic, Relaying::Running(task));
            }
        }
    }

    /// Subscribes to the topic's live events (before returning); the relay starts with the next
    /// [`Streams::start_waiting`].
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
            ws: self.ws.clone(),
            send_timeout: limits.send_timeout(),
            out_bytes,
            budget_total: limits.outbound_queue_bytes.max(1),
            resync_interval: limits.resync_interval(),
            replay_batch: limits.replay_batch.max(1),
            queue_position_interval: limits.queue_position_interval(),
        };
        self.followed
            .insert(topic, Relaying::Waiting(Box::new(forward)));
        self.waiting = true;
        Ok(())
    }
}
