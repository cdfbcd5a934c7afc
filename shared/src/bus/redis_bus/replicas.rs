//! When a write waits for replicas (`WAIT`), and the per-slot backoff after a shortfall.
//!
//! Invariant: a write to a slot whose last `WAIT` found fewer replicas than asked does not wait again for
//! `C2S_REDIS_WAIT_BACKOFF_MS`: right after a failover the promoted master has no replica until the old
//! one is back, and every write would otherwise pay the whole `C2S_REDIS_WAIT_TIMEOUT_MS` (there is no
//! replica to lose the write to meanwhile). After the backoff the next write waits again, so a returning
//! replica is noticed.
//!
//! [`RedisBus::write_and_wait`] and [`RedisBus::wait_after`] are how every concern's writes wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::slots::key_slot;
use super::RedisBus;
use crate::bus::BusError;

pub(super) struct Replicas {
    wanted: u32,
    pub timeout: Duration,
    backoff: Duration,
    /// Slot -> until when its writes skip `WAIT`.
    degraded: Mutex<HashMap<u16, Instant>>,
    /// How many waits came back short (logged every 1000th).
    shortfalls: AtomicU64,
}

impl Replicas {
    pub fn new(wanted: u32, timeout: Duration, backoff: Duration) -> Replicas {
        Replicas {
            wanted,
            timeout,
            backoff,
            degraded: Mutex::default(),
            shortfalls: AtomicU64::new(0),
        }
    }

    /// How many replicas a write to `key` waits for now (0: none).
    pub fn wanted_for(&self, key: &str) -> u32 {
        if self.wanted == 0 {
            return 0;
        }
        let slot = key_slot(key.as_bytes());
        let mut degraded = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        match degraded.get(&slot) {
            Some(until) if Instant::now() < *until => 0,
            Some(_) => {
                degraded.remove(&slot);
                self.wanted
            }
            None => self.wanted,
        }
    }

    /// Records what a `WAIT` after a write to `key` returned.
    pub fn record(&self, key: &str, acked: i64, wanted: u32) {
        if acked >= i64::from(wanted) {
            return;
        }
        let slot = key_slot(key.as_bytes());
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, Instant::now() + self.backoff);
        let n = self.shortfalls.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(
                acked,
                wanted,
                slot,
                shortfalls = n + 1,
                backoff_ms = self.backoff.as_millis() as u64,
                "a write reached fewer replicas than C2S_REDIS_WAIT_REPLICAS; its slot skips WAIT for a while"
            );
        }
    }
}

impl RedisBus {
    /// Runs a write to `key`'s slot, then (when configured, see the module doc) `WAIT`s for replicas in
    /// the same round trip, on the same node. A shortfall does not fail the write: its master has it (a
    /// failover meanwhile is detected by the checks of `jobs/redis.rs` and `events/redis.rs`).
    pub(in crate::bus) async fn write_and_wait<T: redis::FromRedisValue>(
        &self,
        write: &redis::Cmd,
        key: &str,
    ) -> Result<(T, i64), BusError> {
        let mut conn = self.conn.clone();
        let wanted = self.replicas.wanted_for(key);
        if wanted == 0 {
            let value: T = write.query_async(&mut conn).await?;
            return Ok((value, 0));
        }
        let mut pipe = redis::pipe();
        // The pipeline owns its commands: a copy of the write (its frames too) only when it WAITs.
        pipe.add_command(write.clone())
            .cmd("WAIT")
            .arg(wanted)
            .arg(self.replicas.timeout.as_millis() as u64);
        let (value, acked): (T, i64) = pipe.query_async(&mut conn).await?;
        self.replicas.record(key, acked, wanted);
        Ok((value, acked))
    }

    /// After a write to `key`'s slot made by one script call: waits for the configured replicas there.
    pub(in crate::bus) async fn wait_after(&self, key: &str) -> Result<(), BusError> {
        let wanted = self.replicas.wanted_for(key);
        if wanted == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let acked = conn.wait_on(key, wanted, self.replicas.timeout).await?;
        self.replicas.record(key, acked, wanted);
        Ok(())
    }

    /// [`RedisBus::write_and_wait`] of an `EVALSHA` of `script`: loads the script once and runs the
    /// write again if Redis does not know it yet (a script call that must also `WAIT` in the same round
    /// trip cannot go through `Script::invoke_async`).
    pub(in crate::bus) async fn eval_and_wait<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        evalsha: redis::Cmd,
        key: &str,
    ) -> Result<(T, i64), BusError> {
        // By reference: a chunk's EVALSHA carries its frames, which are not copied for the rare retry.
        match self.write_and_wait::<T>(&evalsha, key).await {
            Err(BusError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut conn = self.conn.clone();
                script.prepare_invoke().load_async(&mut conn).await?;
                self.write_and_wait::<T>(&evalsha, key).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortfall_pauses_waits_on_its_slot_only() {
        let r = Replicas::new(1, Duration::from_millis(500), Duration::from_millis(50));
        assert_eq!(r.wanted_for("c2s:{e:a}"), 1);
        r.record("c2s:{e:a}:events", 0, 1);
        assert_eq!(r.wanted_for("c2s:{e:a}"), 0, "same slot (same tag)");
        assert_eq!(r.wanted_for("c2s:{e:b}"), 1, "another slot");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.wanted_for("c2s:{e:a}"), 1, "after the backoff");
        assert_eq!(
            Replicas::new(0, Duration::ZERO, Duration::ZERO).wanted_for("x"),
            0
        );
    }
}
