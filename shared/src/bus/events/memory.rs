//! Event logs in one process: each execution's events in a capped deque beside its state, delivered live
//! through the hub right after they are logged (outside the lock).
//!
//! Invariants: an event is logged before it is delivered, so a follower that subscribed and then reads the
//! log misses nothing; a terminal event frees its owner's slot in the same lock that logs it; trimming
//! never goes past the lowest position of the live followers.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{topic_fanout, BusEvent, EventLog, ExecutionInfo, Followers, Topic};
use crate::bus::hub::{ChannelKind, Subscription};
use crate::bus::{BusError, MemoryBus};

#[async_trait]
impl EventLog for MemoryBus {
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

    async fn last_seq(&self, topic: &Topic) -> Result<u64, BusError> {
        let state = self.state();
        let events = match topic {
            Topic::Execution(id) => state.executions.get(id).map(|e| &e.events),
            Topic::Session(id) => state.sessions.get(id).map(|s| &s.events),
        };
        Ok(events.and_then(|e| e.back()).map_or(0, |e| e.seq))
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
}
