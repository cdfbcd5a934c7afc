//! `gateway --embedded`: one process, no Redis, no PostgreSQL: in-process bus and worker on the SQLite demo
//! database.

use crate::harness::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_gateway_runs_queries_on_the_demo_database() {
    let cluster = spawn_app("embedded").await;
    assert!(cluster.db.is_none() && cluster.workers.is_empty());
    let mut c = cluster.query_client(0).await;

    c.ping(42).await;
    c.send_text(r#"{"type":"ping","timestamp":43}"#).await;
    c.expect_pong(&serde_json::json!(43)).await;

    let exec = c
        .execute(
            "SELECT id, name FROM customers ORDER BY id",
            None,
            Some("e-1"),
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
    assert_eq!(s.column_names(), vec!["id", "name"]);
    let row_count = s.terminal["payload"]["result"]["rowCount"]
        .as_u64()
        .unwrap();
    assert!(row_count > 0, "the demo database has customers");
    assert_eq!(row_count, s.rows.len() as u64);
    let ids: Vec<i64> = s
        .rows
        .iter()
        .map(|r| {
            r["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("id is an integer: {r}"))
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ORDER BY id is respected: {ids:?}"
    );
    assert!(
        s.rows
            .iter()
            .all(|r| r["name"].as_str().is_some_and(|n| !n.is_empty())),
        "every customer has a name"
    );

    // Queries run read-only in embedded mode too: a write fails and changes nothing.
    let del = c.execute("DELETE FROM customers", None, None).await;
    let frames = c.collect_execution(&del).await;
    let s = check_full_stream(&del, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_error",
        "a DELETE must fail: {}",
        short(&s.terminal)
    );
    let again = c
        .execute("SELECT id, name FROM customers ORDER BY id", None, None)
        .await;
    let frames = c.collect_execution(&again).await;
    let s2 = check_full_stream(&again, &frames);
    assert_eq!(
        s2.terminal_type(),
        "query_completed",
        "{}",
        short(&s2.terminal)
    );
    assert_eq!(
        s2.rows.len() as u64,
        row_count,
        "the DELETE changed the data"
    );

    // The other sample tables exist.
    for table in ["orders", "products"] {
        let e = c
            .execute(&format!("SELECT count(*) AS c FROM {table}"), None, None)
            .await;
        let frames = c.collect_execution(&e).await;
        let s = check_full_stream(&e, &frames);
        assert_eq!(
            s.terminal_type(),
            "query_completed",
            "{table}: {}",
            short(&s.terminal)
        );
        let count = s.rows[0]["c"].clone();
        let n = match &count {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        assert!(n.is_some_and(|n| n > 0), "{table} has sample rows: {count}");
    }
}
