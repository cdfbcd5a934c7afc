//! Rate limits on client frames: one token bucket per socket and one per user over all its sockets.
//!
//! Invariant: the socket's bucket is checked first, so a socket over its own rate does not use its
//! user's tokens up.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use c2s_shared::metrics as m;

/// Why a client frame is refused by the socket's bucket or its user's (None: it passes).
pub fn over_rate(
    socket: &DefaultDirectRateLimiter,
    user: &DefaultDirectRateLimiter,
    limits: &crate::config::WsArgs,
) -> Option<String> {
    if socket.check().is_err() {
        metrics::counter!(m::REFUSALS, "reason" => "connection_rate").increment(1);
        return Some(format!(
            "more than {} frames/s (burst {}) on this connection: frame dropped; slow down",
            limits.rate_limit_per_sec, limits.rate_limit_burst
        ));
    }
    if user.check().is_err() {
        metrics::counter!(m::REFUSALS, "reason" => "user_rate").increment(1);
        return Some(format!(
            "more than {} frames/s (burst {}) over all your connections: frame dropped; slow down",
            limits.user_rate_limit_per_sec, limits.user_rate_limit_burst
        ));
    }
    None
}

/// The per-connection token bucket (rate and burst of at least 1).
pub fn rate_limiter(per_sec: u32, burst: u32) -> DefaultDirectRateLimiter {
    let per_sec = std::num::NonZeroU32::new(per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
}
