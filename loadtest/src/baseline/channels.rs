//! Channels and their subscriber sockets: the whole "broker" of the baseline.
//!
//! A channel is an offset counter and two lists of subscriber sockets (WebSocket and SSE).
//! Publishing takes the channel's lock, assigns the next offset, encodes the message once per
//! transport and writes the same bytes to every socket with a non-blocking `try_write`, right
//! there in the publishing task: no queue, no task wake-up, no hand-off to another thread in
//! the common case. Only when a socket's kernel buffer is full is the rest kept in that
//! socket's backlog, and its own connection task is woken to finish the write when the socket
//! drains. The channel lock orders offset assignment and writes, so every subscriber receives a
//! channel's messages in offset order even when two connections publish to it at once.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::{net::TcpStream, sync::Notify};

/// A subscriber whose backlog grows past this is closed (a slow consumer): one client that
/// stops reading must not grow the server's memory.
pub const MAX_BACKLOG: usize = 1 << 20;

/// Counters, for `GET /stats` and the log line at exit.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub subscribers: AtomicU64,
    pub publishes: AtomicU64,
    /// Frames handed to subscriber sockets (one per subscriber per publish).
    pub deliveries: AtomicU64,
    /// Deliveries the kernel did not take at once: queued in the socket's backlog.
    pub queued: AtomicU64,
    /// Subscribers closed because their backlog overflowed.
    pub slow_closed: AtomicU64,
}

impl Stats {
    pub fn to_json(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            r#"{{"connections":{},"subscribers":{},"publishes":{},"deliveries":{},"queued":{},"slow_closed":{}}}"#,
            g(&self.connections),
            g(&self.subscribers),
            g(&self.publishes),
            g(&self.deliveries),
            g(&self.queued),
            g(&self.slow_closed)
        )
    }
}

/// One subscriber's socket, shared by its connection task (which reads it and finishes
/// backlogged writes) and every publisher (which writes to it directly).
#[derive(Debug)]
pub struct Sub {
    pub stream: TcpStream,
    backlog: Mutex<Backlog>,
    /// Wakes the connection task when a backlog appears or the subscriber is closed.
    pub wake: Notify,
}

#[derive(Debug, Default)]
struct Backlog {
    /// Bytes not written yet, in order; empty in the common case (no allocation).
    bytes: BytesMut,
    /// A write failed or the backlog overflowed: write nothing more.
    closed: bool,
}

impl Sub {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
        }
    }

    /// Writes `frame` now if nothing is backlogged, keeping what the kernel did not take;
    /// appends it to the backlog otherwise, so frames never interleave or reorder.
    pub fn send(&self, frame: &[u8], stats: &Stats) {
        let mut b = self.backlog.lock();
        if b.closed {
            return;
        }
        let written = if b.bytes.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    // The connection task sees the same error on its next read and cleans up.
                    b.closed = true;
                    self.wake.notify_one();
                    return;
                }
            }
        } else {
            0
        };
        stats.queued.fetch_add(1, Ordering::Relaxed);
        let rest = &frame[written..];
        if b.bytes.len() + rest.len() > MAX_BACKLOG {
            b.closed = true;
            b.bytes = BytesMut::new();
            stats.slow_closed.fetch_add(1, Ordering::Relaxed);
        } else {
            b.bytes.extend_from_slice(rest);
        }
        self.wake.notify_one();
    }

    /// True when the connection task has bytes to finish writing.
    pub fn backlogged(&self) -> bool {
        !self.backlog.lock().bytes.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.backlog.lock().closed
    }

    /// Writes as much of the backlog as the socket takes. `Err` when the socket failed or the
    /// subscriber was closed.
    pub fn flush(&self) -> io::Result<()> {
        let mut b = self.backlog.lock();
        while !b.bytes.is_empty() {
            match self.stream.try_write(&b.bytes) {
                Ok(n) => b.bytes.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    b.closed = true;
                    return Err(e);
                }
            }
        }
        // Give the memory back: a backlog is the exception.
        b.bytes = BytesMut::new();
        if b.closed {
            return Err(io::Error::other("closed"));
        }
        Ok(())
    }
}

/// Which frame a subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ws,
    Sse,
}

#[derive(Debug, Default)]
pub struct ChannelState {
    /// The last offset assigned (0: nothing published yet).
    pub offset: u64,
    pub ws: Vec<Arc<Sub>>,
    pub sse: Vec<Arc<Sub>>,
}

#[derive(Debug, Default)]
pub struct Channel {
    pub state: Mutex<ChannelState>,
}

/// Every channel by name. A channel is created by its first subscriber or publish and kept
/// for the life of the process (its counter is its whole history).
#[derive(Debug, Default)]
pub struct Registry {
    channels: Mutex<HashMap<Box<str>, Arc<Channel>>>,
}

impl Registry {
    pub fn channel(&self, name: &str) -> Arc<Channel> {
        let mut map = self.channels.lock();
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        let c = Arc::new(Channel::default());
        map.insert(name.into(), c.clone());
        c
    }
}

impl Channel {
    /// Adds `sub` and writes `confirm(offset)` to it under the channel lock, so the
    /// confirmation reaches the socket before any message published after it.
    pub fn subscribe(
        &self,
        sub: &Arc<Sub>,
        kind: Kind,
        stats: &Stats,
        confirm: impl FnOnce(u64) -> Vec<u8>,
    ) {
        let mut st = self.state.lock();
        sub.send(&confirm(st.offset), stats);
        match kind {
            Kind::Ws => st.ws.push(sub.clone()),
            Kind::Sse => st.sse.push(sub.clone()),
        }
        stats.subscribers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unsubscribe(&self, sub: &Arc<Sub>, kind: Kind, stats: &Stats) {
        let mut st = self.state.lock();
        let list = match kind {
            Kind::Ws => &mut st.ws,
            Kind::Sse => &mut st.sse,
        };
        if let Some(i) = list.iter().position(|s| Arc::ptr_eq(s, sub)) {
            list.swap_remove(i);
            stats.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
