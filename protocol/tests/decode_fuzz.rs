//! The client frame decoder against hostile input: it must answer every input with a frame or an
//! error, never panic. A checked-in corpus of nasty cases (tests/corpus/) plus property tests.

use std::path::Path;

use c2s_protocol::codes::ErrorCode;
use c2s_protocol::{decode_client_frame, CLIENT_MESSAGE_TYPES};
use proptest::prelude::*;

/// Decodes as the gateway would: frames arrive as text, so bytes are read lossily first.
fn decode_bytes(bytes: &[u8]) -> Result<(), ErrorCode> {
    decode_client_frame(&String::from_utf8_lossy(bytes))
        .map(|_| ())
        .map_err(|e| e.code)
}

#[test]
fn corpus_never_panics_and_only_the_valid_one_decodes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let result = decode_bytes(&bytes);
        match name.as_str() {
            // Well-formed frames: what they ask for is refused later (limits, the worker's param check).
            "valid_execute.json" | "duplicate_key.json" | "huge_string.json"
            | "object_param.json" => {}
            _ => assert!(result.is_err(), "{name} should be refused, got {result:?}"),
        }
        seen += 1;
    }
    assert!(seen >= 10, "corpus has only {seen} files");
}

#[test]
fn refusals_have_the_right_codes() {
    let code = |s: &str| decode_client_frame(s).unwrap_err().code;
    assert_eq!(code("{"), ErrorCode::BadRequest);
    assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::UnknownType);
    assert_eq!(
        code(r#"{"type":"resume","payload":{}}"#),
        ErrorCode::BadRequest
    );
    // Nesting deeper than serde_json's recursion limit is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert_eq!(code(&deep), ErrorCode::BadRequest);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_bytes(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = decode_client_frame(&text);
    }

    /// Frames that look right (a known type, JSON-ish payloads) stress the second decoding step.
    #[test]
    fn plausible_frames_never_panic(
        kind in proptest::sample::select(CLIENT_MESSAGE_TYPES),
        payload in prop_oneof![
            Just("null".to_owned()),
            Just("{}".to_owned()),
            Just("[]".to_owned()),
            "\\{\"[a-zA-Z]{1,12}\":(\"[^\"\\\\]{0,20}\"|-?[0-9]{1,25}|true|null|\\[\\]|\\{\\})\\}",
        ],
        id in proptest::option::of("[a-z0-9-]{0,80}"),
    ) {
        let id = id.map(|i| format!(r#","id":"{i}""#)).unwrap_or_default();
        let frame = format!(r#"{{"type":"{kind}","payload":{payload}{id}}}"#);
        let _ = decode_client_frame(&frame);
    }
}
