//! `/ws/monitoring`: pong with the echoed timestamp, periodic node_status, and operator notices sent
//! through the admin API reaching clients on every node.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POST a JSON body; returns the status code.
async fn http_post(addr: SocketAddr, path: &str, token: Option<&str>, body: &Value) -> u16 {
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("POST timed out")
        .expect("POST failed");
    String::from_utf8_lossy(&reply)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_status_pong_and_notices_on_every_node() {
    let cluster = Cluster::builder("monitoring")
        .gateways(2)
        .workers(0)
        .database(false)
        .gateway_args(["--admin-token", "t0ken", "--node-status-interval-ms", "300"])
        .start()
        .await;
    let mut monitor = cluster.client(0, "/ws/monitoring").await;
    // node_status comes at once, then every interval.
    let first = monitor
        .recv_until("node_status", |f| ty(f) == "node_status")
        .await
        .pop()
        .expect("the matching frame");
    assert_eq!(first["payload"]["draining"], false, "{first}");
    assert!(
        first["payload"]["connections"].as_u64().unwrap() >= 1,
        "{first}"
    );
    let second = monitor
        .recv_until("node_status", |f| ty(f) == "node_status")
        .await
        .pop()
        .expect("the matching frame");
    assert_eq!(second["payload"]["nodeId"], first["payload"]["nodeId"]);
    // The guide's latency probe: the timestamp comes back.
    let pong = monitor.ping(123_456).await;
    assert_eq!(pong["payload"]["timestamp"], 123_456, "{pong}");

    // A query client on the other node.
    let mut other = cluster.client(1, "/ws/query").await;
    let notice = json!({"level": "warning", "message": "maintenance at 18:00"});
    let addr = cluster.gateway(0).addr();
    assert_eq!(http_post(addr, "/admin/notices", None, &notice).await, 401);
    assert_eq!(
        http_post(addr, "/admin/notices", Some("wrong"), &notice).await,
        401
    );
    assert_eq!(
        http_post(
            addr,
            "/admin/notices",
            Some("t0ken"),
            &json!({"level": "loud", "message": "x"})
        )
        .await,
        400
    );
    assert_eq!(
        http_post(addr, "/admin/notices", Some("t0ken"), &notice).await,
        202
    );
    for client in [&mut monitor, &mut other] {
        let got = client
            .recv_until("system_notice", |f| ty(f) == "system_notice")
            .await
            .pop()
            .expect("the matching frame");
        assert_eq!(got["payload"]["level"], "warning", "{got}");
        assert_eq!(got["payload"]["message"], "maintenance at 18:00", "{got}");
    }
    // Monitoring takes ping only.
    monitor
        .send_json(json!({"type": "execute_query", "payload": {"query": "select 1"}}))
        .await;
    let refused = monitor
        .recv_until("error", |f| ty(f) == "error")
        .await
        .pop()
        .expect("the matching frame");
    assert_eq!(refused["payload"]["code"], "unknown_type", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_a_token() {
    let cluster = Cluster::builder("monitoring_no_admin")
        .gateways(1)
        .workers(0)
        .database(false)
        .start()
        .await;
    let notice = json!({"level": "info", "message": "hello"});
    assert_eq!(
        http_post(
            cluster.gateway(0).addr(),
            "/admin/notices",
            Some("anything"),
            &notice
        )
        .await,
        404
    );
}
