//! Limits: the row cap cuts a result and says so; a silent client is closed by the heartbeat.

use std::time::Duration;

use crate::harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_cap_truncates_and_reports_it() {
    let cluster = Cluster::builder("limits_row_cap")
        .in_process()
        .gateways(1)
        .workers(1)
        .worker_args(["--max-rows", "25"])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;

    // The request asks for fewer rows than the worker's cap: its own cap wins.
    let exec = c
        .execute(
            "SELECT g AS n FROM generate_series(1, 1000) g",
            Some(json!({"maxRows": 10, "chunkSize": 4, "rowFormat": "arrays"})),
            None,
        )
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        describe(&frames)
    );
    let result = &s.terminal["payload"]["result"];
    assert_eq!(result["rowCount"], 10, "{result}");
    assert_eq!(result["truncated"], true, "{result}");
    let ns: Vec<i64> = s.rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(ns, (1..=10).collect::<Vec<_>>());

    // Asking for more than the worker's cap gets the worker's cap.
    let exec = c
        .execute(
            "SELECT g AS n FROM generate_series(1, 1000) g",
            Some(json!({"maxRows": 1_000_000})),
            None,
        )
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(s.terminal["payload"]["result"]["rowCount"], 25);
    assert_eq!(s.terminal["payload"]["result"]["truncated"], true);

    // Exactly at the cap is not truncated.
    let exec = c
        .execute("SELECT g AS n FROM generate_series(1, 25) g", None, None)
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    assert_eq!(s.terminal["payload"]["result"]["rowCount"], 25);
    assert_eq!(s.terminal["payload"]["result"]["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_the_idle_timeout() {
    let cluster = Cluster::builder("limits_idle")
        .in_process()
        .gateways(1)
        .workers(0)
        .database(false)
        .gateway_args([
            "--heartbeat-interval-ms",
            "100",
            "--client-timeout-ms",
            "600",
        ])
        .start()
        .await;
    // A client that keeps talking stays open past the timeout, while the silent one is closed.
    let mut talker = cluster.query_client(0).await;
    let talking = tokio::spawn(async move {
        for i in 0..25 {
            talker.ping(i).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        talker
    });
    // A client that neither reads nor writes (so never answers the server's pings) is closed with 1001.
    // It is a raw socket: a WebSocket library would answer the pings by itself.
    let code = silent_client_close_code(cluster.gateway(0).addr()).await;
    assert_eq!(code, Some(1001));
    let mut talker = talking.await.expect("the talking client stayed open");
    talker.ping(99).await;
}

/// Upgrades a raw TCP socket to a WebSocket on /ws/query, then stays silent and returns the code of the
/// server's close frame (None if the server never sent one).
async fn silent_client_close_code(addr: std::net::SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws/query HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the server did not close the silent connection within 10 s");
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("upgrade response")
        + 4;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&bytes[..head_end])
    );
    // Server frames are unmasked; pings here are short (no extended length).
    let mut frames = &bytes[head_end..];
    while frames.len() >= 2 {
        let opcode = frames[0] & 0x0f;
        let len = (frames[1] & 0x7f) as usize;
        assert!(len < 126, "unexpectedly long control frame");
        let payload = &frames[2..2 + len];
        if opcode == 0x8 {
            return (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[2 + len..];
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_queries_per_user_are_capped_across_nodes() {
    // Processes: the slot is released when the worker acks the job, just after the terminal event, and a
    // client of an in-process gateway can ask again inside that gap.
    let cluster = Cluster::builder("limits_per_user")
        .gateways(2)
        .workers(1)
        .gateway_args(["--max-queries-per-user", "2"])
        .worker_args(["--concurrency", "4"])
        .start()
        .await;
    let url = |node: usize, user: &str| {
        format!("{}?user={user}", cluster.gateway(node).ws_url("/ws/query"))
    };
    let mut a = Client::connect(&url(0, "alice"), Some(cluster.schema())).await;
    let mut b = Client::connect(&url(1, "alice"), Some(cluster.schema())).await;
    let slow = "SELECT pg_sleep(1.5) IS NULL AS slept";
    let first = a.execute(slow, None, None).await;
    let second = b.execute(slow, None, None).await;
    // The third, on either node, is over alice's cap.
    a.send_json(execute_query_frame("SELECT 1", None, Some("third")))
        .await;
    let refused = a
        .recv_until("the refusal", |f| ty(f) == "error")
        .await
        .pop()
        .expect("frame");
    assert_eq!(refused["payload"]["code"], "rate_limited", "{refused}");
    assert_eq!(refused["payload"]["ref"], "third");
    // Someone else is not affected.
    let mut carol = Client::connect(&url(1, "carol"), Some(cluster.schema())).await;
    let other = carol.execute("SELECT 1 AS one", None, None).await;
    carol.collect_execution(&other).await;
    // Once alice's queries end, she may run again.
    a.collect_execution(&first).await;
    b.collect_execution(&second).await;
    let again = a.execute("SELECT 2 AS two", None, Some("fourth")).await;
    let frames = a.collect_execution(&again).await;
    assert_eq!(
        check_full_stream(&again, &frames).terminal_type(),
        "query_completed"
    );
}

/// `C2S_MAX_RESULT_BYTES` caps the rows' JSON actually sent: the row that would cross it is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_cap_truncates_at_the_cap_never_past_it() {
    let cluster = Cluster::builder("limits_byte_cap")
        .in_process()
        .gateways(1)
        .workers(1)
        .worker_args(["--max-result-bytes", "20000"])
        .start()
        .await;
    let mut c = cluster.query_client(0).await;
    let exec = c
        .execute(
            "SELECT g AS n, md5(g::text) AS h FROM generate_series(1, 10000) g",
            Some(json!({"chunkSize": 100, "rowFormat": "arrays"})),
            None,
        )
        .await;
    let frames = c.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &frames);
    let result = &s.terminal["payload"]["result"];
    assert_eq!(result["truncated"], true, "{result}");
    let rows = result["rowCount"].as_u64().unwrap();
    assert_eq!(rows as usize, s.rows.len());
    assert!(rows < 10_000, "{rows}");
    // Bytes of the rows' JSON as sent: each row plus its separating comma.
    let sent: usize = s.rows.iter().map(|r| r.to_string().len() + 1).sum();
    let widest = s
        .rows
        .iter()
        .map(|r| r.to_string().len() + 1)
        .max()
        .unwrap();
    assert!(
        sent <= 20_000 && sent + widest > 20_000,
        "{sent} bytes of rows sent for a cap of 20000 (rows up to {widest} bytes): at the cap, never past it"
    );
}
