//! Opening many client sockets: past one loopback address's ephemeral ports by binding each socket to
//! one of several source addresses (127.0.0.1 .. 127.0.0.N).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use tokio::net::{TcpSocket, TcpStream};

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The socket address of a `ws://<ip>:<port>[/path]` URL.
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{url}: expected ws://<ip>:<port>"))
}

/// The source address of client `i` when spreading over `count` loopback addresses.
pub fn source_address(i: usize, count: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % count.max(1) as usize) as u8)
}

/// A WebSocket to `url` (at `target`) from `source`.
pub async fn connect_from(url: &str, target: SocketAddr, source: Ipv4Addr) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(target).await?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}
