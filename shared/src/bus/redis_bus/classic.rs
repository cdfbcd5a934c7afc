//! Classic pub/sub (`SUBSCRIBE`) for the node-wide channels (cancel requests, operator notices): one
//! connection per process, to any node (a cluster forwards every `PUBLISH` to all its nodes).
//!
//! Invariant: while the connection is down the sink is None (readiness reports it); it is re-established
//! with backoff, trying the nodes in turn (the seeds, then every node of the last slot map), and every
//! classic channel the hub still has subscribers for is subscribed again before the sink is put back.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Client, ConnectionInfo};
use tokio::sync::Mutex as AsyncMutex;

use super::conn::{RECONNECT_MAX, RECONNECT_MIN};
use super::sharded::Sharded;
use crate::bus::hub::{ChannelKind, Hub, Upstream};
use crate::bus::BusError;

/// The sink half of the current classic pub/sub connection (None while reconnecting).
pub(super) type SharedSink = Arc<AsyncMutex<Option<PubSubSink>>>;

/// Opens the classic pub/sub connection on the first of `nodes` that accepts it.
pub(super) async fn connect(
    nodes: &[ConnectionInfo],
) -> Result<(PubSubSink, PubSubStream), BusError> {
    let mut last = BusError::Unavailable("no Redis node to subscribe on".into());
    for info in nodes {
        match Client::open(info.clone()) {
            Ok(client) => match client.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub.split()),
                Err(e) => last = e.into(),
            },
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Reads the pub/sub stream into the hub; when the connection drops, reconnects with backoff and
/// re-subscribes every classic channel the hub still has subscribers for.
pub(super) async fn reader(
    nodes: Vec<ConnectionInfo>,
    hub: Hub,
    sink: SharedSink,
    mut stream: PubSubStream,
) {
    loop {
        while let Some(msg) = stream.next().await {
            hub.deliver(
                msg.get_channel_name(),
                Bytes::copy_from_slice(msg.get_payload_bytes()),
            );
        }
        *sink.lock().await = None;
        tracing::warn!("redis pub/sub connection lost; reconnecting");
        let mut delay = RECONNECT_MIN;
        stream = loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RECONNECT_MAX);
            let Ok((mut new_sink, new_stream)) = connect(&nodes).await else {
                continue;
            };
            let channels = hub.channels(ChannelKind::Classic);
            if !channels.is_empty() && new_sink.subscribe(&channels).await.is_err() {
                continue;
            }
            *sink.lock().await = Some(new_sink);
            tracing::info!(channels = channels.len(), "redis pub/sub reconnected");
            break new_stream;
        };
    }
}

/// The hub's upstream: classic channels on the pub/sub connection, sharded ones on [`Sharded`].
pub(super) struct RedisUpstream {
    pub sink: SharedSink,
    pub sharded: Sharded,
}

#[async_trait]
impl Upstream for RedisUpstream {
    async fn subscribe(&mut self, channel: &str, kind: ChannelKind) -> Result<(), BusError> {
        if kind == ChannelKind::Sharded {
            return self.sharded.subscribe(channel).await;
        }
        match self.sink.lock().await.as_mut() {
            Some(sink) => Ok(sink.subscribe(channel).await?),
            None => Err(BusError::Unavailable(
                "redis pub/sub connection is down (reconnecting)".into(),
            )),
        }
    }

    async fn unsubscribe(&mut self, channel: &str, kind: ChannelKind) -> Result<(), BusError> {
        if kind == ChannelKind::Sharded {
            self.sharded.unsubscribe(channel).await;
            return Ok(());
        }
        if let Some(sink) = self.sink.lock().await.as_mut() {
            sink.unsubscribe(channel).await?;
        }
        Ok(())
    }
}
