//! The bus in one process (embedded mode): the same state machine and guarantees as [`super::RedisBus`],
//! kept in memory. Executions and idempotency records expire like their Redis counterparts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use super::hub::{Hub, Local, Subscription};
use super::{Bus, BusError, BusEvent, BusSettings, CancelOutcome, Delivery, ExecutionInfo, Job};
use crate::keys::Keys;

struct Execution {
    owner: String,
    state: &'static str,
    events: VecDeque<BusEvent>,
    touched: Instant,
}

#[derive(Default)]
struct State {
    executions: HashMap<String, Execution>,
    idempotency: HashMap<(String, String), (String, Instant)>,
    next_delivery: u64,
}

pub struct MemoryBus {
    settings: BusSettings,
    keys: Keys,
    hub: Hub,
    state: Mutex<State>,
    jobs_tx: mpsc::UnboundedSender<Delivery>,
    jobs_rx: AsyncMutex<mpsc::UnboundedReceiver<Delivery>>,
}

impl MemoryBus {
    /// Must be called inside a tokio runtime (the hub spawns its control task).
    pub fn new(settings: BusSettings) -> MemoryBus {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        MemoryBus {
            keys: Keys::new(settings.key_prefix.clone()),
            hub: Hub::new(Local, settings.fanout_capacity),
            settings,
            state: Mutex::default(),
            jobs_tx,
            jobs_rx: AsyncMutex::new(jobs_rx),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(&self, state: &mut State) {
        let ttl = self.settings.event_ttl;
        state.executions.retain(|_, e| e.touched.elapsed() < ttl);
        let ttl = self.settings.idempotency_ttl;
        state.idempotency.retain(|_, (_, at)| at.elapsed() < ttl);
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn enqueue(&self, job: &Job) -> Result<(), BusError> {
        let delivery = {
            let mut state = self.state();
            self.expire(&mut state);
            state.executions.insert(
                job.execution_id.clone(),
                Execution {
                    owner: job.owner.clone(),
                    state: "queued",
                    events: VecDeque::new(),
                    touched: Instant::now(),
                },
            );
            state.next_delivery += 1;
            Delivery {
                delivery_id: state.next_delivery.to_string(),
                job: job.clone(),
            }
        };
        self.jobs_tx.send(delivery).map_err(|_| BusError::Closed)
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
        execution_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, BusError> {
        let state = self.state();
        Ok(state
            .executions
            .get(execution_id)
            .map(|e| {
                e.events
                    .iter()
                    .filter(|ev| ev.seq > after_seq)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn subscribe(&self, execution_id: &str) -> Result<Subscription, BusError> {
        self.hub
            .subscribe(&self.keys.execution_channel(execution_id))
            .await
    }

    async fn next_job(
        &self,
        _consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>, BusError> {
        let mut rx = self.jobs_rx.lock().await;
        match tokio::time::timeout(block, rx.recv()).await {
            Ok(Some(d)) => Ok(Some(d)),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Ok(None),
        }
    }

    async fn ack_job(&self, _delivery: &Delivery) -> Result<(), BusError> {
        Ok(())
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
                e.touched = Instant::now();
                if event.terminal {
                    e.state = "done";
                }
            }
        }
        self.hub.deliver(
            &self.keys.execution_channel(execution_id),
            Bytes::from(event.encode()),
        );
        Ok(())
    }

    async fn cancel_requests(&self) -> Result<Subscription, BusError> {
        self.hub.subscribe(&self.keys.cancel_channel()).await
    }
}
