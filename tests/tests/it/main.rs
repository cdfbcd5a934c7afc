//! The cross-process tests, linked as one binary (`cargo test -p c2s-tests --test it [module::test]`).
//!
//! One module per suite; the shared harness is [`harness`]. All suites run in one process, concurrently
//! (cargo's default test threads): every test has its own Redis key prefix and its own PostgreSQL database,
//! and the suites that measure timing or load, or break shared infrastructure, hold the locks of
//! `harness/lock.rs` so that none of them runs beside another.

#[macro_use]
mod harness;

mod auth;
mod backpressure;
mod bench_smoke;
mod cancel;
mod collaboration;
mod dashboard;
mod data_endpoint;
mod deploy_compose;
mod deploy_k8s;
mod detection;
mod embedded;
mod errors;
mod failover;
mod fairness;
mod harness_checks;
mod isolation;
mod limits;
mod local_cluster;
mod log_integrity;
mod metrics;
mod monitoring;
mod overload;
mod query_flow;
mod redis_cluster;
mod redis_tls;
mod results;
mod sql_safety;
mod tracing;
mod types;
