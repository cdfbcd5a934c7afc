//! Which gateway nodes still hold their link to Redis: each node keeps a subscription that lives as
//! long as its process ([`NodePresence::node_listen`]); when the process dies its connection closes and
//! the link count drops to 0 at once, long before its heartbeat goes stale. So a killed node is known
//! dead within `C2S_PRESENCE_LINK_GRACE_MS` (the reaper then reaps it), and a rejoin can take over its
//! ghost on a node whose link is gone at the moment it joins.
//!
//! Invariants (what keeps a live node from being judged dead):
//! - Nothing is judged while this node's own link is missing or a look failed, nor until this node's
//!   own link has been up for `stable_after` (the presence TTL) since: after Redis itself comes back,
//!   every node has that long to subscribe again before anyone counts its links.
//! - A node is judged by its link only once it was seen linked since this node's own link came up:
//!   one that has not subscribed again after a Redis failover (a slow resubscription on a loaded box
//!   took longer than `stable_after`) is left to the heartbeat TTL, as is one that died meanwhile.
//! - The reaper takes a node only after its links were 0 at every look for `grace`; a rejoin takes over
//!   only the joiner's own entries on a node whose links are 0 in a look begun after the rejoin asked
//!   (rejoins arriving together share one look: a storm costs a look per round trip, not per rejoin).
//! - A bus that does not watch links (one process) reports nothing, and nothing is ever judged.
//!
//! The heartbeat TTL stays the backstop for what links cannot show (a node cut off from Redis keeps its
//! TCP connection open until the kernel gives up).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use c2s_shared::bus::Bus;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Links {
    bus: Arc<dyn Bus>,
    node_id: String,
    /// 0 turns the watch off (the TTL alone decides).
    grace: Duration,
    stable_after: Duration,
    state: Mutex<Looks>,
}

#[derive(Default)]
struct Looks {
    /// When the last look began (successful or not).
    began: Option<Instant>,
    /// Since when this node's own link has been seen up at every look.
    own_up_since: Option<Instant>,
    /// Other nodes seen with no link (after being seen linked), since the first look that saw it.
    linkless_since: HashMap<String, Instant>,
    /// Nodes seen linked since this node's own link came up.
    seen_linked: HashSet<String>,
    warned: bool,
}

impl Links {
    pub fn new(
        bus: Arc<dyn Bus>,
        node_id: String,
        grace: Duration,
        stable_after: Duration,
    ) -> Self {
        Links {
            bus,
            node_id,
            grace,
            stable_after,
            state: Mutex::new(Looks::default()),
        }
    }

    fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }

    /// Takes a look now (the reaper's round); returns the nodes linkless for at least `grace`.
    pub async fn dead(&self) -> Vec<String> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut looks = self.state.lock().await;
        self.look(&mut looks).await;
        let now = Instant::now();
        if !looks.judging(now, self.stable_after) {
            return Vec::new();
        }
        looks
            .linkless_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.grace)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Nodes with no link now (for a rejoin taking over its ghosts): from a look begun after this call
    /// (a node killed just before the rejoin is seen), shared with the calls waiting beside it.
    pub async fn gone_now(&self) -> Vec<String> {
        if !self.enabled() {
            return Vec::new();
        }
        let asked = Instant::now();
        let mut looks = self.state.lock().await;
        if looks.began.is_none_or(|began| began < asked) {
            self.look(&mut looks).await;
        }
        if !looks.judging(Instant::now(), self.stable_after) {
            return Vec::new();
        }
        looks.linkless_since.keys().cloned().collect()
    }

    async fn look(&self, looks: &mut Looks) {
        let now = Instant::now();
        looks.began = Some(now);
        let links = match self.bus.node_links().await {
            Ok(Some(links)) => links,
            Ok(None) => return looks.forget(),
            Err(e) => {
                if !std::mem::replace(&mut looks.warned, true) {
                    tracing::warn!(error = %e, "cannot count the nodes' links to Redis; the presence TTL alone detects dead nodes");
                }
                return looks.forget();
            }
        };
        looks.record(&self.node_id, links, now);
    }
}

impl Looks {
    /// Judging is off until the next good look (own link missing, or the look failed).
    fn forget(&mut self) {
        self.own_up_since = None;
        self.linkless_since.clear();
        self.seen_linked.clear();
    }

    /// A good look: every node of the node set with its links now.
    fn record(&mut self, own: &str, links: Vec<(String, u64)>, now: Instant) {
        let own_up = links.iter().any(|(n, c)| n == own && *c > 0);
        if !own_up {
            return self.forget();
        }
        self.own_up_since.get_or_insert(now);
        // Nodes gone from the node set are forgotten.
        self.seen_linked
            .retain(|seen| links.iter().any(|(n, _)| n == seen));
        let mut linkless = HashMap::new();
        for (node, count) in links {
            if count > 0 {
                self.seen_linked.insert(node);
            } else if node != own && self.seen_linked.contains(&node) {
                let since = self.linkless_since.get(&node).copied().unwrap_or(now);
                linkless.insert(node, since);
            }
        }
        self.linkless_since = linkless;
    }

    fn judging(&self, now: Instant, stable_after: Duration) -> bool {
        self.own_up_since
            .is_some_and(|since| now.duration_since(since) >= stable_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(of: &[(&str, u64)]) -> Vec<(String, u64)> {
        of.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn a_node_is_judged_by_its_link_only_once_seen_linked_since_ours_came_up() {
        let t = Instant::now();
        let mut looks = Looks::default();
        looks.record("a", look(&[("a", 1), ("b", 1)]), t);
        looks.record("a", look(&[("a", 1), ("b", 0)]), t + Duration::from_secs(1));
        assert_eq!(looks.linkless_since.keys().collect::<Vec<_>>(), ["b"]);
        // A Redis failover: our own link gone (or the look failed), everything forgotten.
        looks.record("a", look(&[("a", 0), ("b", 0)]), t + Duration::from_secs(2));
        assert!(looks.own_up_since.is_none() && looks.linkless_since.is_empty());
        // Ours is back first: b, not yet subscribed again, is not linkless but unknown.
        looks.record("a", look(&[("a", 1), ("b", 0)]), t + Duration::from_secs(3));
        looks.record("a", look(&[("a", 1), ("b", 0)]), t + Duration::from_secs(9));
        assert!(looks.judging(t + Duration::from_secs(9), Duration::from_secs(2)));
        assert!(
            looks.linkless_since.is_empty(),
            "b was not seen linked since"
        );
        // b subscribes again, then dies: judged from the first look that sees it gone.
        looks.record(
            "a",
            look(&[("a", 1), ("b", 1)]),
            t + Duration::from_secs(10),
        );
        looks.record(
            "a",
            look(&[("a", 1), ("b", 0)]),
            t + Duration::from_secs(11),
        );
        looks.record(
            "a",
            look(&[("a", 1), ("b", 0)]),
            t + Duration::from_secs(12),
        );
        assert_eq!(
            looks.linkless_since.get("b"),
            Some(&(t + Duration::from_secs(11)))
        );
        // A node that leaves the node set is forgotten.
        looks.record("a", look(&[("a", 1)]), t + Duration::from_secs(13));
        assert!(looks.seen_linked.iter().all(|n| n == "a"));
    }
}
