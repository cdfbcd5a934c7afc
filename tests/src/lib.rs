//! cross-process tests live in tests/
