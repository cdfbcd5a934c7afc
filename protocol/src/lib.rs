//! The wire protocol of PROTOCOL.md as types only (serde and schemars, no I/O): every frame is
//! `{type, payload, id?, seq?, traceparent?}`.
//!
//! - [`client`]: what a client sends, and the decoder that refuses bad input with an error, never a panic;
//! - [`server`]: what the server sends, encoded once per frame;
//! - [`codes`]: the one table of error codes; [`close`]: the one table of close codes;
//! - [`tables`]: the lists of message types; [`schema`]: the `/schema` document built from all of them.
//!
//! The gateway, the worker, the tests and loadgen use these types; the TypeScript SDK generates its own
//! from `/schema`.

pub mod client;
pub mod close;
pub mod codes;
pub mod schema;
pub mod server;
mod server_decode;
pub mod tables;

pub use client::*;
pub use close::{reconnect_after, Close};
pub use schema::schema_document;
pub use server::*;
pub use tables::*;
