//! SQL values to JSON, per PROTOCOL.md: integers beyond 2^53 and `numeric` as strings, timestamps
//! RFC 3339, `bytea` base64, `json`/`jsonb` as JSON, arrays as arrays, NULL as null.

use base64::Engine as _;
use serde_json::Value;
use sqlx::postgres::PgRow;
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

/// How to decode one PostgreSQL column, chosen once per query from its type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgDecoder {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Uuid,
    Json,
    TimestampTz,
    Timestamp,
    Date,
    Time,
    Bytea,
    BoolArray,
    Int2Array,
    Int4Array,
    Int8Array,
    Float4Array,
    Float8Array,
    NumericArray,
    TextArray,
    UuidArray,
    JsonArray,
    /// Anything else: its text form when it is valid UTF-8 (enums, domains over text), else an error.
    Other,
}

impl PgDecoder {
    pub fn for_type(type_name: &str) -> PgDecoder {
        use PgDecoder::*;
        match type_name {
            "bool" => Bool,
            "int2" => Int2,
            "int4" => Int4,
            "int8" => Int8,
            "oid" => Oid,
            "float4" => Float4,
            "float8" => Float8,
            "numeric" => Numeric,
            "text" | "varchar" | "bpchar" | "name" | "char" | "citext" | "unknown" => Text,
            "uuid" => Uuid,
            "json" | "jsonb" => Json,
            "timestamptz" => TimestampTz,
            "timestamp" => Timestamp,
            "date" => Date,
            "time" => Time,
            "bytea" => Bytea,
            "bool[]" => BoolArray,
            "int2[]" => Int2Array,
            "int4[]" => Int4Array,
            "int8[]" => Int8Array,
            "float4[]" => Float4Array,
            "float8[]" => Float8Array,
            "numeric[]" => NumericArray,
            "text[]" | "varchar[]" | "bpchar[]" | "name[]" => TextArray,
            "uuid[]" => UuidArray,
            "json[]" | "jsonb[]" => JsonArray,
            _ => Other,
        }
    }

    pub fn decode(self, row: &PgRow, i: usize) -> Result<Value, String> {
        use PgDecoder::*;
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres>>(
            row: &'r PgRow,
            i: usize,
        ) -> Result<T, String> {
            row.try_get_unchecked::<T, _>(i).map_err(|e| e.to_string())
        }
        fn arr<T, F>(row: &PgRow, i: usize, f: F) -> Result<Value, String>
        where
            Vec<Option<T>>: for<'a> sqlx::Decode<'a, sqlx::Postgres>,
            F: Fn(T) -> Value,
        {
            let items: Vec<Option<T>> = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
            Ok(Value::Array(
                items
                    .into_iter()
                    .map(|v| v.map(&f).unwrap_or(Value::Null))
                    .collect(),
            ))
        }
        Ok(match self {
            Bool => Value::Bool(get(row, i)?),
            Int2 => Value::from(get::<i16>(row, i)?),
            Int4 => Value::from(get::<i32>(row, i)?),
            Int8 => int_json(get(row, i)?),
            Oid => Value::from(get::<sqlx::postgres::types::Oid>(row, i)?.0),
            Float4 => float_json(f64::from(get::<f32>(row, i)?)),
            Float8 => float_json(get(row, i)?),
            Numeric => Value::String(get::<sqlx::types::BigDecimal>(row, i)?.to_string()),
            Text => Value::String(get(row, i)?),
            Uuid => Value::String(get::<sqlx::types::Uuid>(row, i)?.to_string()),
            Json => get::<sqlx::types::Json<Value>>(row, i)?.0,
            TimestampTz => Value::String(
                get::<chrono::DateTime<chrono::Utc>>(row, i)?
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            Timestamp => Value::String(
                get::<chrono::NaiveDateTime>(row, i)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            Date => Value::String(get::<chrono::NaiveDate>(row, i)?.to_string()),
            Time => Value::String(get::<chrono::NaiveTime>(row, i)?.to_string()),
            Bytea => base64(&get::<Vec<u8>>(row, i)?),
            BoolArray => arr::<bool, _>(row, i, Value::Bool)?,
            Int2Array => arr::<i16, _>(row, i, Value::from)?,
            Int4Array => arr::<i32, _>(row, i, Value::from)?,
            Int8Array => arr::<i64, _>(row, i, int_json)?,
            Float4Array => arr::<f32, _>(row, i, |v| float_json(f64::from(v)))?,
            Float8Array => arr::<f64, _>(row, i, float_json)?,
            NumericArray => {
                arr::<sqlx::types::BigDecimal, _>(row, i, |v| Value::String(v.to_string()))?
            }
            TextArray => arr::<String, _>(row, i, Value::String)?,
            UuidArray => arr::<sqlx::types::Uuid, _>(row, i, |v| Value::String(v.to_string()))?,
            JsonArray => arr::<sqlx::types::Json<Value>, _>(row, i, |v| v.0)?,
            Other => match get::<&str>(row, i) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => {
                    let type_name = row
                        .try_get_raw(i)
                        .map(|r| r.type_info().name().to_owned())
                        .unwrap_or_default();
                    return Err(format!(
                        "column {} has type `{type_name}`, which cannot be sent as JSON yet; cast it to text",
                        i + 1
                    ));
                }
            },
        })
    }
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

    #[test]
    fn decoder_choice() {
        assert_eq!(PgDecoder::for_type("int8"), PgDecoder::Int8);
        assert_eq!(PgDecoder::for_type("text[]"), PgDecoder::TextArray);
        assert_eq!(PgDecoder::for_type("mood"), PgDecoder::Other);
    }
}
