//! The gateway's `/schema` compiled: every frame a cluster-made [`super::Client`] receives is validated.

use std::net::SocketAddr;

use serde_json::Value;

use super::*;

/// The gateway's `/schema` document, compiled.
pub struct SchemaValidator {
    pub document: Value,
    server: jsonschema::Validator,
    client: jsonschema::Validator,
}

impl SchemaValidator {
    pub fn from_document(document: Value) -> SchemaValidator {
        assert!(
            document.get("title").is_some_and(Value::is_string),
            "/schema must have a string `title`: {}",
            short(&document)
        );
        let compile = |part: &str| {
            let schema = document
                .get(part)
                .unwrap_or_else(|| panic!("/schema has no `{part}` member: {}", short(&document)));
            assert!(
                schema.is_object(),
                "/schema `{part}` must be a JSON Schema object"
            );
            jsonschema::validator_for(schema)
                .unwrap_or_else(|e| panic!("/schema `{part}` does not compile as JSON Schema: {e}"))
        };
        let server = compile("server");
        let client = compile("client");
        SchemaValidator {
            document,
            server,
            client,
        }
    }

    /// Fetches `GET /schema` from a gateway and compiles it.
    pub async fn fetch(addr: SocketAddr) -> SchemaValidator {
        let (status, body) = http_get(addr, "/schema").await;
        assert_eq!(status, 200, "GET /schema answered {status}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET /schema is not JSON ({e}): {}", tail_chars(&body, 500))
        });
        SchemaValidator::from_document(doc)
    }

    fn errors(v: &jsonschema::Validator, frame: &Value) -> Vec<String> {
        v.iter_errors(frame)
            .take(8)
            .map(|e| format!("{e} (at `{}`)", e.instance_path))
            .collect()
    }

    /// Panics unless `frame` is a valid server frame per `/schema`.
    pub fn assert_valid(&self, frame: &Value) {
        let errors = Self::errors(&self.server, frame);
        assert!(
            errors.is_empty(),
            "server frame does not match the `server` schema of /schema:\n  {}\nframe: {}",
            errors.join("\n  "),
            short(frame)
        );
    }

    /// Panics unless `frame` is a valid client frame per `/schema`.
    pub fn assert_valid_client(&self, frame: &Value) {
        let errors = Self::errors(&self.client, frame);
        assert!(
            errors.is_empty(),
            "client frame does not match the `client` schema of /schema:\n  {}\nframe: {}",
            errors.join("\n  "),
            short(frame)
        );
    }

    pub fn is_valid(&self, frame: &Value) -> bool {
        self.server.is_valid(frame)
    }

    pub fn is_valid_client(&self, frame: &Value) -> bool {
        self.client.is_valid(frame)
    }
}
