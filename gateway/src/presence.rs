//! Presence of gateway nodes: each node marks itself alive every `presence_heartbeat`; any node that sees
//! another silent for longer than `presence_ttl` reaps its participants, so the others get
//! `participant_left` (reason `node_lost`) when a whole node dies. The bus's leave is exactly-once, so
//! several nodes reaping the same dead one at once still announce each departure once.

use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::{Bus, BusError};

use crate::ws::participant_left_frame;

pub fn spawn(bus: Arc<dyn Bus>, node_id: String, heartbeat: Duration, ttl: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tick.tick().await;
            if let Err(e) = beat_and_reap(bus.as_ref(), &node_id, ttl).await {
                tracing::warn!(error = %e, "presence round failed");
            }
        }
    });
}

/// A node restarted under the same id (a fixed `--node-id`, a StatefulSet pod) finds its previous
/// incarnation's participants still registered, and its own heartbeat would keep them alive forever:
/// announces them as left (`node_lost`) before accepting sockets. Node ids must be unique per live
/// process (the default is random). Failure is logged, not fatal: the node still serves.
pub async fn reap_previous_incarnation(bus: &dyn Bus, node_id: &str) {
    match reap_participants(bus, node_id).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            node = %node_id,
            participants = n,
            "reaped the participants of this node id's previous process"
        ),
        Err(e) => tracing::warn!(error = %e, "could not reap a previous process's participants"),
    }
}

/// Announces every participant registered under `node_id` as left (`node_lost`); returns how many.
async fn reap_participants(bus: &dyn Bus, node_id: &str) -> Result<usize, BusError> {
    let participants = bus.node_participants(node_id).await?;
    for (session_id, participant_id) in &participants {
        let left = participant_left_frame(session_id, participant_id, "node_lost");
        bus.session_leave(session_id, participant_id, node_id, &left)
            .await?;
    }
    Ok(participants.len())
}

async fn beat_and_reap(bus: &dyn Bus, node_id: &str, ttl: Duration) -> Result<(), BusError> {
    let started = std::time::Instant::now();
    bus.node_heartbeat(node_id).await?;
    metrics::histogram!(c2s_shared::metrics::REDIS_ROUNDTRIP)
        .record(started.elapsed().as_secs_f64());
    for dead in bus.dead_nodes(ttl).await? {
        if dead == node_id {
            continue;
        }
        let reaped = reap_participants(bus, &dead).await?;
        tracing::warn!(node = %dead, participants = reaped, "gateway node lost; reaped its participants");
        bus.forget_node(&dead).await?;
    }
    Ok(())
}
