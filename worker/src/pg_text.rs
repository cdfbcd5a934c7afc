//! PostgreSQL's text output of a value, written straight into a chunk's JSON bytes.
//!
//! The worker asks PostgreSQL for every column in the text format (`FETCH` in the simple protocol), so
//! the text is byte for byte what `expr::text` gives. Each column then maps to JSON by one rule, chosen
//! once per query from the column's type ([`Rule::for_type`]):
//! - JSON-native where that is lossless: integers within ±(2^53-1) as numbers (beyond: strings), `float4`
//!   and `float8` as numbers (`NaN`, `Infinity`, `-Infinity` as those strings), `bool`, `json`/`jsonb`
//!   embedded as they are, arrays of any dimension as nested arrays of their element's rule, named
//!   composites as objects (attribute name → value) and anonymous records (`ROW(…)`) as arrays of their
//!   fields' text.
//! - `timestamptz` as RFC 3339 in UTC, `timestamp` as ISO 8601 without offset (`infinity` stays
//!   `infinity`; years outside 1..=9999 keep PostgreSQL's text); `bytea` as base64.
//! - Everything else as a JSON string holding PostgreSQL's own text output.
//!
//! Invariant: whatever the input, an encoder either appends one complete JSON value to `out` or returns
//! an error and leaves `out` as it was; it never panics on bytes the database sends.

use base64::Engine as _;
use sqlx::postgres::{PgTypeInfo, PgTypeKind};

/// Largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;

/// Type OIDs with a JSON-native rule (pg_type.dat; stable across PostgreSQL versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const INT2VECTOR: u32 = 22;
    pub const OIDVECTOR: u32 = 30;
    pub const JSON: u32 = 114;
    pub const BOX: u32 = 603;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const RECORD: u32 = 2249;
    pub const JSONB: u32 = 3802;
    pub const XID8: u32 = 5069;
}

/// Why a value could not be written as JSON (the caller adds the column, row and type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

fn bad(what: &str, text: &[u8]) -> EncodeError {
    EncodeError(format!(
        "unexpected {what} text from the database: {:.60}",
        String::from_utf8_lossy(text)
    ))
}

/// How one column's text becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Integers: a number within ±(2^53-1), else a string.
    Int,
    /// Floats: a number; `NaN`, `Infinity`, `-Infinity` as strings.
    Float,
    Bool,
    /// `json`/`jsonb`: the value itself.
    Json,
    /// `bytea` (hex output) as base64.
    Bytea,
    /// RFC 3339 in UTC (`…Z`).
    TimestampTz,
    /// ISO 8601 without offset (`T` between date and time).
    Timestamp,
    /// PostgreSQL's text output as a JSON string.
    Text,
    /// Nested JSON arrays of the element's rule (`delimiter` is `;` for `box`, else `,`).
    Array {
        element: Box<Rule>,
        delimiter: u8,
    },
    /// A named composite: an object of its attributes, each key already encoded as a JSON string.
    Composite(Vec<(String, Rule)>),
    /// An anonymous record: an array of its fields' text (null for NULL).
    Record,
}

impl Rule {
    /// The rule for a column of this type (domains map like their base type).
    pub fn for_type(info: &PgTypeInfo) -> Rule {
        // Vectors of the catalogs look like arrays in pg_type but print as `1 2 3`: text.
        if matches!(
            info.oid().map(|o| o.0),
            Some(oid::INT2VECTOR | oid::OIDVECTOR)
        ) {
            return Rule::Text;
        }
        match info.kind() {
            PgTypeKind::Domain(base) => return Rule::for_type(base),
            PgTypeKind::Array(element) => {
                let delimiter = if element.oid().map(|o| o.0) == Some(oid::BOX) {
                    b';'
                } else {
                    b','
                };
                return Rule::Array {
                    element: Box::new(Rule::for_type(element)),
                    delimiter,
                };
            }
            PgTypeKind::Composite(fields) => {
                return Rule::Composite(
                    fields
                        .iter()
                        .map(|(name, ty)| (json_string(name), Rule::for_type(ty)))
                        .collect(),
                )
            }
            _ => {}
        }
        match info.oid().map(|o| o.0) {
            Some(
                oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::XID | oid::CID | oid::XID8,
            ) => Rule::Int,
            Some(oid::FLOAT4 | oid::FLOAT8) => Rule::Float,
            Some(oid::BOOL) => Rule::Bool,
            Some(oid::JSON | oid::JSONB) => Rule::Json,
            Some(oid::BYTEA) => Rule::Bytea,
            Some(oid::TIMESTAMPTZ) => Rule::TimestampTz,
            Some(oid::TIMESTAMP) => Rule::Timestamp,
            Some(oid::RECORD) => Rule::Record,
            _ => Rule::Text,
        }
    }

    /// Appends the JSON of one non-NULL value given as PostgreSQL's text output.
    pub fn encode(&self, text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.encode_unchecked(text, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_unchecked(&self, text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Rule::Int => encode_int(text, out),
            Rule::Float => encode_float(text, out),
            Rule::Bool => {
                let json: &[u8] = match text {
                    b"t" => b"true",
                    b"f" => b"false",
                    _ => return Err(bad("boolean", text)),
                };
                out.extend_from_slice(json);
                Ok(())
            }
            Rule::Json => {
                // PostgreSQL validated it as JSON on input; it is embedded as it is.
                std::str::from_utf8(text).map_err(|_| bad("json", text))?;
                out.extend_from_slice(text);
                Ok(())
            }
            Rule::Bytea => encode_bytea(text, out),
            Rule::TimestampTz => encode_timestamptz(text, out),
            Rule::Timestamp => encode_timestamp(text, out),
            Rule::Text => write_json_str(text, out),
            Rule::Array { element, delimiter } => encode_array(text, element, *delimiter, out),
            Rule::Composite(fields) => encode_composite(text, Some(fields), out),
            Rule::Record => encode_composite(text, None, out),
        }
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    // Serialising a str into a String cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Appends `text` (UTF-8) as a JSON string literal.
pub fn write_json_str(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let s = std::str::from_utf8(text).map_err(|_| bad("non-UTF-8", text))?;
    serde_json::to_writer(&mut *out, s).map_err(|e| EncodeError(e.to_string()))
}

fn encode_int(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("integer", text));
    }
    // Up to 15 digits is always below 2^53; longer ones are checked.
    let safe = digits.len() <= 15
        || std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<i128>().ok())
            .is_some_and(|v| v.abs() <= MAX_SAFE_INTEGER);
    if safe {
        out.extend_from_slice(text);
    } else {
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
    }
    Ok(())
}

fn encode_float(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => {
            out.push(b'"');
            out.extend_from_slice(text);
            out.push(b'"');
            Ok(())
        }
        _ if is_json_number(text) => {
            out.extend_from_slice(text);
            Ok(())
        }
        _ => Err(bad("float", text)),
    }
}

/// RFC 8259's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(s: &[u8]) -> bool {
    let mut i = usize::from(s.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let from = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == s.len()
}

fn encode_bytea(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    // bytea_output = hex (the worker sets it for its transactions): `\x` then two hex digits a byte.
    let hex = text
        .strip_prefix(b"\\x")
        .ok_or_else(|| bad("bytea", text))?;
    if hex.len() % 2 != 0 {
        return Err(bad("bytea", text));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = hex
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("bytea", text))?;
    out.push(b'"');
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    out.extend_from_slice(encoded.as_bytes());
    out.push(b'"');
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS[.f]` (DateStyle ISO) split into its date, time and the rest; None if not that shape.
fn split_iso(text: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    // A 4-digit year only: other years (and BC) keep PostgreSQL's text.
    if text.len() < 19 || text[4] != b'-' || text[7] != b'-' || text[10] != b' ' {
        return None;
    }
    let (date, rest) = text.split_at(10);
    let rest = &rest[1..];
    if rest[2] != b':' || rest[5] != b':' {
        return None;
    }
    let mut end = 8;
    if rest.get(end) == Some(&b'.') {
        end += 1;
        while rest.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    Some((date, &rest[..end], &rest[end..]))
}

fn is_special_time(text: &[u8]) -> bool {
    matches!(text, b"infinity" | b"-infinity")
}

fn encode_timestamp(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match split_iso(text) {
        Some((date, time, b"")) => {
            out.push(b'"');
            out.extend_from_slice(date);
            out.push(b'T');
            out.extend_from_slice(time);
            out.push(b'"');
            Ok(())
        }
        _ => write_json_str(text, out),
    }
}

fn encode_timestamptz(text: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if is_special_time(text) {
        return write_json_str(text, out);
    }
    let Some((date, time, zone)) = split_iso(text) else {
        return write_json_str(text, out);
    };
    let Some(offset) = parse_offset(zone) else {
        return write_json_str(text, out);
    };
    if offset == 0 {
        out.push(b'"');
        out.extend_from_slice(date);
        out.push(b'T');
        out.extend_from_slice(time);
        out.extend_from_slice(b"Z\"");
        return Ok(());
    }
    // Shift to UTC: whole seconds move, the fraction stays as PostgreSQL wrote it.
    let (whole, fraction) = time.split_at(8);
    let parsed = std::str::from_utf8(date)
        .ok()
        .zip(std::str::from_utf8(whole).ok())
        .and_then(|(d, t)| {
            chrono::NaiveDateTime::parse_from_str(&format!("{d} {t}"), "%Y-%m-%d %H:%M:%S").ok()
        })
        .and_then(|local| local.checked_sub_signed(chrono::TimeDelta::seconds(offset)));
    match parsed {
        Some(utc) if (1..=9999).contains(&chrono::Datelike::year(&utc)) => {
            let shifted = utc.format("%Y-%m-%dT%H:%M:%S").to_string();
            out.push(b'"');
            out.extend_from_slice(shifted.as_bytes());
            out.extend_from_slice(fraction);
            out.extend_from_slice(b"Z\"");
            Ok(())
        }
        _ => write_json_str(text, out),
    }
}

/// `+HH[:MM[:SS]]` / `-…` in seconds east of UTC; None for anything else (e.g. a ` BC` suffix).
fn parse_offset(zone: &[u8]) -> Option<i64> {
    let sign = match zone.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut seconds = 0i64;
    let mut parts = zone[1..].split(|&c| c == b':');
    for unit in [3600, 60, 1] {
        match parts.next() {
            Some(p) if p.len() == 2 && p.iter().all(u8::is_ascii_digit) => {
                seconds += i64::from((p[0] - b'0') * 10 + (p[1] - b'0')) * unit;
            }
            Some(_) => return None,
            None => break,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(sign * seconds)
}

/// Reads PostgreSQL's array text output (`array_out`): an optional `[lo:hi]…=` dimension
/// decoration, then `{…}` with elements separated by the delimiter, `NULL` unquoted, other elements
/// quoted with `"` when they need it (backslash escapes inside).
fn encode_array(
    text: &[u8],
    element: &Rule,
    delimiter: u8,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let body = if text.first() == Some(&b'[') {
        let eq = text
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("array", text))?;
        &text[eq + 1..]
    } else {
        text
    };
    let mut parser = Scanner {
        s: body,
        i: 0,
        scratch: Vec::new(),
    };
    parser.array(element, delimiter, out, 0)?;
    if parser.i != body.len() {
        return Err(bad("array", text));
    }
    Ok(())
}

/// Deepest array nesting accepted (PostgreSQL's MAXDIM is 6).
const MAX_ARRAY_DEPTH: usize = 8;

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    scratch: Vec<u8>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), EncodeError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(bad("array", self.s))
        }
    }

    fn array(
        &mut self,
        element: &Rule,
        delimiter: u8,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), EncodeError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(bad("array", self.s));
        }
        self.expect(b'{')?;
        out.push(b'[');
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            if self.peek() == Some(b'{') {
                self.array(element, delimiter, out, depth + 1)?;
            } else {
                self.element(element, delimiter, out)?;
            }
            match self.peek() {
                Some(c) if c == delimiter => {
                    self.i += 1;
                    out.push(b',');
                }
                Some(b'}') => {
                    self.i += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(bad("array", self.s)),
            }
        }
    }

    fn element(
        &mut self,
        rule: &Rule,
        delimiter: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.scratch.clear();
        let quoted = self.peek() == Some(b'"');
        if quoted {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err(bad("array", self.s)),
                    Some(b'"') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = self.s.get(self.i + 1).ok_or_else(|| bad("array", self.s))?;
                        self.scratch.push(*c);
                        self.i += 2;
                    }
                    Some(c) => {
                        self.scratch.push(c);
                        self.i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = self.peek() {
                if c == delimiter || c == b'}' {
                    break;
                }
                if c == b'\\' {
                    self.i += 1;
                    let c = self.peek().ok_or_else(|| bad("array", self.s))?;
                    self.scratch.push(c);
                } else {
                    self.scratch.push(c);
                }
                self.i += 1;
            }
            if self.scratch.eq_ignore_ascii_case(b"NULL") {
                out.extend_from_slice(b"null");
                return Ok(());
            }
        }
        let value = std::mem::take(&mut self.scratch);
        let result = rule.encode(&value, out);
        self.scratch = value;
        result
    }
}

/// Reads a composite's text output (`record_out`): `(f1,f2,…)`, a NULL field empty, other fields
/// quoted when they need it (`""` is a quote inside quotes, backslash escapes anywhere).
fn encode_composite(
    text: &[u8],
    fields: Option<&[(String, Rule)]>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let inner = text
        .strip_prefix(b"(")
        .and_then(|t| t.strip_suffix(b")"))
        .ok_or_else(|| bad("composite", text))?;
    if fields.is_some_and(|f| f.is_empty()) && inner.is_empty() {
        out.extend_from_slice(b"{}");
        return Ok(());
    }
    let values = split_record(inner).ok_or_else(|| bad("composite", text))?;
    match fields {
        Some(fields) => {
            if values.len() != fields.len() {
                return Err(bad("composite", text));
            }
            out.push(b'{');
            for (n, ((key, rule), value)) in fields.iter().zip(&values).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                match value {
                    Some(v) => rule.encode(v, out)?,
                    None => out.extend_from_slice(b"null"),
                }
            }
            out.push(b'}');
        }
        None => {
            out.push(b'[');
            for (n, value) in values.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                match value {
                    Some(v) => write_json_str(v, out)?,
                    None => out.extend_from_slice(b"null"),
                }
            }
            out.push(b']');
        }
    }
    Ok(())
}

/// The fields of a record's text between its parentheses; None for NULL fields. `()` has no field
/// only for a record of zero columns, which PostgreSQL prints as `()` too: one NULL field is told
/// apart by the caller's field count, so `()` yields one NULL here.
fn split_record(inner: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let mut fields = Vec::new();
    let mut current = Vec::new();
    let mut seen = false;
    let mut in_quotes = false;
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        match c {
            b'\\' => {
                current.push(*inner.get(i + 1)?);
                seen = true;
                i += 1;
            }
            b'"' if in_quotes && inner.get(i + 1) == Some(&b'"') => {
                current.push(b'"');
                i += 1;
            }
            b'"' => {
                in_quotes = !in_quotes;
                seen = true;
            }
            b',' if !in_quotes => {
                fields.push(seen.then(|| std::mem::take(&mut current)));
                current.clear();
                seen = false;
            }
            _ => {
                current.push(c);
                seen = true;
            }
        }
        i += 1;
    }
    if in_quotes {
        return None;
    }
    fields.push(seen.then_some(current));
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(rule: &Rule, text: &str) -> String {
        let mut out = Vec::new();
        rule.encode(text.as_bytes(), &mut out)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_are_numbers_within_2_pow_53() {
        assert_eq!(enc(&Rule::Int, "42"), "42");
        assert_eq!(enc(&Rule::Int, "-9007199254740991"), "-9007199254740991");
        assert_eq!(enc(&Rule::Int, "9007199254740992"), "\"9007199254740992\"");
        assert_eq!(
            enc(&Rule::Int, "18446744073709551615"),
            "\"18446744073709551615\""
        );
        assert!(Rule::Int.encode(b"1e3", &mut Vec::new()).is_err());
        assert!(Rule::Int.encode(b"", &mut Vec::new()).is_err());
    }

    #[test]
    fn floats_keep_their_text_and_name_non_finite_values() {
        assert_eq!(enc(&Rule::Float, "1.5e-07"), "1.5e-07");
        assert_eq!(enc(&Rule::Float, "-0"), "-0");
        assert_eq!(enc(&Rule::Float, "1e+100"), "1e+100");
        assert_eq!(enc(&Rule::Float, "NaN"), "\"NaN\"");
        assert_eq!(enc(&Rule::Float, "-Infinity"), "\"-Infinity\"");
        for bad in ["01", "1.", ".5", "1e", "--1", "0x10"] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            enc(&Rule::TimestampTz, "2024-03-01 12:34:56.789+00"),
            "\"2024-03-01T12:34:56.789Z\""
        );
        assert_eq!(
            enc(&Rule::TimestampTz, "2024-03-01 00:30:00+05:30"),
            "\"2024-02-29T19:00:00Z\""
        );
        assert_eq!(
            enc(&Rule::TimestampTz, "1900-01-01 00:00:00-00:09:21"),
            "\"1900-01-01T00:09:21Z\""
        );
        assert_eq!(enc(&Rule::TimestampTz, "infinity"), "\"infinity\"");
        assert_eq!(
            enc(&Rule::TimestampTz, "0044-03-15 00:00:00+00 BC"),
            "\"0044-03-15 00:00:00+00 BC\""
        );
        assert_eq!(
            enc(&Rule::Timestamp, "2024-03-01 12:34:56.5"),
            "\"2024-03-01T12:34:56.5\""
        );
        assert_eq!(enc(&Rule::Timestamp, "-infinity"), "\"-infinity\"");
    }

    #[test]
    fn arrays_nest_and_map_their_elements() {
        let ints = Rule::Array {
            element: Box::new(Rule::Int),
            delimiter: b',',
        };
        assert_eq!(enc(&ints, "{{1,2},{3,NULL}}"), "[[1,2],[3,null]]");
        assert_eq!(enc(&ints, "[0:1]={7,8}"), "[7,8]");
        assert_eq!(enc(&ints, "{}"), "[]");
        let texts = Rule::Array {
            element: Box::new(Rule::Text),
            delimiter: b',',
        };
        assert_eq!(
            enc(&texts, r#"{"a b","q\"uote","NULL",NULL,"back\\slash"}"#),
            r#"["a b","q\"uote","NULL",null,"back\\slash"]"#
        );
        let boxes = Rule::Array {
            element: Box::new(Rule::Text),
            delimiter: b';',
        };
        assert_eq!(
            enc(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        assert!(ints.encode(b"{1,2", &mut Vec::new()).is_err());
        assert!(ints.encode(b"{1,2}x", &mut Vec::new()).is_err());
    }

    #[test]
    fn composites_become_objects_and_records_arrays() {
        let pair = Rule::Composite(vec![
            (json_string("n"), Rule::Int),
            (json_string("s"), Rule::Text),
        ]);
        assert_eq!(
            enc(&pair, r#"(1,"a ""b"", c")"#),
            r#"{"n":1,"s":"a \"b\", c"}"#
        );
        assert_eq!(enc(&pair, "(,)"), r#"{"n":null,"s":null}"#);
        assert_eq!(enc(&pair, r#"(2,"")"#), r#"{"n":2,"s":""}"#);
        assert_eq!(enc(&Rule::Record, "(1,a)"), r#"["1","a"]"#);
        assert!(pair.encode(b"(1)", &mut Vec::new()).is_err());
    }

    #[test]
    fn bytea_is_base64_and_bool_is_bool() {
        assert_eq!(enc(&Rule::Bytea, "\\x00ff10"), "\"AP8Q\"");
        assert_eq!(enc(&Rule::Bytea, "\\x"), "\"\"");
        assert_eq!(enc(&Rule::Bool, "t"), "true");
        assert!(Rule::Bytea.encode(b"\\x0", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_failed_encode_leaves_the_buffer_alone() {
        let mut out = b"[1,".to_vec();
        let ints = Rule::Array {
            element: Box::new(Rule::Int),
            delimiter: b',',
        };
        assert!(ints.encode(b"{1,x}", &mut out).is_err());
        assert_eq!(out, b"[1,");
    }
}
