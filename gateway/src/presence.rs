//! Presence of gateway nodes: each node marks itself alive every `presence_heartbeat` (scored by the
//! Redis clock); every node looks for others silent for longer than `presence_ttl` every
//! `presence_reap`, and reaps their participants, so the others get `participant_left` (reason
//! `node_lost`) when a whole node dies. The bus's leave is exactly-once, so several nodes reaping the
//! same dead one at once still announce each departure once.
//!
//! The beat runs on the bus runtime, not on the actix threads serving sockets, so a node busy with
//! fan-out still beats; its TTL allows several missed beats. A node that stops cleanly announces it
//! ([`announce_shutdown`]): its remaining participants leave and it leaves the node set at once.

use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::{Bus, BusError};
use tokio::task::JoinHandle;

use crate::ws::participant_left_frame;

/// The presence timings (`C2S_PRESENCE_*`).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub heartbeat: Duration,
    pub ttl: Duration,
    pub reap: Duration,
}

/// Starts the beat and the reaper (two tasks: a slow reaping round never delays a beat).
pub fn spawn(bus: Arc<dyn Bus>, node_id: String, t: Timings) -> Vec<JoinHandle<()>> {
    let beat = {
        let (bus, node_id) = (bus.clone(), node_id.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(t.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let started = std::time::Instant::now();
                match bus.node_heartbeat(&node_id).await {
                    Ok(()) => metrics::histogram!(c2s_shared::metrics::REDIS_ROUNDTRIP)
                        .record(started.elapsed().as_secs_f64()),
                    Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
                }
            }
        })
    };
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(t.reap);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = reap_dead(bus.as_ref(), &node_id, t.ttl).await {
                tracing::warn!(error = %e, "presence reaping round failed");
            }
        }
    });
    vec![beat, reaper]
}

/// A clean stop: the participants still registered here (their own leave failed) leave now, and the
/// node leaves the node set, so no peer waits for its presence to expire. Call after the beat stopped.
pub async fn announce_shutdown(bus: &dyn Bus, node_id: &str) {
    let announced = async {
        let left = reap_participants(bus, node_id, "closed").await?;
        bus.forget_node(node_id).await?;
        Ok::<usize, BusError>(left)
    };
    match announced.await {
        Ok(left) => tracing::info!(node = %node_id, left, "announced this node's shutdown"),
        Err(e) => tracing::warn!(error = %e, "could not announce this node's shutdown"),
    }
}

/// A node restarted under the same id (a fixed `--node-id`, a StatefulSet pod) finds its previous
/// incarnation's participants still registered, and its own heartbeat would keep them alive forever:
/// announces them as left (`node_lost`) before accepting sockets. Node ids must be unique per live
/// process (the default is random). Failure is logged, not fatal: the node still serves.
pub async fn reap_previous_incarnation(bus: &dyn Bus, node_id: &str) {
    match reap_participants(bus, node_id, "node_lost").await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            node = %node_id,
            participants = n,
            "reaped the participants of this node id's previous process"
        ),
        Err(e) => tracing::warn!(error = %e, "could not reap a previous process's participants"),
    }
}

/// Leaves in flight at once while reaping a node: a node of 5000 participants is reaped in about a
/// second, not one round trip after the other (the detection-time budget is a few seconds).
const REAP_CONCURRENCY: usize = 16;

/// Announces every participant registered under `node_id` as left (`reason`); returns how many.
async fn reap_participants(bus: &dyn Bus, node_id: &str, reason: &str) -> Result<usize, BusError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let participants = bus.node_participants(node_id).await?;
    let leaves: Vec<_> = participants
        .iter()
        .map(|(session, participant)| leave(bus, node_id, session, participant, reason))
        .collect();
    stream::iter(leaves)
        .buffer_unordered(REAP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(participants.len())
}

async fn leave(
    bus: &dyn Bus,
    node_id: &str,
    session_id: &str,
    participant_id: &str,
    reason: &str,
) -> Result<Option<u64>, BusError> {
    let left = participant_left_frame(session_id, participant_id, reason);
    bus.session_leave(session_id, participant_id, node_id, &left)
        .await
}

async fn reap_dead(bus: &dyn Bus, node_id: &str, ttl: Duration) -> Result<(), BusError> {
    for dead in bus.dead_nodes(ttl).await? {
        if dead == node_id {
            // Our own beat is late (Redis was unreachable): never reap ourselves.
            continue;
        }
        let reaped = reap_participants(bus, &dead, "node_lost").await?;
        tracing::warn!(node = %dead, participants = reaped, "gateway node lost; reaped its participants");
        bus.forget_node(&dead).await?;
    }
    Ok(())
}
