//! A message as the hub fans it out: decoded once, encoded at most once per transport.
//!
//! Every subscriber's queue holds an `Arc<Delivery>`; the first writer of each transport that
//! needs the encoding produces it and every other writer reuses the same `Bytes`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_core::{
    Message,
    protocol::{self, Opcode},
    sse,
};

pub struct Delivery {
    pub msg: Arc<Message>,
    /// The complete WebSocket frame (header + JSON text).
    ws: OnceLock<Bytes>,
    /// The SSE `event:` + `data:` lines; the `id:` line is per connection.
    sse: OnceLock<Bytes>,
}

impl Delivery {
    pub fn new(msg: Arc<Message>) -> Arc<Self> {
        Arc::new(Self {
            msg,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    /// What the message counts for against a connection's byte bound.
    pub fn cost(&self) -> usize {
        self.msg.stored_len()
    }

    pub fn ws_frame(&self) -> &Bytes {
        self.ws
            .get_or_init(|| protocol::frame(Opcode::Text, &protocol::message_frame(&self.msg)))
    }

    pub fn sse_body(&self) -> &Bytes {
        self.sse.get_or_init(|| sse::message_body(&self.msg))
    }
}
