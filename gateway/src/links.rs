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
//! - The reaper takes a node only after its links were 0 at every look for `grace`; a rejoin takes over
//!   only the joiner's own entries on a node whose links are 0 in a look begun after the rejoin asked
//!   (rejoins arriving together share one look: a storm costs a look per round trip, not per rejoin).
//! - A bus that does not watch links (one process) reports nothing, and nothing is ever judged.
//!
//! The heartbeat TTL stays the backstop for what links cannot show (a node cut off from Redis keeps its
//! TCP connection open until the kernel gives up).

use std::collections::HashMap;
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
    /// Other nodes seen with no link, since the first look that saw it.
    linkless_since: HashMap<String, Instant>,
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
        let own_up = links.iter().any(|(n, c)| *n == self.node_id && *c > 0);
        if !own_up {
            return looks.forget();
        }
        looks.own_up_since.get_or_insert(now);
        let mut linkless = HashMap::new();
        for (node, count) in links {
            if count == 0 && node != self.node_id {
                let since = looks.linkless_since.get(&node).copied().unwrap_or(now);
                linkless.insert(node, since);
            }
        }
        looks.linkless_since = linkless;
    }
}

impl Looks {
    /// Judging is off until the next good look (own link missing, or the look failed).
    fn forget(&mut self) {
        self.own_up_since = None;
        self.linkless_since.clear();
    }

    fn judging(&self, now: Instant, stable_after: Duration) -> bool {
        self.own_up_since
            .is_some_and(|since| now.duration_since(since) >= stable_after)
    }
}
