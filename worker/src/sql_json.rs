//! SQLite values to JSON (the embedded demo), by their storage class: integers beyond 2^53 as strings,
//! REAL as numbers (NaN/±Infinity as strings), BLOB as base64, TEXT as strings, NULL as null.
//! PostgreSQL's values go through [`crate::pg_text`] instead.

use base64::Engine as _;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, TypeInfo, ValueRef};

/// Largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

fn int_json(v: i64) -> Value {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
        Value::from(v)
    } else {
        Value::String(v.to_string())
    }
}

fn float_json(v: f64) -> Value {
    // NaN and ±Infinity have no JSON number: send PostgreSQL's own spelling.
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or_else(|| {
            Value::String(if v.is_nan() {
                "NaN".into()
            } else if v > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            })
        })
}

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// SQLite values carry their own storage class; decode by it.
pub fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let class = raw.type_info().name().to_owned();
    let err = |e: sqlx::Error| e.to_string();
    Ok(match class.as_str() {
        "INTEGER" => int_json(row.try_get_unchecked::<i64, _>(i).map_err(err)?),
        "REAL" => float_json(row.try_get_unchecked::<f64, _>(i).map_err(err)?),
        "BLOB" => base64(&row.try_get_unchecked::<Vec<u8>, _>(i).map_err(err)?),
        _ => Value::String(row.try_get_unchecked::<String, _>(i).map_err(err)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_become_strings() {
        assert_eq!(int_json(42), Value::from(42));
        assert_eq!(int_json(1 << 60), Value::String((1i64 << 60).to_string()));
        assert_eq!(float_json(f64::NAN), Value::String("NaN".into()));
    }
}
