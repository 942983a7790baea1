//! WebSocket subscriber client.
//!
//! fastwebsockets rather than tokio-tungstenite: it reads frames into one reusable buffer and
//! hands out borrowed payloads (no `String` per message), and it is already the server's
//! WebSocket library, so the workspace builds one implementation. The HTTP upgrade is written
//! by hand on the raw socket (instead of its hyper-based `handshake` feature) so the socket can
//! be bound to a chosen source address and no hyper connection task is spawned per client.

use std::borrow::Cow;

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{End, Event, http};
use crate::net::{Alpn, Dialer, Flavor, Target, encode_query};

/// Largest message we accept; larger means the server or the scenario is misconfigured.
const MAX_MESSAGE: usize = 16 << 20;

/// A server frame, borrowed from the read buffer.
#[derive(Deserialize)]
struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    recovered: Option<bool>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

/// Parses one server text frame and hands the event to `f`.
pub fn dispatch<F: FnMut(Event<'_>)>(payload: &[u8], f: &mut F) -> Result<(), End> {
    let fr: ServerFrame<'_> = serde_json::from_slice(payload)
        .map_err(|e| End::Protocol(format!("bad server frame: {e}")))?;
    match &*fr.ty {
        "message" => {
            let (Some(channel), Some(offset), Some(data)) = (&fr.channel, fr.offset, fr.data)
            else {
                return Err(End::Protocol(
                    "message frame without channel/offset/data".into(),
                ));
            };
            f(Event::Message {
                channel,
                offset,
                epoch: fr.epoch.as_deref().unwrap_or(""),
                data: data.get().as_bytes(),
                sse_id: None,
            });
        }
        "subscribed" => {
            let (Some(channel), Some(offset)) = (&fr.channel, fr.offset) else {
                return Err(End::Protocol(
                    "subscribed frame without channel/offset".into(),
                ));
            };
            f(Event::Subscribed {
                channel,
                offset,
                epoch: fr.epoch.as_deref().unwrap_or(""),
                recovered: fr.recovered.unwrap_or(false),
                sse_id: None,
            });
        }
        "error" => f(Event::Error {
            code: fr.code.as_deref().unwrap_or("unknown"),
        }),
        _ => f(Event::Other),
    }
    Ok(())
}

/// An nchan WebSocket frame is the raw published message: its `seq` is the offset (see
/// [`crate::net::Flavor`]).
pub fn dispatch_nchan<F: FnMut(Event<'_>)>(channel: &str, payload: &[u8], f: &mut F) {
    match crate::payload::parse(payload) {
        Some((seq, _)) => f(Event::Message {
            channel,
            offset: seq,
            epoch: "",
            data: payload,
            sse_id: None,
        }),
        None => f(Event::Unattributed),
    }
}

/// `Sec-WebSocket-Key`: 16 random bytes, base64.
fn ws_key() -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: [u8; 16] = rand::random();
    let mut out = String::with_capacity(24);
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An open `/v1/ws` connection.
pub struct WsConn {
    ws: WebSocket<http::Prefixed>,
    /// Reassembly buffer for fragmented messages (Herald does not fragment, others might).
    frag: Vec<u8>,
    /// nchan target: the channel (frames carry only the raw message).
    nchan: Option<Box<str>>,
    /// nchan confirms nothing beyond the upgrade: report `Subscribed` on the first read.
    announce: bool,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn").finish_non_exhaustive()
    }
}

impl WsConn {
    /// Upgrades and subscribes: with `?channel=` for a fresh subscription (one round trip), or
    /// with a `subscribe` op carrying `since` when resuming.
    pub async fn open(
        dialer: &Dialer,
        target: &Target,
        channel: &str,
        since: Option<(u64, &str)>,
        token: Option<&str>,
    ) -> Result<Self, End> {
        let nchan = target.flavor == Flavor::Nchan;
        let mut stream = dialer
            .connect(target, Alpn::Http1)
            .await
            .map_err(End::connect)?;
        let mut req = format!("GET {}/v1/ws", target.prefix);
        if nchan {
            req = format!("GET {}/sub/", target.prefix);
            encode_query(&mut req, channel);
        } else if since.is_none() {
            req.push_str("?channel=");
            encode_query(&mut req, channel);
        }
        req.push_str(" HTTP/1.1\r\nHost: ");
        req.push_str(&target.host);
        req.push_str("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ");
        req.push_str(&ws_key());
        req.push_str("\r\n");
        if let Some(t) = token {
            req.push_str("Authorization: Bearer ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| End::Io(e.to_string()))?;
        let mut rbuf = BytesMut::with_capacity(512);
        let head = http::read_head(&mut stream, &mut rbuf)
            .await
            .map_err(|e| End::Io(e.to_string()))?;
        if head.status != 101 {
            return Err(End::Status(head.status));
        }
        // The accept hash is not verified: the target is the operator's own Herald, and a
        // wrong upgrade shows up as a protocol error on the first frame anyway.
        let leftover = rbuf.split_off(head.len).freeze();
        let mut ws =
            WebSocket::after_handshake(http::Prefixed::new(leftover, stream), Role::Client);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        ws.set_max_message_size(MAX_MESSAGE);
        if let Some((offset, epoch)) = since.filter(|_| !nchan) {
            let op = serde_json::json!({
                "op": "subscribe",
                "channel": channel,
                "since": {"offset": offset, "epoch": epoch},
                "id": 1,
            })
            .to_string();
            ws.write_frame(Frame::text(Payload::Borrowed(op.as_bytes())))
                .await
                .map_err(|e| End::Io(e.to_string()))?;
        }
        Ok(Self {
            ws,
            frag: Vec::new(),
            nchan: nchan.then(|| channel.into()),
            announce: nchan,
        })
    }

    /// Reads one frame and dispatches it.
    pub async fn next_batch<F: FnMut(Event<'_>)>(&mut self, f: &mut F) -> Result<(), End> {
        if self.announce {
            self.announce = false;
            f(Event::Subscribed {
                channel: self.nchan.as_deref().unwrap_or(""),
                offset: 0,
                epoch: "",
                recovered: false,
                sse_id: None,
            });
            return Ok(());
        }
        let frame = self
            .ws
            .read_frame()
            .await
            .map_err(|e| End::Io(e.to_string()))?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary if frame.fin && self.frag.is_empty() => {
                match &self.nchan {
                    Some(ch) => {
                        dispatch_nchan(ch, &frame.payload, f);
                        Ok(())
                    }
                    None => dispatch(&frame.payload, f),
                }
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if self.frag.len() + frame.payload.len() > MAX_MESSAGE {
                    return Err(End::Protocol("fragmented message too large".into()));
                }
                self.frag.extend_from_slice(&frame.payload);
                if frame.fin {
                    let msg = std::mem::take(&mut self.frag);
                    let r = match &self.nchan {
                        Some(ch) => {
                            dispatch_nchan(ch, &msg, f);
                            Ok(())
                        }
                        None => dispatch(&msg, f),
                    };
                    self.frag = msg;
                    self.frag.clear();
                    r
                } else {
                    Ok(())
                }
            }
            OpCode::Close => {
                let code = match &frame.payload[..] {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                };
                Err(End::Close(code))
            }
            OpCode::Ping | OpCode::Pong => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchan_frames_use_the_payload_seq_as_offset() {
        let mut seen = Vec::new();
        let mut f = |e: Event<'_>| seen.push(format!("{e:?}"));
        dispatch_nchan("ch", br#"{"seq":7,"ts":123,"pad":""}"#, &mut f);
        dispatch_nchan("ch", b"hello", &mut f);
        assert!(
            seen[0].contains("offset: 7") && seen[0].contains("\"ch\""),
            "{}",
            seen[0]
        );
        assert_eq!(seen[1], "Unattributed");
    }

    #[test]
    fn key_is_24_chars_base64() {
        let k = ws_key();
        assert_eq!(k.len(), 24);
        assert!(k.ends_with("=="));
    }

    #[test]
    fn parses_server_frames() {
        let mut seen = Vec::new();
        let mut f = |e: Event<'_>| seen.push(format!("{e:?}"));
        dispatch(
            br#"{"type":"message","channel":"a","offset":4,"epoch":"e","event":"x","data":{"seq":1,"ts":2}}"#,
            &mut f,
        )
        .expect("ok");
        dispatch(
            br#"{"type":"subscribed","channel":"a","offset":3,"epoch":"e","recovered":true,"id":1}"#,
            &mut f,
        )
        .expect("ok");
        dispatch(
            br#"{"type":"error","code":"slow_consumer","message":"q \"full\""}"#,
            &mut f,
        )
        .expect("ok");
        dispatch(br#"{"type":"pong"}"#, &mut f).expect("ok");
        assert!(dispatch(br#"{"type":"message","channel":"a"}"#, &mut f).is_err());
        assert!(dispatch(b"not json", &mut f).is_err());
        assert!(
            seen[0].contains("offset: 4") && seen[0].contains(r#"data: [123"#),
            "{}",
            seen[0]
        );
        assert!(seen[1].contains("recovered: true"));
        assert!(seen[2].contains("slow_consumer"));
        assert_eq!(seen[3], "Other");
    }
}
