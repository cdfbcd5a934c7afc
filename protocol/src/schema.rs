//! The document served at `GET /schema`: the JSON Schema of every frame, generated from the types,
//! plus the tables (close codes, type lists) that SDKs generate their constants from.

use serde_json::{Map, Value};

use crate::client::ClientFrame;
use crate::close::close_code_table;
use crate::server::ServerFrame;
use crate::tables::type_tables;

/// The whole document: `{title, client, server, tables: {closeCodes, clientMessageTypes, …}}`.
pub fn schema_document() -> Value {
    let mut tables = Map::new();
    tables.insert(
        "closeCodes".into(),
        serde_json::to_value(close_code_table()).unwrap_or_default(),
    );
    for (name, list) in type_tables() {
        tables.insert(name.into(), Value::from(list.to_vec()));
    }
    serde_json::json!({
        "title": "Chat2SQL Realtime wire protocol",
        "client": schemars::schema_for!(ClientFrame),
        "server": schemars::schema_for!(ServerFrame),
        "tables": tables,
    })
}
