//! Results as faithful as psql: every value's JSON is checked against PostgreSQL itself.
//!
//! The oracle is the database: for each expression the test asks PostgreSQL (on its own connection)
//! for `expr::text` (element-wise `expr::text[]` for arrays, field by field for composites, and
//! `to_json(expr AT TIME ZONE 'UTC')` for the RFC 3339 rule of `timestamptz`), applies the README's
//! documented JSON rule to that text, and compares with what the worker streamed for the same
//! expression. The expressions are every base type in `pg_type` that has a value (a literal that
//! casts, or a value found in a catalog column of that type), an array of each, and hand-picked hard
//! cases: ranges, multiranges, an enum, domains, composites, anonymous records, 2-D and 3-D arrays,
//! NULLs inside arrays, NaN, ±infinity, -0, the empty range, intervals in months, BC and year-10000
//! timestamps, and extension types (citext, hstore, ltree, PostGIS when installed). (Driver sessions run in UTC,
//! the worker's as the test's; offsets other than +00 are unit-tested in `worker/src/pg_text.rs`.)

use std::collections::BTreeMap;

use crate::harness::*;
use base64::Engine as _;
use serde_json::{json, Value};
use sqlx::Row;

/// How the README's mapping table says a value of a type becomes JSON.
#[derive(Debug, Clone)]
enum Kind {
    Int,
    Float,
    Bool,
    Json,
    Bytea,
    TimestampTz,
    Timestamp,
    Text,
    Array(Box<Kind>),
    Composite(Vec<(String, Kind)>),
}

/// One checked expression: the SQL, what it maps by, and the SQL of its oracle (a `json` value).
struct Case {
    label: String,
    sql: String,
    kind: Kind,
}

const INT_TYPES: &[&str] = &["int2", "int4", "int8", "oid", "xid", "cid", "xid8"];

/// Literals tried, in order, for a base type found in pg_type.
const CANDIDATES: &[&str] = &[
    "1",
    "t",
    "abc",
    "1.5",
    "2024-03-01 12:34:56.789+05:30",
    "2024-03-01",
    "12:30:05.25+02",
    "12:30:05.25",
    "1 year 2 mons 3 days 04:05:06.789",
    "10.1.0.0/16",
    "08:00:2b:01:02:03",
    "08:00:2b:01:02:03:04:05",
    "(1,2)",
    "<(1,2),3>",
    "((0,0),(1,1),(1,0))",
    "[(0,0),(1,1)]",
    "{1,2,3}",
    "(1,1),(0,0)",
    "101",
    "a & b",
    "'a' 'b':2",
    "<a b=\"c\">x &amp; y</a>",
    "0/16B3748",
    "10:20:10,14,15",
    "integer",
    "pg_class",
    "now",
    "sum(integer)",
    "+(integer,integer)",
    "postgres",
    "public",
    "english",
    "simple",
    "\"C\"",
    "=r/postgres",
    "{\"a\": [1, 2.5, null], \"b\": \"x\"}",
    "$.a[*] ? (@ > 1)",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "\\x00ff10",
    "1 2",
    "(0,1)",
];

/// Hand-picked hard cases: (label, expression).
fn hard_cases() -> Vec<(&'static str, String)> {
    [
        ("numeric scale", "19.99::numeric"),
        ("numeric(10,3)", "0.1::numeric(10,3)"),
        ("numeric small", "(-0.00012)::numeric"),
        ("numeric 1e30", "1e30::numeric"),
        ("numeric NaN", "'NaN'::numeric"),
        ("numeric Infinity", "'Infinity'::numeric"),
        ("numeric -Infinity", "'-Infinity'::numeric"),
        ("numeric -0", "'-0'::numeric"),
        ("int8 2^53-1", "9007199254740991::int8"),
        ("int8 2^53", "9007199254740992::int8"),
        ("int8 min", "(-9223372036854775807 - 1)::int8"),
        ("int4 min", "(-2147483648)::int4"),
        ("xid8 big", "'18446744073709551615'::xid8"),
        ("float8 NaN", "'NaN'::float8"),
        ("float8 Infinity", "'Infinity'::float8"),
        ("float4 -Infinity", "'-Infinity'::float4"),
        ("float8 -0", "'-0'::float8"),
        ("float8 1e300", "1e300::float8"),
        ("float8 tiny", "1.5e-300::float8"),
        ("float4 max", "3.4028235e38::float4"),
        ("float4 0.1", "0.1::float4"),
        ("float8 third", "(1.0/3)::float8"),
        ("timestamptz infinity", "'infinity'::timestamptz"),
        ("timestamptz -infinity", "'-infinity'::timestamptz"),
        ("timestamptz LMT", "'1900-01-01 00:00:00'::timestamptz"),
        ("timestamptz summer", "'2024-07-01 12:00:00.123456+00'::timestamptz"),
        ("timestamptz BC", "'0044-03-15 12:00:00+00 BC'::timestamptz"),
        ("timestamptz 10000", "'10000-01-01 00:00:00+00'::timestamptz"),
        ("timestamp -infinity", "'-infinity'::timestamp"),
        ("timestamp BC", "'0044-03-15 12:00:00 BC'::timestamp"),
        ("timestamp micro", "'2024-01-01 00:00:00.000001'::timestamp"),
        ("date infinity", "'infinity'::date"),
        ("date BC", "'0044-03-15 BC'::date"),
        ("time .25", "'12:30:05.25'::time"),
        ("timetz", "'12:30:05.25+02:30'::timetz"),
        ("interval months", "'1 year 2 months'::interval"),
        ("interval days and time", "'3 days 04:05:06.789'::interval"),
        ("interval negative", "'-1 mons -2 days'::interval"),
        ("int4range", "'[1,10)'::int4range"),
        ("int4range empty", "'empty'::int4range"),
        ("int8range unbounded", "'(,5]'::int8range"),
        ("daterange", "'[2024-01-01,2024-02-01)'::daterange"),
        ("tstzrange", "tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00')"),
        ("numrange", "numrange(1.50, 2.500)"),
        ("int4multirange", "'{[1,3),[5,7)}'::int4multirange"),
        ("multirange empty", "'{}'::int4multirange"),
        ("enum", "'it''s \"odd\"'::c2s_mood"),
        ("domain over int", "42::c2s_posint"),
        ("domain over text", "'dom, ain'::c2s_label"),
        ("domain over int[]", "'{1,2}'::c2s_ints"),
        ("2-D int array", "'{{1,2},{3,4}}'::int[]"),
        ("3-D int array with NULL", "'{{{1},{2}},{{3},{NULL}}}'::int[]"),
        ("array with lower bound 0", "'[0:1]={5,6}'::int[]"),
        ("empty array", "'{}'::int[]"),
        (
            "text array quoting",
            "ARRAY['a,b', 'c\"d', NULL, '', 'NULL', E'e\\\\f', ' sp ', '{x}']::text[]",
        ),
        ("2-D text array", "ARRAY[['a','b'],['c',NULL]]"),
        ("float array specials", "'{NaN,Infinity,-Infinity,-0,1.5}'::float8[]"),
        ("int8 array beyond 2^53", "ARRAY[9007199254740993, 1]::int8[]"),
        ("numeric array", "ARRAY[19.99, 0.100, 'NaN']::numeric[]"),
        ("bool array", "'{t,f,NULL}'::bool[]"),
        ("jsonb array", "ARRAY['{\"a\": [1, 2]}'::jsonb, 'null', '\"s\"']"),
        ("bytea array", "ARRAY['\\x00ff'::bytea, '\\x'::bytea]"),
        (
            "timestamptz 2-D array",
            "'{{\"2024-03-01 00:30:00+05:30\",NULL},{infinity,\"1900-01-01 00:00\"}}'::timestamptz[]",
        ),
        ("timestamp array", "ARRAY['2024-03-01 12:00:00.5'::timestamp, '-infinity']"),
        ("box array", "'{(1,1),(0,0);(3,3),(2,2)}'::box[]"),
        ("interval array", "ARRAY['1 mon'::interval, '-2 days']"),
        ("inet array", "ARRAY['10.0.0.1'::inet, '::1/128', '2001:db8::/32']"),
        ("range array", "ARRAY['[1,2)'::int4range, 'empty']"),
        ("enum array", "ARRAY['happy'::c2s_mood, 'it''s \"odd\"']"),
        (
            "composite",
            "ROW(9007199254740993, 'a \"quoted\", (paren) \\ back', '2024-03-01 10:00+00', \
             '{1,NULL,3}', ROW('NaN', ''), NULL)::c2s_pair",
        ),
        ("composite all NULL", "ROW(NULL, NULL, NULL, NULL, NULL, NULL)::c2s_pair"),
        ("composite array", "ARRAY[ROW(1.5, 'x y')::c2s_inner, NULL, ROW(NULL, '')::c2s_inner]"),
        (
            "text with specials",
            "E'tab\\there\\nnewline \\u0001 ünïcödé 🎉 \"quote\" \\\\ backslash'",
        ),
        ("char(5)", "'ab'::char(5)"),
        ("bit(4)", "B'1010'::bit(4)"),
        ("varbit", "B'101'::varbit"),
        ("money", "12.34::money"),
        ("inet v6", "'2001:db8::ff00:42:8329/64'::inet"),
        ("cidr", "'10.1.0.0/16'::cidr"),
        ("macaddr", "'08:00:2b:01:02:03'::macaddr"),
        ("tsvector", "to_tsvector('english', 'The quick brown foxes jumped')"),
        ("tsquery", "to_tsquery('english', 'fox & (jump | run)')"),
        ("xml", "'<a b=\"c\">x &amp; y</a>'::xml"),
        ("regtype", "'integer'::regtype"),
        ("regclass", "'pg_class'::regclass"),
        ("point", "point(1.5, -2)"),
        ("circle", "'<(1,2),3>'::circle"),
        ("polygon", "'((0,0),(1,1),(1,0))'::polygon"),
        ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid"),
        ("json keeps its text", "'{\"b\": 1,   \"a\": [true, null]}'::json"),
        ("jsonb", "'{\"b\": 1, \"a\": [true, null, 1.50]}'::jsonb"),
        ("json scalar", "'\"just a string\"'::json"),
        ("bytea", "'\\x00ff10'::bytea"),
        ("bytea empty", "''::bytea"),
        ("void", "pg_sleep(0)"),
        ("NULL", "NULL::int"),
    ]
    .into_iter()
    .map(|(l, e)| (l, e.to_owned()))
    .collect()
}

const SETUP: &[&str] = &[
    "CREATE TYPE c2s_mood AS ENUM ('happy', 'it''s \"odd\"')",
    "CREATE DOMAIN c2s_posint AS int CHECK (VALUE > 0)",
    "CREATE DOMAIN c2s_label AS text",
    "CREATE DOMAIN c2s_ints AS int[]",
    "CREATE TYPE c2s_inner AS (x float8, t text)",
    "CREATE TYPE c2s_pair AS (n int8, label text, at timestamptz, tags int[], inner_v c2s_inner, note text)",
];

/// Extensions tried (each: the extension, then its sample expressions).
const EXTENSIONS: &[(&str, &[(&str, &str)])] = &[
    ("citext", &[("citext", "'MiXeD Case'::citext")]),
    (
        "hstore",
        &[("hstore", "'\"a\"=>\"1\", \"b c\"=>NULL'::hstore")],
    ),
    ("ltree", &[("ltree", "'top.science.astronomy'::ltree")]),
    (
        "postgis",
        &[("geometry", "'SRID=4326;POINT(1 2)'::geometry")],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_matches_postgres_own_text() {
    let mut cluster = Cluster::builder("types_oracle")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(true)
        .start()
        .await;
    let mut pg = cluster.pg().await;
    for sql in SETUP {
        sqlx::raw_sql(sql)
            .execute(&mut pg)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut extra: Vec<(String, String)> = Vec::new();
    let mut missing_extensions = Vec::new();
    for (ext, samples) in EXTENSIONS {
        match sqlx::raw_sql(&format!("CREATE EXTENSION IF NOT EXISTS {ext}"))
            .execute(&mut pg)
            .await
        {
            Ok(_) => extra.extend(samples.iter().map(|(l, e)| (l.to_string(), e.to_string()))),
            Err(_) => missing_extensions.push(*ext),
        }
    }
    cluster.add_worker(&[]).await;

    let mut cases = Vec::new();
    let (walked, no_value) = walk_base_types(&mut pg, &mut cases).await;
    for (label, expr) in hard_cases()
        .into_iter()
        .map(|(l, e)| (l.to_owned(), e))
        .chain(extra)
    {
        let kind = kind_of_expr(&mut pg, &expr).await;
        cases.push(Case {
            label,
            sql: expr,
            kind,
        });
    }
    // Anonymous records: an array of their fields' text.
    let record = ("record", "ROW(1, 'a b', NULL, '2024-01-01'::date, 1.50)");

    let mut c = cluster.query_client(0).await;
    let select = cases
        .iter()
        .map(|c| c.sql.as_str())
        .chain([record.1])
        .collect::<Vec<_>>()
        .join(",\n  ");
    let exec = c
        .execute(
            &format!("SELECT\n  {select}"),
            Some(json!({"rowFormat": "arrays"})),
            None,
        )
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        short(&s.terminal)
    );
    let row = s.rows[0].as_array().expect("arrays").clone();
    assert_eq!(row.len(), cases.len() + 1);
    assert_eq!(
        row[cases.len()],
        json!(["1", "a b", null, "2024-01-01", "1.50"]),
        "an anonymous record is an array of its fields' text"
    );

    let mut failures = Vec::new();
    for (case, got) in cases.iter().zip(&row) {
        let oracle = oracle_text(&mut pg, &case.sql, &case.kind).await;
        let expected = expect(&case.kind, &oracle);
        if !same(&case.kind, got, &expected) {
            failures.push(format!(
                "{} ({}): got {got}, expected {expected} (PostgreSQL's text: {oracle})",
                case.label, case.sql
            ));
        }
    }
    eprintln!(
        "types: {} expressions checked ({walked} base types of pg_type and their arrays); \
         no value found for {}: {no_value:?}; extensions not available: {missing_extensions:?}",
        cases.len() + 1,
        no_value.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} values differ from PostgreSQL:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Adds a case for every base type of pg_type that has a value, and one for an array of it.
/// Returns how many types were walked and those without any value.
async fn walk_base_types(
    pg: &mut sqlx::PgConnection,
    cases: &mut Vec<Case>,
) -> (usize, Vec<String>) {
    let types: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT t.oid::int8, format_type(t.oid, NULL), t.typarray::int8 FROM pg_type t \
         WHERE t.typtype = 'b' AND (t.typcategory <> 'A' OR t.typname IN ('int2vector', 'oidvector')) \
         AND t.typisdefined AND t.typnamespace = 'pg_catalog'::regnamespace ORDER BY t.oid",
    )
    .fetch_all(&mut *pg)
    .await
    .unwrap();
    let mut no_value = Vec::new();
    for (oid, name, array) in &types {
        let Some(expr) = sample_of(pg, *oid, name).await else {
            no_value.push(name.clone());
            continue;
        };
        let kind = kind_of_expr(pg, &expr).await;
        cases.push(Case {
            label: name.clone(),
            sql: expr.clone(),
            kind: kind.clone(),
        });
        if *array != 0 {
            let array_expr = format!("ARRAY[{expr}, NULL]");
            if sqlx::query(&format!("SELECT ({array_expr})::text"))
                .fetch_one(&mut *pg)
                .await
                .is_ok()
            {
                cases.push(Case {
                    label: format!("{name}[]"),
                    sql: array_expr,
                    kind: Kind::Array(Box::new(kind)),
                });
            }
        }
    }
    (types.len(), no_value)
}

/// A value of a type: the first candidate literal that casts to it, else a value from a catalog
/// column of that type.
async fn sample_of(pg: &mut sqlx::PgConnection, oid: i64, name: &str) -> Option<String> {
    for lit in CANDIDATES {
        let quoted = format!("'{}'", lit.replace('\'', "''"));
        let expr = format!("{quoted}::{name}");
        // Probed as text: the driver reads binary, which some types (aclitem) do not have.
        if sqlx::query(&format!("SELECT ({expr})::text"))
            .fetch_one(&mut *pg)
            .await
            .is_ok()
        {
            return Some(expr);
        }
    }
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.oid::regclass::text, quote_ident(a.attname) FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         WHERE a.atttypid = $1::int8::oid AND c.relkind = 'r' \
         AND c.relnamespace = 'pg_catalog'::regnamespace AND NOT a.attisdropped",
    )
    .bind(oid)
    .fetch_all(&mut *pg)
    .await
    .ok()?;
    for (table, column) in columns {
        let expr = format!("(SELECT {column} FROM {table} WHERE {column} IS NOT NULL LIMIT 1)");
        let found: Result<Option<bool>, _> =
            sqlx::query_scalar(&format!("SELECT {expr} IS NOT NULL"))
                .fetch_one(&mut *pg)
                .await;
        if matches!(found, Ok(Some(true))) {
            return Some(expr);
        }
    }
    None
}

/// The documented rule for an expression's type, from pg_type (domains by their base type).
async fn kind_of_expr(pg: &mut sqlx::PgConnection, expr: &str) -> Kind {
    let oid: i64 = sqlx::query_scalar(&format!("SELECT pg_typeof({expr})::oid::int8"))
        .fetch_one(&mut *pg)
        .await
        .unwrap_or_else(|e| panic!("pg_typeof({expr}): {e}"));
    Box::pin(kind_of_type(pg, oid)).await
}

async fn kind_of_type(pg: &mut sqlx::PgConnection, oid: i64) -> Kind {
    let row = sqlx::query(
        "SELECT typname::text, typtype::text, typcategory::text, typelem::int8, typbasetype::int8, \
         typrelid::int8 FROM pg_type WHERE oid = $1::oid",
    )
    .bind(oid)
    .fetch_one(&mut *pg)
    .await
    .unwrap();
    let (name, typtype, category): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let (elem, base, relid): (i64, i64, i64) = (row.get(3), row.get(4), row.get(5));
    if typtype == "d" {
        return Box::pin(kind_of_type(pg, base)).await;
    }
    // The catalogs' vectors print as `1 2 3`, not as arrays: text.
    if name == "int2vector" || name == "oidvector" {
        return Kind::Text;
    }
    if category == "A" && elem != 0 {
        return Kind::Array(Box::new(Box::pin(kind_of_type(pg, elem)).await));
    }
    if typtype == "c" {
        let attrs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT attname::text, atttypid::int8 FROM pg_attribute \
             WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(relid)
        .fetch_all(&mut *pg)
        .await
        .unwrap();
        let mut fields = Vec::new();
        for (n, t) in attrs {
            fields.push((n, Box::pin(kind_of_type(pg, t)).await));
        }
        return Kind::Composite(fields);
    }
    match name.as_str() {
        n if INT_TYPES.contains(&n) => Kind::Int,
        "float4" | "float8" => Kind::Float,
        "bool" => Kind::Bool,
        "json" | "jsonb" => Kind::Json,
        "bytea" => Kind::Bytea,
        "timestamptz" => Kind::TimestampTz,
        "timestamp" => Kind::Timestamp,
        _ => Kind::Text,
    }
}

/// PostgreSQL's own text of the expression, as JSON: a string (or null); for arrays, nested arrays
/// of the elements' text; for composites, an object of the fields' text; for `timestamptz` the pair
/// [text, UTC ISO 8601 from `to_json(expr AT TIME ZONE 'UTC')`].
async fn oracle_text(pg: &mut sqlx::PgConnection, expr: &str, kind: &Kind) -> Value {
    let sql = format!("SELECT {}", oracle_sql(&format!("({expr})"), kind));
    sqlx::query_scalar::<_, Option<Value>>(&sql)
        .fetch_one(&mut *pg)
        .await
        .unwrap_or_else(|e| panic!("oracle {sql}: {e}"))
        .unwrap_or(Value::Null)
}

fn oracle_sql(x: &str, kind: &Kind) -> String {
    match kind {
        Kind::TimestampTz => format!(
            "json_build_array({x}::text, to_json({x} AT TIME ZONE 'UTC'), \
             extract(year FROM {x} AT TIME ZONE 'UTC'))"
        ),
        // The elements' text in their nesting (its shape), and each element's own oracle in storage
        // order (the leaves of the shape take them in turn).
        Kind::Array(element) => format!(
            "json_build_array(to_json({x}::text[]), (SELECT json_agg({} ORDER BY n) \
             FROM (SELECT unnest({x}) AS e, generate_series(1, cardinality({x})) AS n) AS u))",
            oracle_sql("u.e", element)
        ),
        Kind::Composite(fields) => {
            let parts = fields
                .iter()
                .map(|(name, k)| {
                    let field = format!("({x}).\"{}\"", name.replace('"', "\"\""));
                    format!("'{}', {}", name.replace('\'', "''"), oracle_sql(&field, k))
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("CASE WHEN ({x})::text IS NULL THEN NULL ELSE json_build_object({parts}) END")
        }
        // The type's output function (what psql shows; `format('%s', …)` calls it), which for a few
        // types differs from the `::text` cast: bool (`t`), inet (no /32), char(n) (padding kept).
        _ => format!("CASE WHEN ({x})::text IS NULL THEN NULL ELSE to_json(format('%s', {x})) END"),
    }
}

/// The README's rule applied to PostgreSQL's text.
fn expect(kind: &Kind, oracle: &Value) -> Value {
    if oracle.is_null() {
        return Value::Null;
    }
    let text = || {
        oracle
            .as_str()
            .unwrap_or_else(|| panic!("text expected: {oracle}"))
    };
    match kind {
        Kind::Int => {
            let n: i128 = text().parse().unwrap();
            if n.abs() < (1 << 53) {
                json!(n as i64)
            } else {
                json!(text())
            }
        }
        Kind::Float => match text() {
            "NaN" | "Infinity" | "-Infinity" => json!(text()),
            t => json!(t.parse::<f64>().unwrap()),
        },
        Kind::Bool => json!(text() == "t"),
        Kind::Json => serde_json::from_str(text()).unwrap(),
        Kind::Bytea => {
            let hex = text().strip_prefix("\\x").unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Kind::TimestampTz => {
            // [local text, UTC ISO from to_json, UTC year]
            let Some(local) = oracle[0].as_str() else {
                return Value::Null;
            };
            let utc = oracle[1].as_str().unwrap();
            let year = oracle[2].as_f64();
            let plain = local.len() >= 19
                && local.as_bytes()[4] == b'-'
                && local.as_bytes()[10] == b' '
                && !local.ends_with(" BC");
            if plain && year.is_some_and(|y| (1.0..=9999.0).contains(&y)) {
                json!(format!("{utc}Z"))
            } else {
                json!(local)
            }
        }
        Kind::Timestamp => {
            let t = text();
            let plain = t.len() >= 19 && t.as_bytes()[4] == b'-' && !t.ends_with(" BC");
            if plain && t.as_bytes()[10] == b' ' {
                json!(t.replacen(' ', "T", 1))
            } else {
                json!(t)
            }
        }
        Kind::Text => oracle.clone(),
        Kind::Array(element) => {
            // [nested texts, element oracles in storage order]: the leaves take them in turn.
            let flat = oracle[1].as_array().cloned().unwrap_or_default();
            let next = std::cell::Cell::new(0);
            map_leaves(&oracle[0], &|leaf| {
                let i = next.get();
                next.set(i + 1);
                if leaf.is_null() {
                    Value::Null
                } else {
                    expect(element, &flat[i])
                }
            })
        }
        Kind::Composite(fields) => {
            let mut out = serde_json::Map::new();
            for (name, k) in fields {
                out.insert(name.clone(), expect(k, &oracle[name.as_str()]));
            }
            Value::Object(out)
        }
    }
}

fn map_leaves(v: &Value, f: &dyn Fn(&Value) -> Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| map_leaves(i, f)).collect()),
        leaf => f(leaf),
    }
}

/// JSON equality, with floats compared as numbers (`1` and `1.0` are the same float).
fn same(kind: &Kind, got: &Value, expected: &Value) -> bool {
    match (kind, got, expected) {
        // serde_json's float parsing is not correctly rounded at the extremes (1.5e-300): the worker
        // sends PostgreSQL's shortest exact text, which JavaScript's JSON.parse reads exactly.
        (Kind::Float, Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a == b || (a - b).abs() <= b.abs() * 1e-15,
            _ => false,
        },
        (Kind::Array(k), Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_nested(k, x, y))
        }
        (Kind::Composite(fields), Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && fields.iter().all(|(n, k)| match (a.get(n), b.get(n)) {
                    (Some(x), Some(y)) => same(k, x, y),
                    _ => false,
                })
                // The object keeps the attributes' order.
                && a.keys().zip(fields.iter().map(|(n, _)| n)).all(|(x, y)| x == y)
        }
        _ => got == expected,
    }
}

/// Equality inside a (possibly multi-dimensional) array of `element`.
fn same_nested(element: &Kind, got: &Value, expected: &Value) -> bool {
    match (got, expected) {
        (Value::Array(a), Value::Array(b)) if !matches!(element, Kind::Array(_)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_nested(element, x, y))
        }
        _ => same(element, got, expected),
    }
}

/// Runs `sql` to completion and returns its rows.
async fn run(c: &mut Client, sql: &str, options: Value) -> Vec<Value> {
    let exec = c.execute(sql, Some(options), None).await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{sql}: {}",
        short(&s.terminal)
    );
    s.rows
}

/// Statements that are not queries still run (directly, not through a cursor), params bind, and
/// the value map is the same for both row formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_cannot_be_cursors_still_run() {
    let cluster = Cluster::builder("types_statements")
        .in_process()
        .gateways(1)
        .workers(1)
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let rows = run(&mut c, "EXPLAIN SELECT 1", json!({})).await;
    assert!(
        rows[0]["QUERY PLAN"]
            .as_str()
            .is_some_and(|p| p.contains("Result")),
        "{rows:?}"
    );
    let rows = run(&mut c, "SHOW DateStyle", json!({"rowFormat": "arrays"})).await;
    assert_eq!(rows, vec![json!(["ISO, MDY"])]);
    let rows = run(
        &mut c,
        "SELECT $1::int + 1 AS n, $2::text AS s, $3::numeric AS d",
        json!({"params": [41, "x", "19.990"]}),
    )
    .await;
    assert_eq!(rows, vec![json!({"n": 42, "s": "x", "d": "19.990"})]);
    let rows = run(
        &mut c,
        "EXPLAIN (COSTS OFF) SELECT $1::int",
        json!({"params": [1], "rowFormat": "arrays"}),
    )
    .await;
    assert!(!rows.is_empty(), "EXPLAIN with params runs directly");
    let rows = run(
        &mut c,
        "VALUES (1, 'a'), (2, NULL) ORDER BY 1",
        json!({"rowFormat": "arrays"}),
    )
    .await;
    assert_eq!(rows, vec![json!([1, "a"]), json!([2, null])]);
    let mut by_column = BTreeMap::new();
    for format in ["objects", "arrays"] {
        let rows = run(
            &mut c,
            "SELECT 1.50::numeric AS a, '{1,2}'::int[] AS b, 'infinity'::timestamptz AS c",
            json!({"rowFormat": format}),
        )
        .await;
        let values: Vec<Value> = match format {
            "objects" => ["a", "b", "c"].iter().map(|k| rows[0][k].clone()).collect(),
            _ => rows[0].as_array().unwrap().clone(),
        };
        by_column.insert(format, values);
    }
    assert_eq!(by_column["objects"], by_column["arrays"]);
    assert_eq!(
        by_column["arrays"],
        vec![json!("1.50"), json!([1, 2]), json!("infinity")]
    );
}
