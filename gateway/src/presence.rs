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

async fn beat_and_reap(bus: &dyn Bus, node_id: &str, ttl: Duration) -> Result<(), BusError> {
    let started = std::time::Instant::now();
    bus.node_heartbeat(node_id).await?;
    metrics::histogram!(c2s_shared::metrics::REDIS_ROUNDTRIP)
        .record(started.elapsed().as_secs_f64());
    for dead in bus.dead_nodes(ttl).await? {
        if dead == node_id {
            continue;
        }
        let participants = bus.node_participants(&dead).await?;
        tracing::warn!(node = %dead, participants = participants.len(), "gateway node lost; reaping its participants");
        for (session_id, participant_id) in participants {
            let left = participant_left_frame(&session_id, &participant_id, "node_lost");
            bus.session_leave(&session_id, &participant_id, &dead, &left)
                .await?;
        }
        bus.forget_node(&dead).await?;
    }
    Ok(())
}
