//! The bus in one process (embedded mode): the same state machine and guarantees as [`super::RedisBus`],
//! kept in memory. Executions and idempotency records expire like their Redis counterparts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::fair::FairQueue;
use super::hub::{ChannelKind, Hub, Local, Subscription};
use super::{
    topic_fanout, with_seq, Bus, BusError, BusEvent, BusSettings, CancelOutcome, Delivery,
    ExecutionInfo, Followers, Job, JoinOutcome, JoinRequest, QueueStats, SessionSnapshot, TakeOver,
    Taker, Topic, UpdateOutcome, VERSION_PLACEHOLDER,
};
use crate::keys::Keys;

struct Execution {
    owner: String,
    session_id: Option<String>,
    state: &'static str,
    events: VecDeque<BusEvent>,
    /// The last seq written.
    seq: u64,
    /// Events up to this seq were trimmed (every live follower had taken them).
    trimmed: u64,
    /// Reader id -> (seq taken, live until).
    followers: HashMap<String, (u64, Instant)>,
    touched: Instant,
}

#[derive(Default)]
struct Session {
    seq: u64,
    events: VecDeque<BusEvent>,
    /// (participant id, participant JSON), in join order.
    participants: Vec<(String, String)>,
    query_text: String,
    query_version: u64,
    query_author: Option<String>,
    cursors: HashMap<String, String>,
    chat: VecDeque<String>,
    chat_ids: HashMap<String, Instant>,
    touched: Option<Instant>,
}

#[derive(Default)]
struct State {
    executions: HashMap<String, Execution>,
    /// Unfinished executions per owner (the per-user cap).
    running_by_user: HashMap<String, HashMap<String, Instant>>,
    sessions: HashMap<String, Session>,
    idempotency: HashMap<(String, String), (String, Instant)>,
    next_delivery: u64,
    /// The job queue, scheduled fairly between users.
    jobs: FairQueue,
    /// Slots of the (one) worker, as it last said.
    slots: usize,
    /// User -> socket -> lease deadline (the per-user connection cap).
    connections: HashMap<String, HashMap<String, Instant>>,
}

pub struct MemoryBus {
    settings: BusSettings,
    keys: Keys,
    hub: Hub,
    state: Mutex<State>,
    /// Wakes a worker waiting for a job (an enqueue, a slot freed).
    wake: Notify,
}

impl MemoryBus {
    /// Must be called inside a tokio runtime (the hub spawns its control task).
    pub fn new(settings: BusSettings) -> MemoryBus {
        MemoryBus {
            keys: Keys::new(settings.key_prefix.clone()),
            hub: Hub::new(Local, settings.fanout_capacity),
            settings,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `frame` with the session's next seq, logs it and publishes it (the Lua `append` twin).
    fn session_append_locked(&self, session_id: &str, session: &mut Session, frame: &str) -> u64 {
        session.seq += 1;
        let event = BusEvent {
            seq: session.seq,
            terminal: false,
            frame: with_seq(frame, session.seq).into(),
        };
        if session.events.len() >= self.settings.session_event_max_len.max(1) {
            session.events.pop_front();
        }
        session.touched = Some(Instant::now());
        self.hub.deliver(
            &self.keys.session_channel(session_id),
            Bytes::from(event.encode()),
        );
        session.events.push_back(event);
        session.seq
    }

    fn expire(&self, state: &mut State) {
        let (ttl, finished) = (self.settings.event_ttl, self.settings.finished_retention);
        state.executions.retain(|_, e| {
            let keep = if e.state == "done" { finished } else { ttl };
            e.touched.elapsed() < keep
        });
        let ttl = self.settings.idempotency_ttl;
        state.idempotency.retain(|_, (_, at)| at.elapsed() < ttl);
        let ttl = self.settings.session_ttl;
        state
            .sessions
            .retain(|_, s| s.touched.is_none_or(|t| t.elapsed() < ttl));
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn settings(&self) -> &BusSettings {
        &self.settings
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn enqueue(&self, job: &Job, max_per_user: usize) -> Result<bool, BusError> {
        let lease = self.settings.user_lease;
        {
            let mut state = self.state();
            self.expire(&mut state);
            let running = state.running_by_user.entry(job.owner.clone()).or_default();
            running.retain(|_, since| since.elapsed() < lease);
            if running.len() >= max_per_user {
                return Ok(false);
            }
            running.insert(job.execution_id.clone(), Instant::now());
            state.executions.insert(
                job.execution_id.clone(),
                Execution {
                    owner: job.owner.clone(),
                    session_id: job.session_id.clone(),
                    state: "queued",
                    events: VecDeque::new(),
                    seq: 0,
                    trimmed: 0,
                    followers: HashMap::new(),
                    touched: Instant::now(),
                },
            );
            state.next_delivery += 1;
            let delivery = Delivery {
                delivery_id: state.next_delivery.to_string(),
                job: job.clone(),
                user_running: 0,
            };
            state.jobs.push(delivery);
        };
        self.wake.notify_one();
        Ok(true)
    }

    async fn claim_idempotency(
        &self,
        user: &str,
        client_id: &str,
        execution_id: &str,
    ) -> Result<Option<String>, BusError> {
        let mut state = self.state();
        self.expire(&mut state);
        let key = (user.to_owned(), client_id.to_owned());
        if let Some((existing, _)) = state.idempotency.get(&key) {
            return Ok(Some(existing.clone()));
        }
        state
            .idempotency
            .insert(key, (execution_id.to_owned(), Instant::now()));
        Ok(None)
    }

    async fn release_idempotency(&self, user: &str, client_id: &str) -> Result<(), BusError> {
        self.state()
            .idempotency
            .remove(&(user.to_owned(), client_id.to_owned()));
        Ok(())
    }

    async fn execution_info(&self, execution_id: &str) -> Result<Option<ExecutionInfo>, BusError> {
        Ok(self
            .state()
            .executions
            .get(execution_id)
            .map(|e| ExecutionInfo {
                owner: e.owner.clone(),
                state: e.state.to_owned(),
                session_id: e.session_id.clone(),
                seq: e.seq,
                trimmed: e.trimmed,
            }))
    }

    async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, BusError> {
        let outcome = {
            let mut state = self.state();
            match state.executions.get_mut(execution_id) {
                None => CancelOutcome::NotFound,
                Some(e) if e.state == "queued" => {
                    e.state = "cancelled";
                    CancelOutcome::WasQueued
                }
                Some(e) if e.state == "running" => CancelOutcome::Running,
                Some(_) => CancelOutcome::Finished,
            }
        };
        if outcome == CancelOutcome::Running {
            self.hub.deliver(
                &self.keys.cancel_channel(),
                Bytes::from(execution_id.to_owned()),
            );
        }
        Ok(outcome)
    }

    async fn read_events(
        &self,
        topic: &Topic,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError> {
        let state = self.state();
        let events = match topic {
            Topic::Execution(id) => state.executions.get(id).map(|e| &e.events),
            Topic::Session(id) => state.sessions.get(id).map(|s| &s.events),
        };
        Ok(events
            .map(|events| {
                events
                    .iter()
                    .filter(|ev| ev.seq > after_seq)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription, BusError> {
        self.hub
            .subscribe_bounded(
                &self.keys.topic_channel(topic),
                ChannelKind::Sharded,
                topic_fanout(topic, &self.settings),
            )
            .await
    }

    async fn next_job(
        &self,
        taker: &Taker<'_>,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        let take = || {
            let mut state = self.state();
            state.slots = taker.concurrency.max(1);
            let slots = state.slots;
            state.jobs.take(slots, taker.fairness)
        };
        // Armed before looking, so a wake-up between the look and the wait is not missed.
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(delivery) = take() {
            return Ok(Some(delivery));
        }
        let _ = tokio::time::timeout(block, notified).await;
        Ok(take())
    }

    async fn ack_job(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.state().jobs.ack(&delivery.delivery_id);
        self.wake.notify_one();
        Ok(())
    }

    async fn queue_position(&self, execution_id: &str) -> Result<Option<u64>, BusError> {
        Ok(self.state().jobs.position(execution_id))
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>, BusError> {
        let state = self.state();
        Ok(Some(state.jobs.stats(state.slots)))
    }

    async fn open_connection(
        &self,
        user: &str,
        socket: &str,
        max: usize,
        lease: Duration,
    ) -> Result<bool, BusError> {
        let mut state = self.state();
        let now = Instant::now();
        let sockets = state.connections.entry(user.to_owned()).or_default();
        sockets.retain(|_, until| *until > now);
        if !sockets.contains_key(socket) && sockets.len() >= max {
            return Ok(false);
        }
        sockets.insert(socket.to_owned(), now + lease);
        Ok(true)
    }

    async fn close_connection(&self, user: &str, socket: &str) -> Result<(), BusError> {
        let mut state = self.state();
        if let Some(sockets) = state.connections.get_mut(user) {
            sockets.remove(socket);
            if sockets.is_empty() {
                state.connections.remove(user);
            }
        }
        Ok(())
    }

    // One process: a worker cannot die without the whole bus; nothing is ever reclaimed.
    async fn reclaim_jobs(
        &self,
        _consumer: &str,
        _min_idle: Duration,
        _count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    async fn queue_depth(&self) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    async fn keep_alive_jobs(&self, _consumer: &str, _ids: &[String]) -> Result<(), BusError> {
        Ok(())
    }

    async fn take_over(&self, execution_id: &str, _worker_id: &str) -> Result<TakeOver, BusError> {
        let mut state = self.state();
        Ok(match state.executions.get_mut(execution_id) {
            Some(e) if e.state == "queued" => {
                e.state = "running";
                TakeOver::Start
            }
            Some(e) if e.state == "running" => TakeOver::Lost,
            _ => TakeOver::Finished,
        })
    }

    async fn last_seq(&self, topic: &Topic) -> Result<u64, BusError> {
        let state = self.state();
        let events = match topic {
            Topic::Execution(id) => state.executions.get(id).map(|e| &e.events),
            Topic::Session(id) => state.sessions.get(id).map(|s| &s.events),
        };
        Ok(events.and_then(|e| e.back()).map_or(0, |e| e.seq))
    }

    async fn try_start(&self, execution_id: &str, _worker_id: &str) -> Result<bool, BusError> {
        let mut state = self.state();
        Ok(match state.executions.get_mut(execution_id) {
            Some(e) if e.state == "queued" => {
                e.state = "running";
                true
            }
            _ => false,
        })
    }

    async fn publish_event(&self, execution_id: &str, event: &BusEvent) -> Result<(), BusError> {
        {
            let mut state = self.state();
            let cap = self.settings.event_stream_max_len.max(1);
            if let Some(e) = state.executions.get_mut(execution_id) {
                if e.events.len() >= cap {
                    e.events.pop_front();
                }
                e.events.push_back(event.clone());
                e.seq = event.seq;
                e.touched = Instant::now();
                if event.terminal {
                    e.state = "done";
                    let owner = e.owner.clone();
                    if let Some(running) = state.running_by_user.get_mut(&owner) {
                        running.remove(execution_id);
                    }
                }
            }
        }
        self.hub.deliver(
            &self.keys.execution_channel(execution_id),
            Bytes::from(event.encode()),
        );
        Ok(())
    }

    async fn follower_position(
        &self,
        execution_id: &str,
        reader: &str,
        taken: u64,
        live_for: Duration,
    ) -> Result<(), BusError> {
        let mut state = self.state();
        if let Some(e) = state.executions.get_mut(execution_id) {
            let entry = e
                .followers
                .entry(reader.to_owned())
                .or_insert((taken, Instant::now()));
            *entry = (entry.0.max(taken), Instant::now() + live_for);
        }
        Ok(())
    }

    async fn followers(&self, execution_id: &str, trim_up_to: u64) -> Result<Followers, BusError> {
        let mut state = self.state();
        let Some(e) = state.executions.get_mut(execution_id) else {
            return Ok(Followers::default());
        };
        let now = Instant::now();
        e.followers.retain(|_, (_, until)| *until >= now);
        let min_taken = e.followers.values().map(|(taken, _)| *taken).min();
        if let Some(lowest) = min_taken {
            let up_to = lowest.min(trim_up_to);
            while e.events.front().is_some_and(|ev| ev.seq <= up_to) {
                e.events.pop_front();
            }
            e.trimmed = e.trimmed.max(up_to);
        }
        Ok(Followers {
            live: e.followers.len(),
            min_taken,
        })
    }

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.cancel_channel(), ChannelKind::Classic)
            .await
    }

    async fn session_join(&self, r: JoinRequest<'_>) -> Result<JoinOutcome, BusError> {
        let mut state = self.state();
        self.expire(&mut state);
        let session = state.sessions.entry(r.session_id.to_owned()).or_default();
        // A rejoin takes over its previous entry, if it is the same user's (one node: no ghosts of
        // other nodes to discount from the cap).
        if let Some(old) = r.replaces {
            let same_user = |json: &str| {
                serde_json::from_str::<serde_json::Value>(json)
                    .is_ok_and(|p| p["userId"].as_str() == Some(r.user_id))
            };
            let before = session.participants.len();
            session
                .participants
                .retain(|(id, json)| id != old || !same_user(json));
            if session.participants.len() < before {
                session.cursors.remove(old);
                self.session_append_locked(r.session_id, session, r.replaced_frame);
            }
        }
        if session.participants.len() >= r.max_participants {
            return Ok(JoinOutcome::Full);
        }
        session
            .participants
            .push((r.participant_id.to_owned(), r.participant.to_owned()));
        let seq = self.session_append_locked(r.session_id, session, r.joined_frame);
        let skip = session.chat.len().saturating_sub(r.chat_history);
        Ok(JoinOutcome::Joined(SessionSnapshot {
            seq,
            participants: session
                .participants
                .iter()
                .map(|(_, p)| p.clone())
                .collect(),
            query_text: session.query_text.clone(),
            query_version: session.query_version,
            query_author: session.query_author.clone(),
            cursors: session
                .cursors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            chat: session.chat.iter().skip(skip).cloned().collect(),
        }))
    }

    async fn session_leave(
        &self,
        session_id: &str,
        participant_id: &str,
        _node_id: &str,
        left_frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let mut state = self.state();
        let Some(session) = state.sessions.get_mut(session_id) else {
            return Ok(None);
        };
        session.cursors.remove(participant_id);
        let before = session.participants.len();
        session.participants.retain(|(id, _)| id != participant_id);
        if session.participants.len() == before {
            return Ok(None);
        }
        Ok(Some(
            self.session_append_locked(session_id, session, left_frame),
        ))
    }

    async fn session_update_query(
        &self,
        session_id: &str,
        author_id: &str,
        text: &str,
        base_version: Option<u64>,
        frame: &str,
    ) -> Result<UpdateOutcome, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        if base_version.is_some_and(|b| b != session.query_version) {
            return Ok(UpdateOutcome::Conflict {
                version: session.query_version,
                text: session.query_text.clone(),
            });
        }
        session.query_version += 1;
        session.query_text = text.to_owned();
        session.query_author = Some(author_id.to_owned());
        let version = session.query_version;
        let frame = frame.replacen(VERSION_PLACEHOLDER, &format!("\"version\":{version}"), 1);
        let seq = self.session_append_locked(session_id, session, &frame);
        Ok(UpdateOutcome::Applied { version, seq })
    }

    async fn session_cursor(
        &self,
        session_id: &str,
        participant_id: &str,
        cursor: &str,
        frame: &str,
    ) -> Result<u64, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        session
            .cursors
            .insert(participant_id.to_owned(), cursor.to_owned());
        Ok(self.session_append_locked(session_id, session, frame))
    }

    async fn session_chat(
        &self,
        session_id: &str,
        message_id: &str,
        entry: &str,
        frame: &str,
    ) -> Result<Option<u64>, BusError> {
        let ttl = self.settings.idempotency_ttl;
        let cap = self.settings.chat_max_len.max(1);
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        session.chat_ids.retain(|_, at| at.elapsed() < ttl);
        if session.chat_ids.contains_key(message_id) {
            return Ok(None);
        }
        session
            .chat_ids
            .insert(message_id.to_owned(), Instant::now());
        if session.chat.len() >= cap {
            session.chat.pop_front();
        }
        session.chat.push_back(entry.to_owned());
        Ok(Some(self.session_append_locked(session_id, session, frame)))
    }

    async fn session_append(&self, session_id: &str, frame: &str) -> Result<u64, BusError> {
        let mut state = self.state();
        let session = state.sessions.entry(session_id.to_owned()).or_default();
        Ok(self.session_append_locked(session_id, session, frame))
    }

    async fn publish_notice(&self, frame: &str) -> Result<(), BusError> {
        self.hub
            .deliver(&self.keys.notices(), Bytes::from(frame.to_owned()));
        Ok(())
    }

    async fn notices(&self) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.notices(), ChannelKind::Classic)
            .await
    }

    // One process, one node: nobody else to watch.
    async fn node_heartbeat(&self, _node_id: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn dead_nodes(&self, _ttl: Duration) -> Result<Vec<String>, BusError> {
        Ok(Vec::new())
    }

    async fn node_participants(&self, _node_id: &str) -> Result<Vec<(String, String)>, BusError> {
        Ok(Vec::new())
    }

    async fn forget_node(&self, _node_id: &str) -> Result<(), BusError> {
        Ok(())
    }
}
