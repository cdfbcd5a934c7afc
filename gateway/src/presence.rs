//! Presence of gateway nodes: each node marks itself alive every `presence_heartbeat` (scored by the
//! Redis clock); every node looks for others silent for longer than `presence_ttl` every
//! `presence_reap`, and reaps their participants, so the others get `participant_left` (reason
//! `node_lost`) when a whole node dies. The bus's leave is exactly-once, so several nodes reaping the
//! same dead one at once still announce each departure once.
//!
//! A node also holds a link to Redis for its whole life (see `links.rs`), taken before its first beat:
//! a killed node's link is gone at once, so it is reaped after `C2S_PRESENCE_LINK_GRACE_MS`, not its
//! TTL; the TTL stays the backstop.
//!
//! The beat runs on the bus runtime, not on the actix threads serving sockets, so a node busy with
//! fan-out still beats; its TTL allows several missed beats. A node that stops cleanly announces it
//! ([`announce_shutdown`]): its remaining participants leave and it leaves the node set at once.

use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::{Bus, BusError};
use tokio::task::JoinHandle;

use crate::links::Links;
use crate::ws::participant_left_frame;

/// The presence timings (`C2S_PRESENCE_*`).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub heartbeat: Duration,
    pub ttl: Duration,
    pub reap: Duration,
}

/// Starts the beat and the reaper (two tasks: a slow reaping round never delays a beat).
pub fn spawn(
    bus: Arc<dyn Bus>,
    node_id: String,
    t: Timings,
    links: Arc<Links>,
) -> Vec<JoinHandle<()>> {
    let beat = {
        let (bus, node_id) = (bus.clone(), node_id.clone());
        tokio::spawn(async move {
            listen(bus.as_ref(), &node_id).await;
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
            if let Err(e) = reap_dead(bus.as_ref(), &node_id, t.ttl, &links).await {
                tracing::warn!(error = %e, "presence reaping round failed");
            }
        }
    });
    vec![beat, reaper]
}

/// Takes this node's link (retrying until Redis takes it): until then the node does not beat, so no
/// peer sees it alive without a link and reaps it for that.
async fn listen(bus: &dyn Bus, node_id: &str) {
    let mut failures = 0u32;
    while let Err(e) = bus.node_listen(node_id).await {
        failures += 1;
        if failures == 1 {
            tracing::warn!(error = %e, "cannot take this node's link to Redis yet; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// Sessions reaped at once while reaping a node, and participants per leave step: a node of 5000
/// participants in 50 sessions takes 50 steps, 16 in flight, not 5000 (the detection-time budget is
/// a few seconds, and a step's script runs for at most `REAP_BATCH` leaves).
const REAP_CONCURRENCY: usize = 16;
const REAP_BATCH: usize = 100;

/// Announces every participant registered under `node_id` as left (`reason`); returns how many
/// entries the node had (announced or already gone).
async fn reap_participants(bus: &dyn Bus, node_id: &str, reason: &str) -> Result<usize, BusError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let participants = bus.node_participants(node_id).await?;
    let mut by_session: std::collections::HashMap<&str, Vec<(String, String)>> =
        std::collections::HashMap::new();
    for (session, participant) in &participants {
        let left = participant_left_frame(session, participant, reason);
        by_session
            .entry(session.as_str())
            .or_default()
            .push((participant.clone(), left));
    }
    let steps: Vec<_> = by_session
        .iter()
        .flat_map(|(session, leaves)| leaves.chunks(REAP_BATCH).map(move |c| (*session, c)))
        .map(|(session, leaves)| bus.session_leave_many(session, node_id, leaves))
        .collect();
    stream::iter(steps)
        .buffer_unordered(REAP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(participants.len())
}

/// One reaper round: the nodes silent for `ttl`, and those whose link has been gone for the grace.
async fn reap_dead(
    bus: &dyn Bus,
    node_id: &str,
    ttl: Duration,
    links: &Links,
) -> Result<(), BusError> {
    let mut dead = bus.dead_nodes(ttl).await?;
    for linkless in links.dead().await {
        if !dead.contains(&linkless) {
            dead.push(linkless);
        }
    }
    for dead in dead {
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
