//! Limits over all of one user's sockets, not each socket alone:
//! - the connection cap (`C2S_MAX_CONNECTIONS_PER_USER`), counted on the bus over every node: each open
//!   socket holds a lease (`C2S_CONNECTION_LEASE_MS`), renewed on its heartbeat ticks and given back
//!   when it closes; a killed node's leases simply run out, so a crash cannot lock its users out;
//! - the frame rate (`C2S_USER_RATE_LIMIT_PER_SEC` / `_BURST`): one token bucket per user on this node,
//!   shared by that user's sockets here (a socket's own bucket applies too), so opening more sockets
//!   does not multiply a user's rate. Buckets are per node: a user whose sockets land on N nodes may
//!   send up to N times it (the connection cap bounds how far that goes).
//!
//! Invariants: a [`UserLease`] is given back exactly once, when dropped; the bucket registry holds only
//! weak references, so a user's bucket lives exactly as long as one of their sockets on this node.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use c2s_shared::bus::Bus;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One socket's share of its user's connection cap.
pub struct UserLease {
    bus: Arc<dyn Bus>,
    user: String,
    socket: String,
    max: usize,
    lease: Duration,
    renewed: Instant,
}

/// Why a socket was refused: its user has `max` sockets open already.
#[derive(Debug)]
pub struct OverCap {
    pub max: usize,
}

impl UserLease {
    /// Takes a slot of the user's cap for a new socket on `node_id`; None when the cap is off (0).
    /// A bus failure lets the socket in (it can do nothing without the bus anyway) and is logged.
    pub async fn open(
        bus: Arc<dyn Bus>,
        user: &str,
        node_id: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Option<UserLease>, OverCap> {
        if max == 0 {
            return Ok(None);
        }
        let socket = format!("{node_id}\t{}", uuid::Uuid::new_v4().simple());
        match bus.open_connection(user, &socket, max, lease).await {
            Ok(false) => return Err(OverCap { max }),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not count the socket against its user's cap")
            }
        }
        Ok(Some(UserLease {
            bus,
            user: user.to_owned(),
            socket,
            max,
            lease,
            renewed: Instant::now(),
        }))
    }

    /// Renews the lease once a third of it has passed (called on heartbeat ticks).
    pub async fn renew_if_due(&mut self) {
        if self.renewed.elapsed() < self.lease / 3 {
            return;
        }
        self.renewed = Instant::now();
        if let Err(e) = self
            .bus
            .open_connection(&self.user, &self.socket, self.max, self.lease)
            .await
        {
            tracing::debug!(error = %e, "renewing a socket's lease failed");
        }
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        let (bus, user, socket) = (self.bus.clone(), self.user.clone(), self.socket.clone());
        actix_web::rt::spawn(async move {
            if let Err(e) = bus.close_connection(&user, &socket).await {
                tracing::debug!(error = %e, "giving a socket's lease back failed; it expires");
            }
        });
    }
}

/// The per-user token buckets of this node.
pub struct UserRates {
    quota: Quota,
    buckets: Mutex<HashMap<String, Weak<DefaultDirectRateLimiter>>>,
}

impl UserRates {
    pub fn new(per_sec: u32, burst: u32) -> UserRates {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        UserRates {
            quota: Quota::per_second(per_sec).allow_burst(burst),
            buckets: Mutex::default(),
        }
    }

    /// The bucket `user`'s sockets on this node share (made on first use).
    pub fn bucket(&self, user: &str) -> Arc<DefaultDirectRateLimiter> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get(user).and_then(Weak::upgrade) {
            return bucket;
        }
        // Forget the users that have no socket left here.
        buckets.retain(|_, b| b.strong_count() > 0);
        let bucket = Arc::new(RateLimiter::direct(self.quota));
        buckets.insert(user.to_owned(), Arc::downgrade(&bucket));
        bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_one_user_share_a_bucket() {
        let rates = UserRates::new(1, 3);
        let (a, b) = (rates.bucket("ann"), rates.bucket("ann"));
        let other = rates.bucket("bob");
        assert!(a.check().is_ok() && b.check().is_ok() && a.check().is_ok());
        assert!(b.check().is_err(), "the burst is shared by both sockets");
        assert!(
            other.check().is_ok(),
            "another user has a bucket of their own"
        );
        drop((a, b));
        assert!(
            rates.bucket("ann").check().is_ok(),
            "a fresh bucket once all sockets closed"
        );
    }
}
