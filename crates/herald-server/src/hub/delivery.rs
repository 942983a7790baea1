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
    /// The same for SSE streams that asked for envelopes (`data:` is the WebSocket JSON).
    envelope: OnceLock<Bytes>,
}

impl Delivery {
    pub fn new(msg: Arc<Message>) -> Arc<Self> {
        Arc::new(Self {
            msg,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
            envelope: OnceLock::new(),
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

    /// The SSE event for streams with envelopes: built from the WebSocket frame's JSON, so the
    /// message is serialized once whichever of the two asks first.
    pub fn sse_envelope(&self) -> &Bytes {
        self.envelope.get_or_init(|| {
            let json = protocol::frame_payload(self.ws_frame());
            sse::envelope_body(&self.msg, &json)
        })
    }
}
