//! SQL that cannot write: the worker connects as the least-privilege role of deploy/postgres/reader-role.sql, and
//! every write form is refused by PostgreSQL itself (read-only transaction or missing privilege), with
//! the database unchanged afterwards.

use crate::harness::*;
use serde_json::Value;

/// Runs `query`; returns its query_error detail (panics if it did not fail).
async fn refused(c: &mut Client, query: &str) -> Value {
    let exec = c.execute(query, None, None).await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_error",
        "{query:?} was not refused: {}",
        short(&s.terminal)
    );
    s.terminal["payload"]["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_form_is_refused_by_the_database() {
    let cluster = Cluster::builder("sql_safety")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(true)
        .start()
        .await;
    let mut admin = cluster.pg().await;
    // The database as reader-role.sql left it (the harness loads it), plus test tables.
    for sql in [
        "CREATE TABLE items (id int PRIMARY KEY)".to_owned(),
        "INSERT INTO items VALUES (1), (2), (3)".to_owned(),
        "CREATE SEQUENCE ticket".to_owned(),
        // USAGE allows nextval(): the read-only transaction must be what stops it.
        format!("GRANT USAGE ON SEQUENCE ticket TO {READER_ROLE}"),
    ] {
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let admin_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    // From a file, as a deployment would: the password is in no process argument or environment.
    let url_file = target_dir().join(format!("{}.url", cluster.db().name));
    std::fs::write(&url_file, format!("{}\n", cluster.db().reader_url)).unwrap();
    let mut cluster = cluster;
    cluster
        .add_worker(&["--database-url-file", url_file.to_str().unwrap()])
        .await;
    let _ = std::fs::remove_file(&url_file);
    let mut c = cluster.query_client(0).await;

    // Reading works.
    let exec = c
        .execute("SELECT id FROM items ORDER BY id", None, None)
        .await;
    let frames = c.collect_execution(&exec).await;
    assert_eq!(check_full_stream(&exec, &frames).rows.len(), 3);

    // Writes: refused by the read-only transaction (SQLSTATE 25006).
    for query in [
        "INSERT INTO items VALUES (4)",
        "UPDATE items SET id = id + 10",
        "DELETE FROM items",
        "CREATE TABLE x (a int)",
        "DROP TABLE items",
        "TRUNCATE items",
        "SELECT id FROM items FOR UPDATE",
        "SELECT nextval('ticket')",
    ] {
        let e = refused(&mut c, query).await;
        assert_eq!(e["sqlstate"], "25006", "{query}: {e}");
        assert_eq!(e["code"], "read_only", "{query}: {e}");
    }
    // Side effects outside tables: refused by the role's missing privileges (SQLSTATE 42501).
    for query in [
        "COPY (SELECT 1) TO PROGRAM 'true'".to_owned(),
        format!("SELECT pg_terminate_backend({admin_pid})"),
        "SELECT set_config('work_mem', '1MB', false)".to_owned(),
    ] {
        let e = refused(&mut c, &query).await;
        assert_eq!(e["sqlstate"], "42501", "{query}: {e}");
    }
    // Several statements at once: refused (one statement per query).
    let e = refused(&mut c, "SELECT 1; DELETE FROM items").await;
    assert_eq!(e["sqlstate"], "42601", "{e}");

    // Nothing changed: the rows, the sequence, and the admin connection is alive.
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2, 3]);
    let called: bool = sqlx::query_scalar("SELECT is_called FROM ticket")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!called, "the sequence advanced");
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(tables, 1, "a table was created or dropped");
}
