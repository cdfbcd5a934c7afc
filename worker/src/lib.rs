//! The SQL worker: takes query jobs from the bus, runs them read-only on PostgreSQL (or the embedded SQLite
//! demo database), and streams the events of each execution back through the bus, numbered by `seq`.
//!
//! It is a library as well as a binary so that the gateway's embedded mode runs the very same code in-process.

pub mod config;
pub mod engine;
pub mod events;
pub mod failure;
mod pg_text;
mod publisher;
pub mod role_check;
pub mod runner;
mod sql_json;
mod stream_span;
pub mod window;

pub use config::{QueryLimits, WorkerArgs};
pub use engine::{postgres::PostgresEngine, sqlite::SqliteEngine, SqlEngine};
pub use runner::Worker;
