//! Client transports: Server-Sent Events and WebSocket. Both sit on a connection [`Outbox`] fed
//! by the hub, and both unsubscribe everything when the connection ends, however it ends.

pub mod sse;
pub mod ws;

use std::sync::Arc;

use herald_core::ChannelName;
use parking_lot::Mutex;

use crate::{
    app::App,
    hub::{Bounds, Hub, Outbox},
};

/// One client connection's identity, queue and subscriptions. Dropping it unsubscribes
/// everything, so a connection that vanishes mid-write leaves nothing behind in the hub.
pub struct Connection {
    pub id: u64,
    pub outbox: Arc<Outbox>,
    hub: Arc<Hub>,
    channels: Mutex<Vec<ChannelName>>,
    transport: &'static str,
    app: Arc<App>,
}

impl Connection {
    pub fn new(app: &Arc<App>, transport: &'static str) -> Self {
        app.metrics
            .connections
            .with_label_values(&[transport])
            .inc();
        Self {
            id: app.hub.connection_id(),
            outbox: Outbox::new(Bounds {
                max_items: app.config.queue_max_messages,
                max_bytes: app.config.queue_max_bytes,
            }),
            hub: app.hub.clone(),
            channels: Mutex::new(Vec::new()),
            transport,
            app: app.clone(),
        }
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }

    /// Records a subscription the hub accepted.
    pub fn add(&self, channel: ChannelName) {
        self.channels.lock().push(channel);
    }

    /// Unsubscribes one channel; false if it was not subscribed.
    pub fn remove(&self, channel: &ChannelName) -> bool {
        let mut channels = self.channels.lock();
        let before = channels.len();
        channels.retain(|c| c != channel);
        let removed = channels.len() != before;
        drop(channels);
        if removed {
            self.hub.unsubscribe(self.id, channel);
        }
        removed
    }

    /// Counts why the connection ended.
    pub fn closed(&self, reason: &'static str) {
        self.app
            .metrics
            .disconnects
            .with_label_values(&[self.transport, reason])
            .inc();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for channel in self.channels.get_mut().drain(..) {
            self.hub.unsubscribe(self.id, &channel);
        }
        self.app
            .metrics
            .connections
            .with_label_values(&[self.transport])
            .dec();
    }
}
