//! One subscription per channel per node, fanned out to every local subscriber.
//!
//! Subscribers get a [`Subscription`] (a broadcast receiver); the first subscriber of a channel makes the
//! node subscribe upstream (Redis `SUBSCRIBE` or, for a [`ChannelKind::Sharded`] channel, `SSUBSCRIBE`),
//! the last one to drop makes it unsubscribe. Upstream
//! (un)subscriptions are done one at a time by a control task, so a drop and a re-subscribe of the same
//! channel can never cross. A subscriber that falls more than `capacity` messages behind sees
//! `RecvError::Lagged` and is expected to re-read the durable stream (no unbounded buffering here). After
//! an upstream subscription was re-established, its subscribers receive [`RESYNC`] (an empty payload,
//! never a real message): they may have missed messages and re-read the stream too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::BusError;

/// The payload a subscriber receives when its channel's upstream subscription was re-established and
/// messages may have been missed meanwhile (real messages are never empty).
pub const RESYNC: &[u8] = b"";

/// Classic pub/sub (delivered cluster-wide: node-wide channels such as cancel and notices) or sharded
/// pub/sub (served by the channel's slot: the live feed of an execution or a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Classic,
    Sharded,
}

/// The upstream side of the hub: Redis pub/sub, or nothing for the in-process bus.
#[async_trait::async_trait]
pub trait Upstream: Send + 'static {
    async fn subscribe(&mut self, channel: &str, kind: ChannelKind) -> Result<(), BusError>;
    async fn unsubscribe(&mut self, channel: &str, kind: ChannelKind) -> Result<(), BusError>;
}

/// No upstream: publishers call [`Hub::deliver`] directly.
pub struct Local;

#[async_trait::async_trait]
impl Upstream for Local {
    async fn subscribe(&mut self, _channel: &str, _kind: ChannelKind) -> Result<(), BusError> {
        Ok(())
    }
    async fn unsubscribe(&mut self, _channel: &str, _kind: ChannelKind) -> Result<(), BusError> {
        Ok(())
    }
}

struct Entry {
    sender: broadcast::Sender<Bytes>,
    subscribers: usize,
    kind: ChannelKind,
}

enum Control {
    Subscribe(
        String,
        ChannelKind,
        /// A smaller local buffer than the hub's default, for this channel.
        Option<usize>,
        oneshot::Sender<Result<broadcast::Receiver<Bytes>, BusError>>,
    ),
    Release(String),
}

#[derive(Clone)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<String, Entry>>>,
    control: mpsc::UnboundedSender<Control>,
}

/// A live feed of one channel. Dropping it releases the node's upstream subscription when it was the last.
pub struct Subscription {
    channel: String,
    pub receiver: broadcast::Receiver<Bytes>,
    control: mpsc::UnboundedSender<Control>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self
            .control
            .send(Control::Release(std::mem::take(&mut self.channel)));
    }
}

impl Hub {
    pub fn new(upstream: impl Upstream, capacity: usize) -> Hub {
        let channels: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
        let (control, rx) = mpsc::unbounded_channel();
        tokio::spawn(control_loop(
            upstream,
            rx,
            channels.clone(),
            capacity.max(16),
        ));
        Hub { channels, control }
    }

    pub async fn subscribe(
        &self,
        channel: &str,
        kind: ChannelKind,
    ) -> Result<Subscription, BusError> {
        self.subscribe_bounded(channel, kind, None).await
    }

    /// Like [`Hub::subscribe`], with a smaller local buffer for this channel when it is created (an
    /// execution's chunks are large: the buffer holds up to that many of them).
    pub async fn subscribe_bounded(
        &self,
        channel: &str,
        kind: ChannelKind,
        capacity: Option<usize>,
    ) -> Result<Subscription, BusError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Subscribe(channel.to_owned(), kind, capacity, tx))
            .map_err(|_| BusError::Closed)?;
        let receiver = rx.await.map_err(|_| BusError::Closed)??;
        Ok(Subscription {
            channel: channel.to_owned(),
            receiver,
            control: self.control.clone(),
        })
    }

    /// Hands a message that arrived on `channel` to its local subscribers (none: dropped).
    pub fn deliver(&self, channel: &str, payload: Bytes) {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = channels.get(channel) {
            let _ = entry.sender.send(payload);
        }
    }

    /// Tells the local subscribers of `channel` that they may have missed messages ([`RESYNC`]).
    pub fn resync(&self, channel: &str) {
        self.deliver(channel, Bytes::from_static(RESYNC));
    }

    /// Channels of `kind` this node is subscribed to (to re-subscribe after an upstream reconnect).
    pub fn channels(&self, kind: ChannelKind) -> Vec<String> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(c, _)| c.clone())
            .collect()
    }
}

async fn control_loop(
    mut upstream: impl Upstream,
    mut rx: mpsc::UnboundedReceiver<Control>,
    channels: Arc<Mutex<HashMap<String, Entry>>>,
    capacity: usize,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Control::Subscribe(channel, kind, bound, reply) => {
                let existing = {
                    let mut map = channels.lock().unwrap_or_else(|p| p.into_inner());
                    map.get_mut(&channel).map(|e| {
                        e.subscribers += 1;
                        e.sender.subscribe()
                    })
                };
                let result = match existing {
                    Some(rx) => Ok(rx),
                    None => match upstream.subscribe(&channel, kind).await {
                        Ok(()) => {
                            let size = bound.map_or(capacity, |b| b.clamp(2, capacity));
                            let (sender, rx) = broadcast::channel(size);
                            let mut map = channels.lock().unwrap_or_else(|p| p.into_inner());
                            map.insert(
                                channel,
                                Entry {
                                    sender,
                                    subscribers: 1,
                                    kind,
                                },
                            );
                            Ok(rx)
                        }
                        Err(e) => Err(e),
                    },
                };
                let _ = reply.send(result);
            }
            Control::Release(channel) => {
                let last = {
                    let mut map = channels.lock().unwrap_or_else(|p| p.into_inner());
                    match map.get_mut(&channel) {
                        Some(e) if e.subscribers > 1 => {
                            e.subscribers -= 1;
                            None
                        }
                        Some(_) => map.remove(&channel).map(|e| e.kind),
                        None => None,
                    }
                };
                if let Some(kind) = last {
                    if let Err(e) = upstream.unsubscribe(&channel, kind).await {
                        tracing::warn!(%channel, error = %e, "unsubscribe failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fans_out_and_releases() {
        let hub = Hub::new(Local, 16);
        let mut a = hub.subscribe("c", ChannelKind::Sharded).await.unwrap();
        let mut b = hub.subscribe("c", ChannelKind::Sharded).await.unwrap();
        hub.deliver("c", Bytes::from_static(b"hi"));
        assert_eq!(a.receiver.recv().await.unwrap(), "hi");
        assert_eq!(b.receiver.recv().await.unwrap(), "hi");
        drop(a);
        drop(b);
        // Releases are processed in order by the control task: a later subscribe still works.
        let mut c = hub.subscribe("c", ChannelKind::Sharded).await.unwrap();
        assert_eq!(hub.channels(ChannelKind::Sharded), vec!["c".to_string()]);
        assert!(hub.channels(ChannelKind::Classic).is_empty());
        hub.deliver("c", Bytes::from_static(b"again"));
        assert_eq!(c.receiver.recv().await.unwrap(), "again");
    }
}
