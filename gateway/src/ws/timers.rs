//! Small timer helpers of the socket loop: jittered intervals, optional ticks and deadlines.
//!
//! Invariant: a socket that has no use for a timer arms none (an optional tick that is `None`, or a
//! deadline that is `None`, never wakes the loop).

use std::time::{Duration, Instant};

/// The shortest heartbeat period honoured.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// An interval whose first tick comes after a random part of `period` (then every `period`).
pub fn jittered_interval(period: Duration) -> tokio::time::Interval {
    let offset = period.mul_f64(rand_fraction());
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, period.max(MIN_PERIOD));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// A fraction in [0, 1) from the random bits of a fresh UUID (no extra dependency).
fn rand_fraction() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// The next tick of an optional interval (never, without one).
pub async fn tick_of(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline` (never, without one). The timer is boxed: the socket loop selects over
/// two of these, and inline each would cost every socket's future ~130 bytes, deadline or not.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => Box::pin(tokio::time::sleep_until(at.into())).await,
        None => std::future::pending().await,
    }
}
