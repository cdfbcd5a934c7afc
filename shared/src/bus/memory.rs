//! The bus in one process (embedded mode): the same state machine and guarantees as [`super::RedisBus`],
//! kept in memory. Executions and idempotency records expire like their Redis counterparts.
//!
//! Invariants: all state is in one `State` behind one mutex, so each call is atomic as a Redis script
//! is; the lock is never held across an `.await` (a call that waits, `next_job`, waits on `wake`
//! outside it). Each concern implements its trait for `MemoryBus` in its own `memory.rs`
//! (`jobs/`, `events/`, `sessions/`, `nodes/`); this file holds the state they share.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::hub::{Hub, Local};
use super::jobs::fair::FairQueue;
use super::{BusCore, BusError, BusEvent, BusSettings};
use crate::keys::Keys;

pub(super) struct Execution {
    pub(super) owner: String,
    pub(super) session_id: Option<String>,
    pub(super) state: &'static str,
    pub(super) events: VecDeque<BusEvent>,
    /// The last seq written.
    pub(super) seq: u64,
    /// Events up to this seq were trimmed (every live follower had taken them).
    pub(super) trimmed: u64,
    /// Reader id -> (seq taken, live until).
    pub(super) followers: HashMap<String, (u64, Instant)>,
    pub(super) touched: Instant,
}

#[derive(Default)]
pub(super) struct Session {
    pub(super) seq: u64,
    pub(super) events: VecDeque<BusEvent>,
    /// (participant id, participant JSON), in join order.
    pub(super) participants: Vec<(String, String)>,
    pub(super) query_text: String,
    pub(super) query_version: u64,
    pub(super) query_author: Option<String>,
    pub(super) cursors: HashMap<String, String>,
    pub(super) chat: VecDeque<String>,
    pub(super) chat_ids: HashMap<String, Instant>,
    pub(super) touched: Option<Instant>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) executions: HashMap<String, Execution>,
    /// Unfinished executions per owner (the per-user cap).
    pub(super) running_by_user: HashMap<String, HashMap<String, Instant>>,
    pub(super) sessions: HashMap<String, Session>,
    pub(super) idempotency: HashMap<(String, String), (String, Instant)>,
    pub(super) next_delivery: u64,
    /// The job queue, scheduled fairly between users.
    pub(super) jobs: FairQueue,
    /// Slots of the (one) worker, as it last said.
    pub(super) slots: usize,
    /// User -> socket -> lease deadline (the per-user connection cap).
    pub(super) connections: HashMap<String, HashMap<String, Instant>>,
}

pub struct MemoryBus {
    pub(super) settings: BusSettings,
    pub(super) keys: Keys,
    pub(super) hub: Hub,
    state: Mutex<State>,
    /// Wakes a worker waiting for a job (an enqueue, a slot freed).
    pub(super) wake: Notify,
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

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what outlived its retention, as Redis expires the same records by their TTL.
    pub(super) fn expire(&self, state: &mut State) {
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
impl BusCore for MemoryBus {
    fn settings(&self) -> &BusSettings {
        &self.settings
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}
