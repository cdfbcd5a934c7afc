//! The message bus between gateways and workers, split by concern, each concern a trait with two
//! implementations beside its Lua scripts:
//! - [`JobQueue`] (`jobs/`): enqueue with the per-user cap, idempotency, the fair scheduler, the
//!   execution's way from `queued` to `running`, reclaim and take-over, cancel;
//! - [`EventLog`] (`events/`): each execution's numbered, capped event log with its live feed, its
//!   followers' window, the explicit end of orphans, and operator notices;
//! - [`SessionState`] (`sessions/`): collaboration sessions, every change numbered in one per-session order;
//! - [`NodePresence`] (`nodes/`): gateway nodes' heartbeats and participants, the per-user socket cap.
//!
//! [`Bus`] is all four plus [`BusCore`] (settings, liveness), with a blanket impl: one `Arc<dyn Bus>`
//! handle serves every call site (a trait object's supertrait methods need no import); code that holds a
//! concrete [`MemoryBus`] or [`RedisBus`], or is generic over a concern, imports [`prelude`].
//!
//! The two implementations:
//! - [`RedisBus`] (`redis_bus/` for what the concerns share: connections, pub/sub, replicas): Redis
//!   Streams for what must not be lost (jobs, per-execution event logs), sharded pub/sub for live
//!   fan-out, Lua scripts for the execution state machine; on one Redis or a Redis Cluster. Used by
//!   every networked deployment.
//! - [`MemoryBus`] (`memory.rs`: one state struct): the same semantics in one process, for the embedded
//!   default (`gateway --embedded`).
//!
//! Both feed live events through the same [`hub::Hub`], which keeps one subscription per channel per node
//! and fans out to every local subscriber.

mod events;
pub mod hub;
mod jobs;
mod memory;
mod nodes;
mod redis_bus;
mod sessions;
mod settings;

use async_trait::async_trait;

pub use events::{with_seq, BusEvent, EventLog, ExecutionInfo, Followers, Topic};
pub use hub::{ChannelKind, Subscription, RESYNC};
pub use jobs::{CancelOutcome, Delivery, Fairness, Job, JobQueue, QueueStats, TakeOver, Taker};
pub use memory::MemoryBus;
pub use nodes::NodePresence;
pub use redis_bus::RedisBus;
pub use sessions::{
    JoinOutcome, JoinRequest, SessionSnapshot, SessionState, UpdateOutcome, GHOST_PLACEHOLDER,
    VERSION_PLACEHOLDER,
};
pub use settings::BusSettings;

/// The bus traits, for code calling them on a concrete bus or a generic one (on `dyn Bus` they need no
/// import).
pub mod prelude {
    pub use super::{Bus, BusCore, EventLog, JobQueue, NodePresence, SessionState};
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("malformed bus data: {0}")]
    Malformed(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus closed")]
    Closed,
}

/// What every concern shares: the tunables and the bus's liveness.
#[async_trait]
pub trait BusCore: Send + Sync {
    /// The tunables this bus runs with.
    fn settings(&self) -> &BusSettings;

    /// Liveness of the bus (readiness probes).
    async fn ping(&self) -> Result<(), BusError>;
}

/// The whole bus, one handle: implemented for every type that implements each concern.
pub trait Bus:
    BusCore + JobQueue + EventLog + SessionState + NodePresence + Send + Sync + 'static
{
}

impl<T> Bus for T where
    T: BusCore + JobQueue + EventLog + SessionState + NodePresence + Send + Sync + 'static
{
}
